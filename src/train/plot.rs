//! The loss curve as a small standalone SVG (train loss per step, validation loss points), so a
//! run can be looked at without any plotting tool.

use anyhow::Result;
use std::fmt::Write;
use std::path::Path;

pub fn write_loss_svg(path: &Path, train: &[(u64, f64)], val: &[(u64, f64)]) -> Result<()> {
    let (w, h, m) = (800.0, 450.0, 60.0);
    let finite = |v: &&(u64, f64)| v.1.is_finite();
    let pts: Vec<&(u64, f64)> = train.iter().chain(val).filter(finite).collect();
    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    if !pts.is_empty() {
        let xmax = pts.iter().map(|p| p.0).max().unwrap().max(1) as f64;
        let ymin = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let ymax = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let (ymin, ymax) = if ymax - ymin < 1e-9 { (ymin - 0.5, ymax + 0.5) } else { (ymin, ymax) };
        let x = |s: u64| m + (w - 2.0 * m) * s as f64 / xmax;
        let y = |v: f64| h - m - (h - 2.0 * m) * (v - ymin) / (ymax - ymin);
        writeln!(svg, r#"<line x1="{m}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#, h - m, w - m, h - m)?;
        writeln!(svg, r#"<line x1="{m}" y1="{m}" x2="{m}" y2="{}" stroke="black"/>"#, h - m)?;
        for i in 0..=4 {
            let v = ymin + (ymax - ymin) * i as f64 / 4.0;
            writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">{v:.2}</text>"#, m - 6.0, y(v) + 4.0)?;
            let s = (xmax * i as f64 / 4.0) as u64;
            writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{s}</text>"#, x(s), h - m + 18.0)?;
        }
        writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#, w / 2.0, h - 15.0)?;
        writeln!(
            svg,
            r#"<text x="15" y="{}" transform="rotate(-90 15 {})" text-anchor="middle">loss</text>"#,
            h / 2.0,
            h / 2.0
        )?;
        let line: Vec<String> = train.iter().filter(finite).map(|&(s, v)| format!("{:.1},{:.1}", x(s), y(v))).collect();
        writeln!(svg, r#"<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="{}"/>"#, line.join(" "))?;
        for &(s, v) in val.iter().filter(finite) {
            writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="darkorange"/>"#, x(s), y(v))?;
        }
        writeln!(svg, r#"<text x="{}" y="30" fill="steelblue">train loss</text>"#, w - m - 150.0)?;
        writeln!(svg, r#"<text x="{}" y="46" fill="darkorange">validation loss</text>"#, w - m - 150.0)?;
    }
    writeln!(svg, "</svg>")?;
    crate::checkpoint::safetensors::write_atomically(path, |f| {
        std::io::Write::write_all(f, svg.as_bytes())?;
        Ok(())
    })
}
