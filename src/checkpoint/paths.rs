//! Where checkpoints sit in a run directory (`RUN/checkpoints/step-{step:08}/`), and what a path a
//! user names is: a model directory, a GGUF file, a run or its checkpoints folder (the latest
//! checkpoint), or a step by its short name (`step-400` for `step-00000400`).

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

pub fn step_of(p: &Path) -> Option<u64> {
    p.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()
}

/// Complete checkpoints under `root`, oldest first.
pub fn list_checkpoints(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("trainer_state.json").exists())
                .filter_map(|p| step_of(&p).map(|s| (s, p)))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn latest_checkpoint(root: &Path) -> Option<PathBuf> {
    list_checkpoints(root).pop().map(|(_, p)| p)
}

/// What a named model path turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPath {
    /// The file or directory to read.
    pub path: PathBuf,
    /// How a name that is not the path itself was read ("the latest checkpoint of runs/x"), to
    /// be said to the user.
    pub note: Option<String>,
}

/// Reads a path a user gave as a model: a GGUF file; a Hugging Face directory (or its
/// `model.safetensors`); a run directory or its `checkpoints/` (the latest checkpoint, said in
/// the note); `…/latest` (likewise); `step-N` for `step-{N:08}`. Anything else is refused with
/// what it is and why it is not a model.
pub fn resolve_model_path(p: &Path) -> Result<ModelPath> {
    let plain = |path: PathBuf| Ok(ModelPath { path, note: None });
    if p.is_file() {
        let is_gguf = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if is_gguf || p.file_name().is_some_and(|n| n == "model.safetensors") {
            return plain(p.to_path_buf());
        }
        bail!(
            "{} is not a model directory, checkpoint or GGUF file (a model is a directory with config.json, \
             a run directory, or a .gguf file)",
            p.display()
        );
    }
    if p.is_dir() {
        if p.join("config.json").is_file() {
            return plain(p.to_path_buf());
        }
        for root in [p.join("checkpoints"), p.to_path_buf()] {
            if let Some(latest) = latest_checkpoint(&root) {
                let note =
                    format!("{} is a training run: using its latest checkpoint {}", p.display(), latest.display());
                return Ok(ModelPath { path: latest, note: Some(note) });
            }
        }
        bail!(
            "{} is not a model directory, checkpoint or GGUF file: it holds no config.json and no checkpoints",
            p.display()
        );
    }
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name == "latest" {
        for root in [parent.join("checkpoints"), parent.to_path_buf()] {
            if let Some(latest) = latest_checkpoint(&root) {
                let note = format!("{}: the latest checkpoint is {}", p.display(), latest.display());
                return Ok(ModelPath { path: latest, note: Some(note) });
            }
        }
        bail!("{}: there are no checkpoints in {}", p.display(), parent.display());
    }
    if let Some(step) = step_of(p) {
        for root in [parent.to_path_buf(), parent.join("checkpoints")] {
            let dir = step_dir(&root, step);
            if dir.is_dir() {
                return Ok(ModelPath { path: dir, note: None });
            }
        }
        let have: Vec<String> = [parent.to_path_buf(), parent.join("checkpoints")]
            .iter()
            .flat_map(|r| list_checkpoints(r))
            .map(|(s, _)| s.to_string())
            .collect();
        if !have.is_empty() {
            bail!("{} does not exist: {} has checkpoints at steps {}", p.display(), parent.display(), have.join(", "));
        }
    }
    bail!("{} does not exist", p.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(root: &Path, step: u64) -> PathBuf {
        let d = step_dir(root, step);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("trainer_state.json"), "{}").unwrap();
        std::fs::write(d.join("config.json"), "{}").unwrap();
        d
    }

    #[test]
    fn names_users_type_resolve_to_checkpoints() {
        let d = std::env::temp_dir().join(format!("tinyllama-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let ck = d.join("run/checkpoints");
        let s400 = checkpoint(&ck, 400);
        let s1200 = checkpoint(&ck, 1200);
        // a half-written step (no trainer_state.json) is not the latest
        std::fs::create_dir_all(step_dir(&ck, 1600)).unwrap();
        let r = |p: PathBuf| resolve_model_path(&p);
        assert_eq!(r(ck.join("step-400")).unwrap().path, s400);
        assert_eq!(r(ck.join("step-00000400")).unwrap(), ModelPath { path: s400.clone(), note: None });
        assert_eq!(r(d.join("run/step-400")).unwrap().path, s400);
        let run = r(d.join("run")).unwrap();
        assert_eq!(run.path, s1200);
        assert!(run.note.unwrap().contains("latest checkpoint"));
        assert_eq!(r(ck.clone()).unwrap().path, s1200);
        assert_eq!(r(ck.join("latest")).unwrap().path, s1200);
        assert_eq!(r(d.join("run/latest")).unwrap().path, s1200);
        let missing = r(ck.join("step-500")).unwrap_err().to_string();
        assert!(missing.contains("does not exist") && missing.contains("400, 1200"), "{missing}");
        assert!(r(d.join("nowhere")).unwrap_err().to_string().ends_with("does not exist"));
        std::fs::write(d.join("notes.txt"), "hi").unwrap();
        let e = r(d.join("notes.txt")).unwrap_err().to_string();
        assert!(e.contains("notes.txt is not a model directory, checkpoint or GGUF file"), "{e}");
        std::fs::create_dir_all(d.join("empty")).unwrap();
        assert!(r(d.join("empty")).unwrap_err().to_string().contains("no config.json"));
        std::fs::remove_dir_all(d).unwrap();
    }
}
