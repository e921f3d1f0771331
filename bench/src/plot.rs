//! Grouped bar charts on a log scale, written as SVG by hand: text needs no font library and
//! the crate no plotting dependency.

use std::fmt::Write as _;

/// One chart: groups along x, one bar per series in each group, optional reference lines.
pub struct Panel {
    pub title: String,
    pub groups: Vec<String>,
    /// (name, colour, one value per group; None or non-positive: no bar).
    pub series: Vec<(String, &'static str, Vec<Option<f64>>)>,
    /// Horizontal dashed lines: (label, value).
    pub lines: Vec<(String, f64)>,
}

const W: f64 = 960.0;
const H: f64 = 340.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn svg(title: &str, panels: &[Panel]) -> String {
    let height = 40.0 + H * panels.len() as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>
"#,
        W / 2.0,
        esc(title)
    );
    for (i, p) in panels.iter().enumerate() {
        panel(&mut s, p, 40.0 + H * i as f64);
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, p: &Panel, y0: f64) {
    let values = p.series.iter().flat_map(|(_, _, v)| v.iter().flatten()).chain(p.lines.iter().map(|(_, v)| v));
    let values: Vec<f64> = values.copied().filter(|v| *v > 0.0 && v.is_finite()).collect();
    if values.is_empty() {
        return;
    }
    let lo = values.iter().copied().fold(f64::MAX, f64::min).log10().floor();
    let hi = values.iter().copied().fold(f64::MIN, f64::max).log10().ceil().max(lo + 1.0);
    let (top, bottom, right) = (y0 + TOP, y0 + H - BOTTOM, W - 150.0);
    let y = |v: f64| bottom - (v.log10() - lo) / (hi - lo) * (bottom - top);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="{}" font-size="13">{}</text>"#, y0 + 22.0, esc(&p.title));
    // Decades: grid and labels.
    for d in lo as i32..=hi as i32 {
        let (v, yy) = (10f64.powi(d), y(10f64.powi(d)));
        let _ = writeln!(s, r##"<line x1="{LEFT}" x2="{right}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/>"##);
        let label = if v >= 1.0 { format!("{v:.0}") } else { format!("{v}") };
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{label}</text>"#, LEFT - 6.0, yy + 4.0);
    }
    let gw = (right - LEFT) / p.groups.len() as f64;
    let bw = gw * 0.8 / p.series.len() as f64;
    for (g, name) in p.groups.iter().enumerate() {
        let gx = LEFT + gw * g as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            gx + gw / 2.0,
            bottom + 18.0,
            esc(name)
        );
        for (k, (_, colour, v)) in p.series.iter().enumerate() {
            let Some(v) = v.get(g).copied().flatten().filter(|v| *v > 0.0 && v.is_finite()) else { continue };
            let (x, yy) = (gx + gw * 0.1 + bw * k as f64, y(v));
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{yy:.1}" width="{:.1}" height="{:.1}" fill="{colour}"/>"#,
                bw * 0.9,
                bottom - yy
            );
            let label = if v >= 10.0 { format!("{v:.0}") } else { format!("{v:.1}") };
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{label}</text>"#,
                x + bw * 0.45,
                yy - 3.0
            );
        }
    }
    for (label, v) in &p.lines {
        let yy = y(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{right}" y1="{yy:.1}" y2="{yy:.1}" stroke="#555" stroke-dasharray="5,4"/>
<text x="{:.1}" y="{:.1}" font-size="10" fill="#333">{}</text>"##,
            right + 4.0,
            yy + 4.0,
            esc(label)
        );
    }
    // Legend, in the title's row.
    for (k, (name, colour, _)) in p.series.iter().enumerate() {
        let (lx, ly) = (W - 150.0 - 110.0 * (p.series.len() - k) as f64, y0 + 22.0);
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 9.0,
            lx + 14.0,
            esc(name)
        );
    }
}
