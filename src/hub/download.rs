//! One file into the cache: downloaded into `blobs/<etag>.incomplete` (resumed from its length with
//! `Range` after an interruption, a kill or a dropped connection; transient failures retried with
//! backoff), checked against its ETag (an LFS file's sha256, a git blob's sha1), then renamed to
//! `blobs/<etag>` and linked from the snapshot — all under the blob's lock, so that processes
//! fetching the same file, ours or Python's, wait for each other instead of writing over it.

use super::cache::RepoCache;
use super::client::{Client, FileMeta};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Tries in a row without a byte of progress before a download gives up.
const MAX_FAILURES: u32 = 5;

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.saturating_sub(1).min(3))
}

/// `snapshots/<commit>/<file>`, downloaded unless the blob is already cached.
pub fn fetch_file(
    client: &Client,
    cache: &RepoCache,
    meta: &FileMeta,
    commit: &str,
    file: &str,
    progress: bool,
) -> Result<PathBuf> {
    let blob = cache.blob(&meta.etag);
    let _lock = cache.lock(&meta.etag)?;
    if !blob.exists() {
        download_blob(client, meta, &blob, file, progress)?;
    }
    cache.link(commit, file, &meta.etag)
}

fn bar(file: &str, size: Option<u64>, have: u64, progress: bool) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
    let style = "{msg:30!} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta}";
    b.set_style(ProgressStyle::with_template(style).expect("a valid template"));
    b.set_message(file.rsplit('/').next().unwrap_or(file).to_string());
    b.set_position(have);
    b
}

/// How one `GET` ended.
enum Attempt {
    /// The file is whole (or the server says there is nothing after what we hold).
    Complete,
    /// It broke off; `progressed`: some bytes arrived first.
    Broke { why: String, progressed: bool },
}

fn download_blob(client: &Client, meta: &FileMeta, blob: &Path, file: &str, progress: bool) -> Result<()> {
    let part = PathBuf::from(format!("{}.incomplete", blob.display()));
    let held = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if let Some(size) = meta.size {
        check_free_space(blob.parent().expect("a blob has a folder"), size.saturating_sub(held(&part)), file)?;
    }
    let bar = bar(file, meta.size, held(&part), progress);
    let mut failures = 0;
    loop {
        let have = held(&part);
        if meta.size.is_some_and(|s| have > s) {
            std::fs::remove_file(&part).with_context(|| format!("cannot remove {}", part.display()))?;
            continue;
        }
        let attempt =
            if meta.size == Some(have) { Ok(Attempt::Complete) } else { get_into(client, meta, &part, have, &bar) };
        match attempt {
            Ok(Attempt::Complete) => break,
            Ok(Attempt::Broke { why, progressed }) => {
                failures = if progressed { 1 } else { failures + 1 };
                if failures > MAX_FAILURES {
                    bail!("downloading {file} from {} failed {MAX_FAILURES} times in a row ({why}); run again to resume from {} bytes", meta.url, held(&part));
                }
                bar.suspend(|| eprintln!("note: {file}: {why}; resuming in {} s", backoff(failures).as_secs()));
                std::thread::sleep(backoff(failures));
            }
            Err(e) => return Err(e),
        }
    }
    bar.finish_and_clear();
    verify(&part, meta, file)?;
    File::open(&part).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", part.display()))?;
    std::fs::rename(&part, blob).with_context(|| format!("cannot move {} into place", part.display()))?;
    crate::files::sync_dir(blob.parent().expect("a blob has a folder"))
}

/// One `GET` from byte `have` into `part`.
fn get_into(client: &Client, meta: &FileMeta, part: &Path, have: u64, bar: &ProgressBar) -> Result<Attempt> {
    let mut r = match client.get(&meta.url, have) {
        Ok(r) => r,
        Err(f) if f.is_transient() => return Ok(Attempt::Broke { why: f.to_string(), progressed: false }),
        Err(f) => bail!("cannot download {}: {f}", meta.url),
    };
    let start = match r.status().as_u16() {
        206 => have,
        416 => {
            // nothing after `have`: what we hold is either the file or wrong, and verify will say
            return Ok(Attempt::Complete);
        }
        _ => 0, // 200: the whole file (a server that ignores Range starts us again)
    };
    let mut out = File::options()
        .create(true)
        .append(start > 0)
        .write(true)
        .truncate(start == 0)
        .open(part)
        .with_context(|| format!("cannot write {}", part.display()))?;
    bar.set_position(start);
    let mut reader = r.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut progressed = false;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Ok(Attempt::Broke { why: format!("the connection broke: {e}"), progressed }),
        };
        if let Err(e) = out.write_all(&buf[..n]) {
            return Err(write_error(e, part));
        }
        progressed = true;
        bar.inc(n as u64);
    }
    out.flush().map_err(|e| write_error(e, part))?;
    let got = out.metadata().map(|m| m.len()).unwrap_or(0);
    match meta.size {
        Some(size) if got < size => {
            Ok(Attempt::Broke { why: format!("the answer ended at {got} of {size} bytes"), progressed })
        }
        _ => Ok(Attempt::Complete),
    }
}

fn write_error(e: std::io::Error, part: &Path) -> anyhow::Error {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        anyhow::anyhow!(
            "the disk is full: cannot write {} (free some space, or set HF_HUB_CACHE to a larger disk; the part \
             downloaded is kept and the next run resumes it)",
            part.display()
        )
    } else {
        anyhow::Error::new(e).context(format!("cannot write {}", part.display()))
    }
}

fn check_free_space(dir: &Path, need: u64, file: &str) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).context("a cache path holds a NUL byte")?;
    // SAFETY: statvfs fills the struct it is given; c is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Ok(()); // unknown: the write will say if the disk fills
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    if free < need {
        bail!(
            "not enough disk space for {file}: it needs {need} more bytes and {} has {free} free (free some space, or \
             set HF_HUB_CACHE to a larger disk)",
            dir.display()
        );
    }
    Ok(())
}

/// The digest an ETag promises: a 64-hex-digit ETag is an LFS file's sha256, a 40-hex-digit one
/// a git blob's sha1 (of `blob <len>\0` and the bytes). Other ETags promise nothing checkable.
fn verify(part: &Path, meta: &FileMeta, file: &str) -> Result<()> {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let len = std::fs::metadata(part).with_context(|| format!("cannot read {}", part.display()))?.len();
    let (mut ctx, kind) = match meta.etag.len() {
        64 if hex(&meta.etag) => (ring::digest::Context::new(&ring::digest::SHA256), "sha256"),
        40 if hex(&meta.etag) => {
            let mut c = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
            c.update(format!("blob {len}\0").as_bytes());
            (c, "git sha1")
        }
        _ => return Ok(()),
    };
    let mut f = File::open(part).with_context(|| format!("cannot read {}", part.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", part.display()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let got: String = ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    if got != meta.etag.to_lowercase() {
        let _ = std::fs::remove_file(part);
        bail!(
            "{file} from {} is corrupt: its {kind} is {got}, the Hub's ETag says {} ({len} bytes received); nothing \
             was linked into the cache, and the next run downloads it afresh",
            meta.url,
            meta.etag
        );
    }
    Ok(())
}
