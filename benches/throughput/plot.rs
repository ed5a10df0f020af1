//! GB/s against size, one line per method (single-leaf workloads through the pool), and the
//! copy kernel's bandwidth as the roofline.

use plotters::prelude::*;

pub struct Point<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub leaves: usize,
    pub elements: u64,
    pub gbps: f64,
    pub copy_gbps: f64,
}

pub fn gbps_by_size(points: &[Point], adapter: &str, path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let singles: Vec<&Point> = points.iter().filter(|p| p.leaves == 1 && p.path == "pool").collect();
    if singles.is_empty() {
        return Ok(());
    }
    let x = |p: &Point| (p.elements as f64).log2();
    let (x0, x1) = singles.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(x(p)), b.max(x(p))));
    let top = singles.iter().map(|p| p.gbps.max(p.copy_gbps)).fold(0.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("bloop step throughput, {adapter}"), ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x0 - 0.2)..(x1 + 0.2), 0.0..top)
        ?;
    chart
        .configure_mesh()
        .x_desc("elements (log2), one leaf, pool")
        .y_desc("GB/s (fewest bytes the method must move)")
        .x_labels((x1 - x0) as usize + 1)
        .x_label_formatter(&|v| if (v - v.round()).abs() < 1e-6 { format!("2^{v:.0}") } else { String::new() })
        .draw()?;
    let mut copy: Vec<(f64, f64)> = singles.iter().map(|p| (x(p), p.copy_gbps)).collect();
    copy.sort_by(|a, b| a.0.total_cmp(&b.0));
    copy.dedup_by(|a, b| a.0 == b.0);
    chart
        .draw_series(LineSeries::new(copy, BLACK.stroke_width(2)))
        ?
        .label("copy kernel (roofline)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    let mut methods: Vec<&str> = singles.iter().map(|p| p.method).collect();
    methods.dedup();
    methods.sort();
    methods.dedup();
    for (i, method) in methods.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = singles.iter().filter(|p| p.method == method).map(|p| (x(p), p.gbps)).collect();
        chart
            .draw_series(PointSeries::of_element(line.clone(), 4, color.filled(), &|c, s, st| Circle::new(c, s, st)))
            ?;
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            ?
            .label(method)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
