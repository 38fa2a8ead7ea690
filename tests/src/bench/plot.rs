//! PNG plots for the report, drawn with plotters' bitmap backend. Text
//! uses a font compiled into the binary (Hack, from `epaint_default_fonts`)
//! through plotters' `ab_glyph` feature: no fontconfig, no system fonts,
//! nothing fetched at run time.
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};

const FONT: &str = "sans-serif";

fn ensure_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| {
        register_font(FONT, FontStyle::Normal, epaint_default_fonts::HACK_REGULAR).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded font did not load"))
    }
}

/// Colours by series name, so a mode has the same colour in every plot.
pub fn colour(name: &str) -> RGBColor {
    let n = name.to_ascii_lowercase();
    if n.contains("legacy") {
        RGBColor(140, 35, 30)
    } else if n.contains("iptables") {
        RGBColor(214, 69, 65)
    } else if n.contains("nft") {
        RGBColor(46, 160, 67)
    } else if n.contains("direct") || n.contains("empty") {
        RGBColor(130, 130, 130)
    } else if n.contains("tc") {
        RGBColor(148, 103, 189)
    } else {
        RGBColor(31, 119, 180)
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e:?}")
}

/// Grouped bars: one group per `groups` entry, one bar per series in each,
/// with its value written above it (`fmt`).
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
    fmt: &dyn Fn(f64) -> String,
) -> Result<()> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    draw_bars(&root, title, y_desc, groups, series, fmt)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn draw_bars(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
    fmt: &dyn Fn(f64) -> String,
) -> Result<()> {
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        // Room above the bars for their labels and the legend.
        * 1.45;
    let n = groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n, 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(plot_err)?;
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    for (s, (name, values)) in series.iter().enumerate() {
        let c = colour(name);
        let bars = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(g, v)| {
                let x0 = g as f64 + 0.1 + s as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.92, *v)], c.filled())
            });
        chart
            .draw_series(bars)
            .map_err(plot_err)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
        let labels = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(g, v)| {
                let x = g as f64 + 0.1 + (s as f64 + 0.5) * width;
                Text::new(
                    fmt(*v),
                    (x, *v + ymax * 0.01),
                    TextStyle::from((FONT, 12).into_font()).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Center,
                            plotters::style::text_anchor::VPos::Bottom,
                        ),
                    ),
                )
            });
        chart.draw_series(labels).map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)?;
    // Group names under the axis, at each group's centre.
    for (g, name) in groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            name.clone(),
            (px, py + 8),
            TextStyle::from((FONT, 15).into_font()).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Top,
            )),
        ))
        .map_err(plot_err)?;
    }
    Ok(())
}

/// Lines over a logarithmic x axis (e.g. cost against service count).
pub fn log_x_lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let points = || series.iter().flat_map(|(_, p)| p.iter().copied());
    let xmax = points().map(|p| p.0).fold(1.0f64, f64::max) * 1.5;
    let ymax = points()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(46)
        .y_label_area_size(80)
        .build_cartesian_2d((0.7f64..xmax).log_scale(), 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| super::count_label(x.round() as usize))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(plot_err)?;
    // Distinct colours by position; a baseline (an empty program) grey
    // and thin.
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    for (i, (name, pts)) in series.iter().enumerate() {
        let baseline = name.contains("empty") || name.contains("baseline");
        let c = if baseline {
            RGBColor(130, 130, 130)
        } else {
            palette[i % palette.len()]
        };
        let style = if baseline {
            c.stroke_width(1)
        } else {
            c.stroke_width(3)
        };
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(plot_err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders both kinds with text, in a temporary directory: the
    /// embedded font loads and PNGs come out (no system fonts involved).
    #[test]
    fn renders_pngs_with_text() {
        let dir = std::env::temp_dir().join(format!("svc-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bars = dir.join("bars.png");
        grouped_bars(
            &bars,
            "new connections per second",
            "ratio to direct",
            &["1".into(), "1k".into()],
            &[
                ("svc-proxy".into(), vec![0.95, 0.94]),
                ("iptables".into(), vec![0.85, f64::NAN]),
            ],
            &|v| format!("{v:.2}x"),
        )
        .unwrap();
        let lines = dir.join("lines.png");
        log_x_lines(
            &lines,
            "cost",
            "services",
            "ns",
            &[("XDP hit".into(), vec![(1.0, 50.0), (100_000.0, 60.0)])],
        )
        .unwrap();
        for f in [&bars, &lines] {
            let bytes = std::fs::read(f).unwrap();
            assert_eq!(&bytes[1..4], b"PNG");
            assert!(bytes.len() > 5000, "{} is suspiciously small", f.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
