//! huggingface_hub's cache layout, so that Python and this program share downloads:
//! `models--org--name/blobs/<etag>` (the files' bytes), `snapshots/<commit>/<path>` (relative
//! symlinks into `blobs/`), `refs/<revision>` (a branch or tag's commit), and
//! `.locks/models--org--name/<etag>.lock`, locked with `flock` as Python's `filelock` does.

use anyhow::{Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// One repository's folder in the cache.
pub struct RepoCache {
    /// `CACHE/models--org--name`.
    pub dir: PathBuf,
    locks: PathBuf,
    root: PathBuf,
}

/// A full 40-hex-digit commit hash (which, unlike a branch, never moves).
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// huggingface_hub's `repo_folder_name`: `models--org--name`.
pub fn repo_folder_name(repo: &str) -> String {
    std::iter::once("models").chain(repo.split('/')).collect::<Vec<_>>().join("--")
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo: &str) -> RepoCache {
        let folder = repo_folder_name(repo);
        RepoCache { dir: cache_dir.join(&folder), locks: cache_dir.join(".locks").join(folder), root: cache_dir.into() }
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    /// The commit a revision names in the cache: itself when it is a commit hash, else what
    /// `refs/<revision>` holds.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        Some(text.trim().to_string()).filter(|c| is_commit_hash(c))
    }

    /// Records that `revision` (a branch or tag) is at `commit`, atomically; nothing for a commit.
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit || self.commit_of(revision).as_deref() == Some(commit) {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        std::fs::create_dir_all(path.parent().expect("refs/<revision> has a parent"))
            .with_context(|| format!("cannot create {}", self.dir.join("refs").display()))?;
        crate::files::write_atomically(&path, |w| {
            use std::io::Write;
            w.write_all(commit.as_bytes())?;
            Ok(())
        })
    }

    /// Creates the folders a download writes into, and `CACHEDIR.TAG` at the cache root (as
    /// huggingface_hub does, so that backup tools skip the cache).
    pub fn prepare(&self) -> Result<()> {
        for d in [self.dir.join("blobs"), self.dir.join("snapshots"), self.locks.clone()] {
            std::fs::create_dir_all(&d).with_context(|| format!("cannot create the cache folder {}", d.display()))?;
        }
        let tag = self.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            let text = "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by huggingface_hub.\n";
            let _ = std::fs::write(tag, text);
        }
        Ok(())
    }

    /// `snapshots/<commit>/<file>` → `../../blobs/<etag>` (one `..` more per folder in `file`),
    /// made beside it and renamed into place so that a reader never sees a half-made link.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let pointer = self.snapshot(commit).join(file);
        let parent = pointer.parent().expect("a snapshot file has a parent");
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let depth = file.split('/').count() + 1;
        let target: PathBuf = std::iter::repeat_n("..", depth).collect::<PathBuf>().join("blobs").join(etag);
        let tmp =
            parent.join(format!(".{}.{}.link", pointer.file_name().unwrap().to_string_lossy(), std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .with_context(|| format!("cannot create the link {}", tmp.display()))?;
        std::fs::rename(&tmp, &pointer).with_context(|| format!("cannot create the link {}", pointer.display()))?;
        Ok(pointer)
    }

    /// Holds `.locks/models--org--name/<etag>.lock` until dropped, waiting for any other process
    /// (this program or Python's huggingface_hub) that holds it.
    pub fn lock(&self, etag: &str) -> Result<FileLock> {
        let path = self.locks.join(format!("{etag}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
    }
}

/// An exclusive `flock`, released when the file closes.
pub struct FileLock {
    _file: File,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_match_huggingface_hub() {
        assert_eq!(
            repo_folder_name("TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
            "models--TinyLlama--TinyLlama-1.1B-Chat-v1.0"
        );
        assert!(is_commit_hash("fe8a4ea1ffedaf415f4da2f062534de366a451e6"));
        assert!(!is_commit_hash("main") && !is_commit_hash("FE8A4EA1FFEDAF415F4DA2F062534DE366A451E6"));
        let dir = std::env::temp_dir().join(format!("tinyllama-cache-{}", std::process::id()));
        let c = RepoCache::new(&dir, "org/name");
        c.prepare().unwrap();
        std::fs::create_dir_all(c.dir.join("blobs")).unwrap();
        std::fs::write(c.blob("abc"), b"x").unwrap();
        let p = c.link("0123456789012345678901234567890123456789", "sub/f.json", "abc").unwrap();
        assert_eq!(std::fs::read_link(&p).unwrap(), PathBuf::from("../../../blobs/abc"));
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
        c.write_ref("main", "0123456789012345678901234567890123456789").unwrap();
        assert_eq!(c.commit_of("main").as_deref(), Some("0123456789012345678901234567890123456789"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
