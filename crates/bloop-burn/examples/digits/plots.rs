//! Pareto fronts: aux loss against a cross-entropy, one curve per method and seed over the
//! lambda grid.

use plotters::prelude::*;

fn color(i: usize) -> RGBAColor {
    Palette99::pick(i).to_rgba()
}

/// One method's points of one seed. The seeds of a method share its color; the labelled one
/// (its first seed) is drawn bold and named in the legend, the others thin.
pub struct Curve {
    pub color: usize,
    pub label: Option<&'static str>,
    pub points: Vec<(f64, f64)>,
}

pub fn pareto(
    curves: &[Curve],
    caption: &str,
    what: &str,
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let points: Vec<(f64, f64)> = curves
        .iter()
        .flat_map(|c| c.points.iter().copied())
        .filter(|(a, m)| a.is_finite() && m.is_finite() && *m > 0.0)
        .collect();
    let (xlo, xhi) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ylo, yhi) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = (xhi - xlo).max(1e-3) * 0.05;
    let root = SVGBackend::new(path, (800, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((xlo - pad)..(xhi + pad), ((ylo / 1.3)..(yhi * 1.3)).log_scale())?;
    chart.configure_mesh().x_desc("aux loss  log prod ||W_l||_2^2").y_desc(format!("final {what}")).draw()?;
    for curve in curves {
        let c = color(curve.color);
        let mut finite: Vec<(f64, f64)> =
            curve.points.iter().copied().filter(|(a, m)| a.is_finite() && m.is_finite() && *m > 0.0).collect();
        finite.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart.draw_series(PointSeries::of_element(finite.clone(), 4, c.filled(), &|p, s, st| Circle::new(p, s, st)))?;
        let width = if curve.label.is_some() { 2 } else { 1 };
        let line = chart.draw_series(LineSeries::new(finite, c.stroke_width(width)))?;
        if let Some(label) = curve.label {
            line.label(label).legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
