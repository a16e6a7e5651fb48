//! `--svg PATH`: the sweep as a log-log chart, throughput and round trip
//! against the message size, one line per transport, drawn with plotters
//! (its SVG backend only: no bitmap, font or image crates).

use std::path::Path;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::results::{Group, Series, size_label};

/// One colour per transport, in the order of `bench::SWEEP`.
const COLOURS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
];

/// Write the chart: a title with the machine's description, throughput on
/// the left, the median round trip on the right.
pub fn write(path: &Path, sweep: &[(usize, Group)], machine: &str) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 560)).into_drawing_area();
        draw(&root, sweep, machine)?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    // A <title> names the picture for screen readers and browsers' tabs
    // (plotters writes none): right after the <svg ...> start tag.
    let title = format!(
        "<title>lesson-8 --sweep: throughput and round trip by message size, measured on {}</title>",
        xml_escape(machine)
    );
    if let Some(end) = svg.find('>') {
        svg.insert_str(end + 1, &format!("\n{title}"));
    }
    std::fs::write(path, svg).with_context(|| format!("writing the chart to {}", path.display()))
}

/// Text as XML character data.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn draw(
    root: &DrawingArea<SVGBackend, Shift>,
    sweep: &[(usize, Group)],
    machine: &str,
) -> anyhow::Result<()> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e}");
    root.fill(&WHITE).map_err(err)?;
    let placement = sweep.first().map_or("?", |(_, g)| g.placement);
    let title = format!(
        "lesson-8 --sweep ({placement}): pipe, Unix socket and a shared-memory ring, by message size"
    );
    root.draw(&Text::new(title, (20, 12), ("sans-serif", 22)))
        .map_err(err)?;
    root.draw(&Text::new(
        format!("measured on: {machine}"),
        (20, 40),
        ("sans-serif", 16),
    ))
    .map_err(err)?;
    let body = root.margin(60, 0, 0, 0);
    let (left, right) = body.split_horizontally(600);
    panel(
        &left,
        sweep,
        "one-way throughput (median of runs)",
        "throughput (GB/s, higher is better)",
        |t, _| t.median(),
    )?;
    panel(
        &right,
        sweep,
        "round trip carrying the whole message (p50)",
        "round trip (µs, lower is better)",
        |_, l| l.spread().map(|s| s.p50),
    )
}

/// One log-log panel: `value(throughput, latency)` of each transport at
/// each size.
fn panel(
    area: &DrawingArea<SVGBackend, Shift>,
    sweep: &[(usize, Group)],
    caption: &str,
    y_label: &str,
    value: impl Fn(&Series, &Series) -> Option<f64>,
) -> anyhow::Result<()> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e}");
    let Some((_, first)) = sweep.first() else {
        return Ok(());
    };
    let points = |i: usize| -> Vec<(f64, f64)> {
        sweep
            .iter()
            .filter_map(|(size, g)| {
                let v = value(&g.throughput[i], &g.latency[i])?;
                (v > 0.0).then_some((*size as f64, v))
            })
            .collect()
    };
    let all: Vec<f64> = (0..first.throughput.len())
        .flat_map(|i| points(i).into_iter().map(|p| p.1))
        .collect();
    let lo = all.iter().copied().fold(f64::MAX, f64::min).min(1.0);
    let hi = all.iter().copied().fold(f64::MIN, f64::max).max(lo * 10.0);
    let (xmin, xmax) = (sweep[0].0 as f64, sweep[sweep.len() - 1].0 as f64);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (xmin / 1.5..xmax * 1.5).log_scale().base(2.0),
            (lo / 2.0..hi * 2.0).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("message size (bytes, log scale)")
        .y_desc(format!("{y_label}, log scale"))
        .x_labels(8)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .x_label_formatter(&|x| size_label(x.round() as usize))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(err)?;
    for (i, s) in first.throughput.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let label = format!("{} [{}]", s.kind.label(false), s.kind.waits());
        chart
            .draw_series(LineSeries::new(points(i), colour.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    Ok(())
}
