//! Latency distributions drawn as PNG: per panel (a phase, a granule, a link, ...) one
//! complementary CDF per contender, latency on a log x axis, the fraction of operations at or
//! above it on a log y axis, so the median (0.5) and the tail (0.01 = p99, 0.001 = p99.9) read
//! off the same curve.
//!
//! Text is drawn with a TrueType font found at run time (plotters' ab_glyph: no fontconfig or
//! freetype at build time); without one there is no plot, only a message saying what to install.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde_json::Value;

use crate::dist::Hist;
use crate::Result;

/// One contender's distribution in a panel; `colour` indexes `PALETTE`, so that a contender
/// keeps its colour from panel to panel.
pub struct Curve {
    pub label: String,
    pub colour: usize,
    pub hist: Hist,
}

pub struct Panel {
    pub title: String,
    pub curves: Vec<Curve>,
}

const PALETTE: [RGBColor; 7] = [
    RGBColor(31, 95, 168),   // blue
    RGBColor(192, 57, 43),   // red
    RGBColor(46, 139, 87),   // green
    RGBColor(142, 68, 173),  // purple
    RGBColor(110, 110, 110), // grey
    RGBColor(20, 20, 20),    // black
    RGBColor(211, 130, 0),   // orange
];

/// Where the usual distributions put a font, tried when `HOLO_BENCH_FONT` names none.
const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", // Debian, Ubuntu: fonts-dejavu-core
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf", // Fedora
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf", // Arch
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];
const FONT: &str = "sans-serif";
const PANEL: (u32, u32) = (760, 480);
const COLUMNS: usize = 2;

/// Registers the first font found, once per process.
fn load_font() -> Result<()> {
    static LOADED: OnceLock<Result<()>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = match std::env::var_os("HOLO_BENCH_FONT").map(PathBuf::from) {
                Some(p) if !p.is_file() => return Err(format!("HOLO_BENCH_FONT={}: no such file", p.display())),
                Some(p) => p,
                None => FONT_PATHS.iter().map(PathBuf::from).find(|p| p.is_file()).ok_or(
                    "no font for the plot's text: install fonts-dejavu-core (Debian/Ubuntu; dejavu-sans-fonts on \
                     Fedora) or point HOLO_BENCH_FONT at a .ttf file",
                )?,
            };
            let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            // plotters keeps fonts for the whole process: so does this one, once.
            register_font(FONT, FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
                .map_err(|_| format!("{} is not a font plotters can read", path.display()))
        })
        .clone()
}

