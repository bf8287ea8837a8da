//! The built-in corpus (`data/corpus/`, compiled into the binary): Austen as `slim`, CPython as
//! `star`. Tokenized on first use into a cache directory, keyed by the corpus, the tokenizer and
//! the validation fraction, and reused after that.

use super::prepare::{prepare, PrepareOptions};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Tokens per shard: small, so that several data-parallel ranks (and accumulation streams) each
/// get files of every component (~18 `slim` and ~8 `star` shards).
pub const CHUNK_SIZE: usize = 2049 * 32;

pub const FILES: &[(&str, &[u8])] = &[
    ("slim", include_bytes!("../../data/corpus/slim.jsonl.zst")),
    ("star", include_bytes!("../../data/corpus/star.jsonl.zst")),
];

/// `$TINYLLAMA_CACHE`, else `$XDG_CACHE_HOME/tinyllama`, else `~/.cache/tinyllama`.
pub fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("TINYLLAMA_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("tinyllama");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/tinyllama"))
        .unwrap_or_else(|| PathBuf::from(".cache/tinyllama"))
}

/// The prepared built-in corpus (train + validation shards of `slim` and `star`).
pub fn prepared(tok: &Tokenizer, val_fraction: f64, progress: bool) -> Result<PathBuf> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut feed = |b: &[u8]| b.iter().for_each(|&x| h = (h ^ x as u64).wrapping_mul(0x100_0000_01b3));
    for (n, bytes) in FILES {
        feed(n.as_bytes());
        feed(bytes);
    }
    feed(tok.to_json().unwrap_or_default().as_bytes());
    feed(&val_fraction.to_le_bytes());
    feed(&CHUNK_SIZE.to_le_bytes());
    let dir = cache_root().join(format!("builtin-corpus-{h:016x}"));
    // one preparation at a time in this process; other processes use their own temp directory
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join("done").exists() {
        return Ok(dir);
    }
    let tmp = cache_root().join(format!(".builtin-corpus-{h:016x}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("src")).with_context(|| format!("cannot create {}", tmp.display()))?;
    if progress {
        eprintln!("tokenizing the built-in corpus (once) into {}", dir.display());
    }
    for (name, bytes) in FILES {
        let src = tmp.join("src").join(format!("{name}.jsonl.zst"));
        std::fs::write(&src, bytes)?;
        let opts = PrepareOptions {
            inputs: vec![src],
            output: tmp.clone(),
            prefix: name.to_string(),
            chunk_size: CHUNK_SIZE,
            val_fraction,
            shard: (0, 1),
            strict: true,
            progress,
            replace: false,
        };
        prepare(&opts, tok)?;
    }
    std::fs::remove_dir_all(tmp.join("src"))?;
    std::fs::write(tmp.join("done"), b"")?;
    if std::fs::rename(&tmp, &dir).is_err() {
        // another process finished first
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(dir)
}
