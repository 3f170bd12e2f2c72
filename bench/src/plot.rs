//! The picture: for each protocol, latency percentiles per setup at each fixed rate (log scale,
//! one line per setup) and saturation throughput per setup (bars). SVG, drawn with plotters'
//! SVG backend alone (no font libraries: the viewer renders the text).

use std::path::Path;

use anyhow::Context as _;
use plotters::{coord::ranged1d::SegmentValue, prelude::*};

use crate::{load::Shape, report::Report, setups::Setup};

const PERCENTILES: [&str; 4] = ["p50", "p90", "p99", "p99.9"];

fn color(setup: Setup) -> RGBColor {
    match setup {
        Setup::Direct => RGBColor(110, 110, 110),
        Setup::Haproxy => RGBColor(230, 120, 20),
        Setup::Bw1Hop => RGBColor(30, 100, 200),
        Setup::Bw1HopPolicy => RGBColor(40, 160, 80),
        Setup::Bw2Hop => RGBColor(150, 60, 170),
        Setup::Bw1HopTrace100 => RGBColor(200, 40, 60),
        Setup::Bw1HopTrace1 => RGBColor(230, 150, 160),
        Setup::Bw1HopRoute1 => RGBColor(20, 170, 190),
        Setup::Bw1HopRoutes50 => RGBColor(120, 200, 220),
    }
}

/// Draws `report` into `path` (SVG).
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    draw_inner(report, path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot draw {}", path.display()))
}

fn draw_inner(report: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let plan = &report.plan;
    let rates: Vec<Shape> =
        plan.shapes.iter().map(|(s, _)| *s).filter(|s| matches!(s, Shape::Fixed(_))).collect();
    let saturation = plan.shapes.iter().any(|(s, _)| *s == Shape::Saturation);
    let cols = rates.len() + usize::from(saturation);
    let rows = plan.protocols.len();
    if cols == 0 || rows == 0 {
        return Err("nothing to draw".into());
    }
    let width = u32::try_from(430 * cols)?;
    let height = u32::try_from(380 * rows + 50)?;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "Breakwater vs direct vs HAProxy — median of {} rounds, {} connections ({})",
        plan.rounds, plan.connections, report.machine.date
    );
    let root = root.titled(&title, ("sans-serif", 20))?;
    let panels = root.split_evenly((rows, cols));
    let setups: Vec<Setup> = plan.setups.clone();
    for (i, &protocol) in plan.protocols.iter().enumerate() {
        for (j, &shape) in rates.iter().enumerate() {
            let panel = &panels[i * cols + j];
            let series: Vec<(Setup, [f64; 4])> = setups
                .iter()
                .filter_map(|&s| {
                    report.row(protocol, s, shape).map(|r| (s, [r.p50_us, r.p90_us, r.p99_us, r.p999_us]))
                })
                .collect();
            let values = series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| *v > 0.0);
            let lo = values.clone().fold(f64::INFINITY, f64::min);
            let hi = values.fold(0.0, f64::max);
            if !lo.is_finite() || hi <= 0.0 {
                continue;
            }
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!("{} at {}: latency (µs, log)", protocol.label(), shape.label()),
                    ("sans-serif", 16),
                )
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(60)
                // Integer ranges are inclusive in plotters: 0..3 is four segments.
                .build_cartesian_2d((0u32..3u32).into_segmented(), (lo * 0.7..hi * 1.6).log_scale())?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                        PERCENTILES.get(*i as usize).map_or(String::new(), |s| (*s).to_owned())
                    }
                    SegmentValue::Last => String::new(),
                })
                .y_desc("µs")
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()?;
            for (setup, v) in &series {
                let c = color(*setup);
                let points: Vec<(SegmentValue<u32>, f64)> =
                    v.iter().enumerate().map(|(k, y)| (SegmentValue::CenterOf(k as u32), *y)).collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
                    .label(setup.name())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
                chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
            }
            chart
                .configure_series_labels()
                // The lines rise to the right: the lower right corner is free.
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .label_font(("sans-serif", 12))
                .draw()?;
        }
        if saturation {
            let panel = &panels[i * cols + rates.len()];
            let bars: Vec<(Setup, f64)> = setups
                .iter()
                .filter_map(|&s| report.row(protocol, s, Shape::Saturation).map(|r| (s, r.rps)))
                .collect();
            let hi = bars.iter().map(|(_, v)| *v).fold(0.0, f64::max);
            if hi <= 0.0 {
                continue;
            }
            let last = u32::try_from(bars.len().saturating_sub(1))?;
            let names: Vec<&'static str> = bars.iter().map(|(s, _)| s.name()).collect();
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{} saturation: requests/s", protocol.label()), ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d((0u32..last).into_segmented(), 0.0..hi * 1.15)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                        names.get(*i as usize).map_or(String::new(), |s| (*s).to_owned())
                    }
                    SegmentValue::Last => String::new(),
                })
                .x_label_style(("sans-serif", 10))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()?;
            chart.draw_series(bars.iter().enumerate().map(|(k, (s, v))| {
                let k = k as u32;
                let mut bar = Rectangle::new(
                    [(SegmentValue::Exact(k), 0.0), (SegmentValue::Exact(k + 1), *v)],
                    color(*s).filled(),
                );
                bar.set_margin(0, 0, 8, 8);
                bar
            }))?;
            chart.draw_series(bars.iter().enumerate().map(|(k, (_, v))| {
                // Centred above the bar: about 6 px per digit at this size.
                let text = format!("{v:.0}");
                let dx = -i32::try_from(text.len() * 3).unwrap_or(0);
                EmptyElement::at((SegmentValue::CenterOf(k as u32), *v))
                    + Text::new(text, (dx, -14), ("sans-serif", 11).into_font())
            }))?;
        }
    }
    root.present()?;
    Ok(())
}