/// Draws `panels` (those with data; at least one must have some) under `title` into the PNG `path`.
pub fn ccdf_png(path: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    let panels: Vec<&Panel> = panels.iter().filter(|p| p.curves.iter().any(|c| c.hist.total() > 0)).collect();
    if panels.is_empty() {
        return Err("no latency distributions to draw (a JSON written before holo-bench recorded them?)".into());
    }
    load_font()?;
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let columns = COLUMNS.min(panels.len());
    let rows = panels.len().div_ceil(columns);
    let size = (PANEL.0 * columns as u32, PANEL.1 * rows as u32 + 40);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let body = root.titled(title, (FONT, 20)).map_err(|e| err(&e))?;
    for (area, panel) in body.split_evenly((rows, columns)).iter().zip(panels) {
        draw_panel(area, panel).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_panel(area: &Area, panel: &Panel) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let curves: Vec<&Curve> = panel.curves.iter().filter(|c| c.hist.total() > 0).collect();
    // Whole decades on both axes; y down to the rarest sample drawn.
    let (lo, hi) = curves
        .iter()
        .filter_map(|c| c.hist.range_us())
        .fold((f64::MAX, 0f64), |(l, h), (a, b)| (l.min(a.max(1e-3)), h.max(b)));
    let (x0, x1) = (10f64.powf(lo.log10().floor()), 10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)));
    let rarest = curves.iter().map(|c| 1.0 / c.hist.total() as f64).fold(1f64, f64::min);
    let y0 = 10f64.powf(rarest.log10().floor().min(-1.0));
    let decades = |a: f64, b: f64| -> Vec<f64> {
        (a.log10().round() as i32..=b.log10().round() as i32).map(|d| 10f64.powi(d)).collect()
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 16))
        .margin(12)
        .margin_right(28)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (x0..x1).log_scale().with_key_points(decades(x0, x1)),
            (y0..1.0).log_scale().with_key_points(decades(y0, 1.0)),
        )?;
    chart
        .configure_mesh()
        .x_desc("latency, us (log)")
        .y_desc("fraction at or above (log)")
        .x_label_formatter(&|v| format_number(*v))
        .y_label_formatter(&|v| format_number(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 13))
        .draw()?;
    // Where the median and the tail percentiles are read.
    for (q, name) in [(0.5, "p50"), (0.1, "p90"), (0.01, "p99"), (0.001, "p99.9"), (0.0001, "p99.99")] {
        if q <= y0 {
            break;
        }
        let grey = RGBColor(150, 150, 150);
        chart.draw_series(LineSeries::new([(x0, q), (x1, q)], grey.stroke_width(1)))?;
        chart.draw_series([Text::new(
            name,
            (x0 * 1.08, q * 1.1),
            (FONT, 12).into_font().color(&RGBColor(90, 90, 90)),
        )])?;
    }
    for c in &curves {
        let colour = PALETTE[c.colour % PALETTE.len()];
        let points = c.hist.ccdf().into_iter().map(|(x, y)| (x.max(x0), y));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(format!("{} (n = {})", c.label, c.hist.total()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        // Curves fall from the upper left to the lower right: the lower left is free.
        .position(SeriesLabelPosition::LowerLeft)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Axis labels: 0.001, 0.5, 10, 1000, 1e5 without float noise.
fn format_number(v: f64) -> String {
    if v >= 1e5 {
        format!("{v:.0e}")
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').to_string()
    }
}

/// `--replot RUN.json`: redraws the PNG of an earlier `expect` run's JSON report into `plot`,
/// by default next to the JSON.
pub fn replot(json: &Path, plot: Option<&Path>, expect: &str) -> Result<()> {
    let text = fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
    let report: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let kind = report["benchmark"].as_str().unwrap_or("?");
    if kind != expect {
        return Err(format!("{} holds a `{kind}` run, not a `{expect}` one", json.display()));
    }
    let path = plot.map_or_else(|| json.with_extension("png"), Path::to_path_buf);
    draw_report(&report, &path)?;
    println!("plot: {}", path.display());
    Ok(())
}

/// Draws a report's plot, whichever benchmark wrote it.
pub fn draw_report(report: &Value, path: &Path) -> Result<()> {
    let (title, panels) = match report["benchmark"].as_str() {
        Some("swap") => crate::swap::panels(report)?,
        Some("refault") => crate::panels(report)?,
        Some("remote") => crate::remote::panels(report)?,
        Some("threads") => crate::threads::panels(report)?,
        Some("shared") => crate::shared::panels(report)?,
        other => return Err(format!("no plot for a benchmark named {other:?}")),
    };
    ccdf_png(path, &title, &panels)
}

/// After a run: draws its plot next to its JSON (or at `plot`) and says where; a plot that
/// cannot be drawn (no font, say) is a loud line, not a failed measurement.
pub fn after_run(report: &Value, out: &Path, plot: Option<&Path>) {
    let path = plot.map_or_else(|| out.with_extension("png"), Path::to_path_buf);
    match draw_report(report, &path) {
        Ok(()) => println!("plot: {}", path.display()),
        Err(e) => eprintln!(
            "holo-bench: NO PLOT: {e}\n  (the measurement is in {}; redraw with --replot {} once fixed)",
            out.display(),
            out.display()
        ),
    }
}

/// The histograms at JSON pointer `ptr` of `rows`, added up (a row without one adds nothing).
pub fn merged<'a>(rows: impl IntoIterator<Item = &'a Value>, ptr: &str) -> Result<Hist> {
    let mut h = Hist::default();
    for r in rows {
        if let Some(v) = r.pointer(ptr).filter(|v| !v.is_null()) {
            h.merge(&Hist::from_json(v)?);
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_numbers() {
        assert_eq!(format_number(0.001), "0.001");
        assert_eq!(format_number(0.5), "0.5");
        assert_eq!(format_number(100.0), "100");
        assert_eq!(format_number(1e6), "1e6");
    }
}
