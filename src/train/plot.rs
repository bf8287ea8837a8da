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

/// Round tick values inside `[lo, hi]`, about `n` of them: multiples of 1, 2 or 5 × 10^k, and
/// the decimals that tell them apart.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> (Vec<f64>, usize) {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / n.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|&s| s >= raw).unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let ticks = (first..=last).map(|i| i as f64 * step).collect();
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    (ticks, decimals)
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
        // a margin under and over the curve, so that it does not run along the axes; a loss is
        // never negative, so neither is its axis
        let pad = if hi - lo < 1e-9 { 0.5 } else { 0.06 * (hi - lo) };
        let ymin = if lo >= 0.0 { (lo - pad).max(0.0) } else { lo - pad };
        let ymax = hi + pad;
        let (x0, x1, y0, y1) = (left, w - right, h - bottom, top);
        let x = |s: u64| x0 + (x1 - x0) * s as f64 / xmax;
        let y = |v: f64| y0 + (y1 - y0) * (v - ymin) / (ymax - ymin);
        // grid and axes
        let (yticks, digits) = nice_ticks(ymin, ymax, 5);
        for v in yticks {
            writeln!(svg, r##"<line x1="{x0}" y1="{0:.1}" x2="{x1}" y2="{0:.1}" stroke="#e3e3e3"/>"##, y(v))?;
            writeln!(svg, r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.digits$}</text>"#, x0 - 6.0, y(v) + 4.0)?;
        }
        let (xticks, _) = nice_ticks(0.0, xmax, 5);
        for t in xticks.into_iter().filter(|t| t.fract() == 0.0) {
            let s = t as u64;
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
            for v in nice_ticks(0.0, lr_max, 4).0 {
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
        let mut legend_y = y1 + 34.0;
        if c.val.iter().any(|v| v.1.is_finite()) {
            writeln!(svg, r#"<text x="{lx}" y="{legend_y}" fill="darkorange">● validation loss</text>"#)?;
            legend_y += 16.0;
        }
        if lr_max > 0.0 {
            writeln!(svg, r#"<text x="{lx}" y="{legend_y}" fill="gray">- - learning rate</text>"#)?;
        }
    }
    writeln!(svg, "</svg>")?;
    crate::files::write_atomically(path, |f| {
        std::io::Write::write_all(f, svg.as_bytes())?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y_labels(svg: &str) -> Vec<String> {
        svg.lines()
            .filter(|l| l.contains(r#"text-anchor="end""#))
            .map(|l| l.split('>').nth(1).unwrap().trim_end_matches("</text").to_string())
            .collect()
    }

    /// An SFT-like curve (0.693 → 0.689, no validation): round, distinct, non-negative y labels;
    /// no validation legend. A wide pretraining curve: ticks on round values too.
    #[test]
    fn ticks_are_round_distinct_and_only_what_was_recorded_is_shown() {
        let d = std::env::temp_dir().join(format!("tinyllama-plot-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("loss.svg");
        let narrow = Curves {
            train: (1..=30).map(|s| (s, std::f64::consts::LN_2 - 0.00015 * s as f64)).collect(),
            val: vec![],
            lr: (1..=30).map(|s| (s, 5e-7)).collect(),
        };
        write_loss_svg(&path, &narrow).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let labels = y_labels(&svg);
        assert!(labels.len() >= 3, "{labels:?}");
        let distinct: std::collections::HashSet<&String> = labels.iter().collect();
        assert_eq!(distinct.len(), labels.len(), "labels tell the ticks apart: {labels:?}");
        for l in &labels {
            let v: f64 = l.parse().unwrap();
            assert!(v >= 0.0, "{l}");
            let step = labels[1].parse::<f64>().unwrap() - labels[0].parse::<f64>().unwrap();
            let k = v / step;
            assert!((k - k.round()).abs() < 1e-6, "{l} is a multiple of the step {step}");
        }
        assert!(!svg.contains("validation loss"), "no validation points, no legend");
        // an SFT loss from 2.1 to 0.05: the axis starts at 0, not below
        let sft = Curves { train: vec![(1, 2.1), (50, 0.05)], ..Default::default() };
        write_loss_svg(&path, &sft).unwrap();
        let labels = y_labels(&std::fs::read_to_string(&path).unwrap());
        assert!(labels.iter().all(|l| !l.starts_with('-')), "{labels:?}");
        assert_eq!(labels[0], "0.0", "{labels:?}");
        // with validation points, the legend says so
        let pre = Curves { train: vec![(1, 10.4), (400, 3.2)], val: vec![(200, 4.1)], ..Default::default() };
        write_loss_svg(&path, &pre).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("validation loss"));
        assert_eq!(y_labels(&svg), ["4", "6", "8", "10"]);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn nice_ticks_by_hand() {
        assert_eq!(nice_ticks(0.0, 400.0, 5), ((0..=4).map(|i| i as f64 * 100.0).collect(), 0));
        assert_eq!(nice_ticks(0.688, 0.694, 5).1, 3);
        let (t, _) = nice_ticks(2.95, 10.7, 5);
        assert_eq!(t, [4.0, 6.0, 8.0, 10.0]);
    }
}
