//! The loss curve as a small standalone SVG — train loss per step, validation loss points, the
//! learning rate on a second axis, a grid — so a run can be looked at without any plotting tool.

use anyhow::Result;
use std::fmt::Write;
use std::path::Path;

/// `(step, value)` series of a run.
#[derive(Default, Debug)]
pub struct Curves {
    pub train: Vec<(u64, f64)>,
    pub val: Vec<(u64, f64)>,
    pub lr: Vec<(u64, f64)>,
}

/// `n + 1` round tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    (0..=n).map(|i| lo + (hi - lo) * i as f64 / n as f64).collect()
}

pub fn write_loss_svg(path: &Path, c: &Curves) -> Result<()> {
    let (w, h) = (860.0, 470.0);
    let (left, right, top, bottom) = (70.0, 80.0, 40.0, 60.0);
    let finite = |v: &&(u64, f64)| v.1.is_finite();
    let pts: Vec<&(u64, f64)> = c.train.iter().chain(&c.val).filter(finite).collect();
    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    if !pts.is_empty() {
        let xmax = pts.iter().map(|p| p.0).max().unwrap().max(1) as f64;
        let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        // a margin under and over the curve, so that it does not run along the axes
        let pad = if hi - lo < 1e-9 { 0.5 } else { 0.06 * (hi - lo) };
        let (ymin, ymax) = (lo - pad, hi + pad);
        let (x0, x1, y0, y1) = (left, w - right, h - bottom, top);
        let x = |s: u64| x0 + (x1 - x0) * s as f64 / xmax;
        let y = |v: f64| y0 + (y1 - y0) * (v - ymin) / (ymax - ymin);
        // grid and axes
        for v in ticks(ymin, ymax, 5) {
            writeln!(svg, r##"<line x1="{x0}" y1="{0:.1}" x2="{x1}" y2="{0:.1}" stroke="#e3e3e3"/>"##, y(v))?;
            writeln!(svg, r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.2}</text>"#, x0 - 6.0, y(v) + 4.0)?;
        }
        for t in ticks(0.0, xmax, 5) {
            let s = t.round() as u64;
            writeln!(svg, r##"<line x1="{0:.1}" y1="{y1}" x2="{0:.1}" y2="{y0}" stroke="#e3e3e3"/>"##, x(s))?;
            writeln!(svg, r#"<text x="{:.1}" y="{}" text-anchor="middle">{s}</text>"#, x(s), y0 + 18.0)?;
        }
        writeln!(
            svg,
            r#"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="black"/>"#,
            x1 - x0,
            y0 - y1
        )?;
        writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#, (x0 + x1) / 2.0, h - 18.0)?;
        writeln!(
            svg,
            r#"<text x="18" y="{0}" transform="rotate(-90 18 {0})" text-anchor="middle">loss</text>"#,
            (y0 + y1) / 2.0
        )?;
        // the learning rate on the right axis, from 0
        let lrs: Vec<&(u64, f64)> = c.lr.iter().filter(finite).collect();
        let lr_max = lrs.iter().map(|p| p.1).fold(0.0, f64::max);
        if lr_max > 0.0 {
            let ylr = |v: f64| y0 + (y1 - y0) * v / (lr_max * 1.06);
            for v in ticks(0.0, lr_max, 4) {
                writeln!(svg, r#"<text x="{}" y="{:.1}" fill="gray">{v:.1e}</text>"#, x1 + 6.0, ylr(v) + 4.0)?;
            }
            let line: Vec<String> = lrs.iter().map(|&&(s, v)| format!("{:.1},{:.1}", x(s), ylr(v))).collect();
            writeln!(
                svg,
                r#"<polyline fill="none" stroke="gray" stroke-dasharray="4 3" stroke-width="1" points="{}"/>"#,
                line.join(" ")
            )?;
            writeln!(
                svg,
                r#"<text x="{0}" y="{1}" transform="rotate(90 {0} {1})" text-anchor="middle" fill="gray">learning rate</text>"#,
                w - 14.0,
                (y0 + y1) / 2.0
            )?;
        }
        let line: Vec<String> =
            c.train.iter().filter(finite).map(|&(s, v)| format!("{:.1},{:.1}", x(s), y(v))).collect();
        writeln!(svg, r#"<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="{}"/>"#, line.join(" "))?;
        for &(s, v) in c.val.iter().filter(finite) {
            writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="darkorange"/>"#, x(s), y(v))?;
        }
        let lx = x1 - 170.0;
        writeln!(svg, r#"<text x="{lx}" y="{}" fill="steelblue">— train loss</text>"#, y1 + 18.0)?;
        writeln!(svg, r#"<text x="{lx}" y="{}" fill="darkorange">● validation loss</text>"#, y1 + 34.0)?;
        if lr_max > 0.0 {
            writeln!(svg, r#"<text x="{lx}" y="{}" fill="gray">- - learning rate</text>"#, y1 + 50.0)?;
        }
    }
    writeln!(svg, "</svg>")?;
    crate::files::write_atomically(path, |f| {
        std::io::Write::write_all(f, svg.as_bytes())?;
        Ok(())
    })
}
