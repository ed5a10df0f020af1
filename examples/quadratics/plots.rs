//! The experiment's two figures: the Pareto front across the lambda grid (log-log) and the
//! loss curves at lambda = 1.

use plotters::prelude::*;

use crate::experiment::History;

fn color(i: usize) -> RGBAColor {
    Palette99::pick(i).to_rgba()
}

fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) =
        values.filter(|v| v.is_finite() && *v > 0.0).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    (lo / 1.5)..(hi * 1.5)
}

pub fn pareto(curves: &[(&str, Vec<(f64, f64)>)], title: &str, path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let points = || curves.iter().flat_map(|(_, c)| c.iter().copied());
    let root = SVGBackend::new(path, (800, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Pareto front over lambda in logspace(-3, 3, 10) ({title})"), ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(log_range(points().map(|p| p.0)).log_scale(), log_range(points().map(|p| p.1)).log_scale())
        ?;
    chart.configure_mesh().x_desc("aux loss at the best main loss").y_desc("best main loss").draw()?;
    for (i, (name, curve)) in curves.iter().enumerate() {
        let c = color(i);
        let finite: Vec<(f64, f64)> =
            curve.iter().copied().filter(|(a, m)| a.is_finite() && m.is_finite() && *a > 0.0 && *m > 0.0).collect();
        chart
            .draw_series(PointSeries::of_element(finite.clone(), 4, c.filled(), &|p, s, st| Circle::new(p, s, st)))
            ?;
        chart
            .draw_series(LineSeries::new(finite, c.stroke_width(2)))
            ?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        ?;
    root.present()?;
    Ok(())
}

pub fn curves(runs: &[(&str, &History)], title: &str, path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    for (panel, (label, pick)) in panels.iter().zip([("main loss", 0usize), ("aux loss", 1)]) {
        let series = |h: &History| if pick == 0 { h.main.clone() } else { h.aux.clone() };
        let epochs = runs.iter().map(|(_, h)| h.main.len()).max().unwrap_or(1) as f64;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{label} at lambda = 1 ({title})"), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..epochs, log_range(runs.iter().flat_map(|(_, h)| series(h))).log_scale())
            ?;
        chart.configure_mesh().x_desc("epoch").y_desc(label).draw()?;
        for (i, (name, history)) in runs.iter().enumerate() {
            let c = color(i);
            let line: Vec<(f64, f64)> = series(history)
                .into_iter()
                .enumerate()
                .map(|(e, v)| (e as f64, v))
                .filter(|(_, v)| v.is_finite() && *v > 0.0)
                .collect();
            chart
                .draw_series(LineSeries::new(line, c.stroke_width(2)))
                ?
                .label(*name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            ?;
    }
    root.present()?;
    Ok(())
}
