//! The run's record: `metrics.jsonl` (one JSON row per optimiser step and per validation) and
//! `loss.svg`, written by rank 0. On resume the rows past the checkpoint (an abandoned
//! continuation) are dropped, so every step appears once.

use super::plot::{write_loss_svg, Curves};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

pub struct MetricsSink {
    /// `None` on ranks other than 0.
    file: Option<std::fs::File>,
    curves: Curves,
    svg: PathBuf,
}

impl MetricsSink {
    /// The record of the run in `out` continuing after `step` (0: a new run); `writer`: this
    /// process keeps it.
    pub fn open(out: &Path, step: u64, writer: bool) -> Result<Self> {
        let svg = out.join("loss.svg");
        if !writer {
            return Ok(MetricsSink { file: None, curves: Curves::default(), svg });
        }
        let path = out.join("metrics.jsonl");
        let curves = restore_metrics(&path, step)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(MetricsSink { file: Some(file), curves, svg })
    }

    fn row(&mut self, v: &Value) -> Result<()> {
        match &mut self.file {
            Some(f) => writeln!(f, "{v}").context("cannot append to metrics.jsonl"),
            None => Ok(()),
        }
    }

    /// A training step's row (`step`, `loss`, `lr`, … as the loop measured them).
    pub fn step(&mut self, v: Value) -> Result<()> {
        if self.file.is_some() {
            let step = v["step"].as_u64().unwrap_or(0);
            self.curves.train.push((step, v["loss"].as_f64().unwrap_or(f64::NAN)));
            self.curves.lr.push((step, v["lr"].as_f64().unwrap_or(f64::NAN)));
        }
        self.row(&v)
    }

    pub fn validation(&mut self, step: u64, loss: f64) -> Result<()> {
        if self.file.is_some() {
            self.curves.val.push((step, loss));
        }
        self.row(&json!({"step": step, "val_loss": loss, "val_ppl": loss.exp()}))
    }

    /// Everything written so far on disk (before a checkpoint names this step).
    pub fn flush(&mut self) -> Result<()> {
        match &mut self.file {
            Some(f) => f.flush().context("cannot write metrics.jsonl"),
            None => Ok(()),
        }
    }

    /// Redraws loss.svg.
    pub fn plot(&self) -> Result<()> {
        match self.file {
            Some(_) => write_loss_svg(&self.svg, &self.curves),
            None => Ok(()),
        }
    }
}

/// On resume: keep the metrics rows up to the checkpoint's step (later ones belong to the
/// abandoned continuation) and return the curves so far.
fn restore_metrics(path: &Path, step: u64) -> Result<Curves> {
    let mut c = Curves::default();
    if step == 0 {
        let _ = std::fs::remove_file(path);
        return Ok(c);
    }
    let mut kept = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        for line in std::io::BufReader::new(f).lines() {
            let line = line?;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            let s = v["step"].as_u64().unwrap_or(u64::MAX);
            if s > step {
                continue;
            }
            if let Some(l) = v["loss"].as_f64() {
                c.train.push((s, l));
            }
            if let Some(l) = v["lr"].as_f64() {
                c.lr.push((s, l));
            }
            if let Some(l) = v["val_loss"].as_f64() {
                c.val.push((s, l));
            }
            kept += &line;
            kept.push('\n');
        }
    }
    crate::files::write_atomically(path, |w| {
        w.write_all(kept.as_bytes())?;
        Ok(())
    })?;
    Ok(c)
}
