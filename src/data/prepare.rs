//! `tinyllama prepare`: corpora into packed token shards, as TinyLlama's `prepare_slimpajama.py`
//! and `prepare_starcoder.py` do, but in one parallel pass with bounded memory.
//!
//! Inputs: SlimPajama-style `*.jsonl` / `*.jsonl.zst` (field `text`; rows of the
//! `RedPajamaGithub` set are skipped, as TinyLlama does, since Starcoderdata covers code),
//! Starcoderdata-style `*.parquet` (column `content`), and any other file as one plain-text
//! document (so a directory of source files is a corpus). Each document is tokenized without BOS
//! and followed by EOS, then packed into `{split}_{prefix}_{i}_{counter:010}.bin` shards
//! (split `train` or `validation`, `i` the `--shard` index), the last one unpadded.

use super::shard::{PackedShardWriter, TokenDtype};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

/// TinyLlama's shard size: 1024 blocks of 2049 tokens.
pub const DEFAULT_CHUNK_SIZE: usize = 2049 * 1024;

#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub prefix: String,
    pub chunk_size: usize,
    pub val_fraction: f64,
    /// `(i, n)`: this run takes every n-th input file starting at i.
    pub shard: (usize, usize),
    /// Make a malformed row an error instead of a counted skip.
    pub strict: bool,
    pub progress: bool,
    /// Delete the shards and summary an earlier run wrote for this prefix and shard (without it,
    /// their presence is an error: the loader would read old and new shards together).
    pub replace: bool,
}

/// Files an earlier `prepare` of this prefix and machine shard left in `dir`.
pub fn earlier_output(dir: &Path, prefix: &str, shard_i: usize) -> Vec<PathBuf> {
    let starts = [format!("train_{prefix}_{shard_i}_"), format!("validation_{prefix}_{shard_i}_")];
    let summary = format!("prepare_{prefix}_{shard_i}.json");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                    n == summary || (n.ends_with(".bin") && starts.iter().any(|s| n.starts_with(s.as_str())))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputKind {
    Jsonl,
    JsonlZst,
    Parquet,
    Text,
}

fn kind_of(path: &Path) -> InputKind {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".jsonl.zst") || name.ends_with(".json.zst") {
        InputKind::JsonlZst
    } else if name.ends_with(".jsonl") {
        InputKind::Jsonl
    } else if name.ends_with(".parquet") {
        InputKind::Parquet
    } else {
        InputKind::Text
    }
}

/// The input files: files as given, directories walked recursively (hidden entries skipped),
/// sorted so that every machine sees the same list.
pub fn discover_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let meta = std::fs::metadata(p).with_context(|| format!("input {} not found", p.display()))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(p).with_context(|| format!("cannot list {}", p.display()))? {
                let e = e?;
                if !e.file_name().to_string_lossy().starts_with('.') {
                    walk(&e.path(), out)?;
                }
            }
        } else {
            out.push(p.to_path_buf());
        }
        Ok(())
    }
    let mut out = vec![];
    for p in paths {
        walk(p, &mut out)?;
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PrepareStats {
    pub files: usize,
    pub documents: u64,
    pub input_bytes: u64,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub train_documents: u64,
    pub val_documents: u64,
    pub skipped_redpajama_github: u64,
    pub skipped_malformed: u64,
    pub skipped_no_text: u64,
    pub skipped_invalid_utf8: u64,
    /// Where the first skip happened (file:line), to go and look.
    pub first_skip: Option<String>,
    pub shard_files: Vec<String>,
    pub seconds: f64,
}

impl PrepareStats {
    fn skip(&mut self, what: &str, at: String) {
        match what {
            "malformed" => self.skipped_malformed += 1,
            "no_text" => self.skipped_no_text += 1,
            _ => self.skipped_invalid_utf8 += 1,
        }
        if self.first_skip.is_none() {
            self.first_skip = Some(format!("{at} ({what})"));
        }
    }
}

/// Calls `f` with each document of `path`.
fn read_documents(path: &Path, strict: bool, stats: &mut PrepareStats, f: &mut dyn FnMut(String)) -> Result<()> {
    let open = || std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()));
    match kind_of(path) {
        InputKind::Text => {
            let mut bytes = vec![];
            open()?.read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
            stats.input_bytes += bytes.len() as u64;
            match String::from_utf8(bytes) {
                Ok(s) => f(s),
                Err(e) if strict => bail!("{}: invalid UTF-8 at byte {}", path.display(), e.utf8_error().valid_up_to()),
                Err(_) => stats.skip("invalid_utf8", path.display().to_string()),
            }
        }
        InputKind::Jsonl => read_jsonl(path, BufReader::new(open()?), strict, stats, f)?,
        InputKind::JsonlZst => {
            let dec = zstd::stream::read::Decoder::new(open()?)
                .with_context(|| format!("{}: not a zstd stream", path.display()))?;
            read_jsonl(path, BufReader::with_capacity(1 << 20, dec), strict, stats, f)?
        }
        InputKind::Parquet => read_parquet(path, stats, f)?,
    }
    Ok(())
}

fn read_jsonl(
    path: &Path,
    mut r: impl BufRead,
    strict: bool,
    stats: &mut PrepareStats,
    f: &mut dyn FnMut(String),
) -> Result<()> {
    let mut line = vec![];
    let mut n = 0u64;
    loop {
        line.clear();
        let got =
            r.read_until(b'\n', &mut line).with_context(|| format!("{}: read error after line {n}", path.display()))?;
        if got == 0 {
            return Ok(());
        }
        n += 1;
        stats.input_bytes += got as u64;
        let at = || format!("{}:{n}", path.display());
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let v: serde_json::Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(e) => {
                // serde_json reports invalid UTF-8 inside strings as a syntax error too
                let what = if std::str::from_utf8(&line).is_err() { "invalid_utf8" } else { "malformed" };
                if strict {
                    bail!("{}: {} JSON line: {e}", at(), what.replace('_', " "));
                }
                stats.skip(what, at());
                continue;
            }
        };
        if v.pointer("/meta/redpajama_set_name").and_then(|s| s.as_str()) == Some("RedPajamaGithub") {
            stats.skipped_redpajama_github += 1;
            continue;
        }
        match v.get("text").and_then(|t| t.as_str()) {
            Some(t) => f(t.to_string()),
            None if strict => bail!("{}: no string field `text`", at()),
            None => stats.skip("no_text", at()),
        }
    }
}

#[cfg(feature = "parquet")]
fn read_parquet(path: &Path, stats: &mut PrepareStats, f: &mut dyn FnMut(String)) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    stats.input_bytes += file.metadata()?.len();
    let reader =
        SerializedFileReader::new(file).with_context(|| format!("{}: not a readable parquet file", path.display()))?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let col = (0..schema.num_columns())
        .find(|&i| schema.column(i).name() == "content")
        .with_context(|| format!("{}: no column `content`", path.display()))?;
    let projection = parquet::schema::types::Type::group_type_builder("schema")
        .with_fields(vec![schema.column(col).self_type_ptr()])
        .build()?;
    let rows =
        reader.get_row_iter(Some(projection)).with_context(|| format!("{}: cannot read rows", path.display()))?;
    for (i, row) in rows.enumerate() {
        let row = row.with_context(|| format!("{}: row {i} unreadable", path.display()))?;
        match row.get_column_iter().next().map(|(_, v)| v) {
            Some(Field::Str(s)) => f(s.clone()),
            Some(Field::Null) | None => stats.skip("no_text", format!("{} row {i}", path.display())),
            Some(other) => bail!("{}: row {i}: `content` is not a string ({other})", path.display()),
        }
    }
    Ok(())
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(path: &Path, _: &mut PrepareStats, _: &mut dyn FnMut(String)) -> Result<()> {
    bail!("{}: this build has no parquet support (build with `--features parquet`)", path.display())
}

/// The documents of `inputs` (same rules as [`prepare`]), up to about `max_bytes` of text: the
/// corpus a tokenizer is trained on.
pub fn read_corpus(inputs: &[PathBuf], max_bytes: usize) -> Result<(Vec<String>, PrepareStats)> {
    let mut stats = PrepareStats::default();
    let mut docs = vec![];
    let mut bytes = 0usize;
    for path in discover_inputs(inputs)? {
        if bytes >= max_bytes {
            break;
        }
        read_documents(&path, false, &mut stats, &mut |d| {
            if bytes < max_bytes {
                bytes += d.len();
                docs.push(d);
            }
        })?;
        stats.files += 1;
    }
    stats.documents = docs.len() as u64;
    Ok((docs, stats))
}

/// Runs the whole preparation; returns the statistics (also written as
/// `prepare_{prefix}_{i}.json` in the output directory).
pub fn prepare(opts: &PrepareOptions, tok: &Tokenizer) -> Result<PrepareStats> {
    let (shard_i, shard_n) = opts.shard;
    check_options(opts)?;
    let all = discover_inputs(&opts.inputs)?;
    ensure!(!all.is_empty(), "no input files found in {:?}", opts.inputs);
    let files: Vec<PathBuf> = all.into_iter().skip(shard_i).step_by(shard_n).collect();
    remove_earlier_output(opts)?;
    let dtype = TokenDtype::for_vocab(tok.vocab_size());
    let name = |split: &str| format!("{split}_{}_{shard_i}", opts.prefix);
    let mut train = PackedShardWriter::new(&opts.output, &name("train"), opts.chunk_size, dtype)?;
    let mut val = PackedShardWriter::new(&opts.output, &name("validation"), opts.chunk_size, dtype)?;
    let t0 = Instant::now();
    let bar = progress_bar(opts.progress, files.len());
    // a reader thread streams documents in batches; this thread tokenizes each batch on all cores
    // and appends it in order, so output is the same for any thread count
    let (rx, reader) = spawn_reader(files, opts.strict);
    let mut stats = PrepareStats::default();
    let mut doc_index = 0u64;
    for msg in rx {
        let docs = match msg? {
            Msg::FileDone(part) => {
                merge(&mut stats, *part);
                continue;
            }
            Msg::Docs(d) => d,
        };
        let refs: Vec<&str> = docs.iter().map(|s| s.as_str()).collect();
        for ids in tok.encode_batch(&refs)? {
            let is_val =
                opts.val_fraction > 0.0 && Rng::fork(0x0005_EED0_F0A1, doc_index).uniform() < opts.val_fraction;
            let w = if is_val { &mut val } else { &mut train };
            w.push(&ids)?;
            w.push(&[tok.eos_id])?;
            if is_val {
                stats.val_documents += 1;
            } else {
                stats.train_documents += 1;
            }
            doc_index += 1;
        }
        stats.documents = doc_index;
        if let Some(b) = &bar {
            b.set_position(stats.files as u64);
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            b.set_message(format!(
                "{} docs, {} tokens, {:.1} MB/s",
                stats.documents,
                train.tokens_written + val.tokens_written,
                stats.input_bytes as f64 / 1e6 / secs
            ));
        }
    }
    reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
    ensure!(
        doc_index > 0,
        "no document written: every row of the {} input file(s) was skipped{}",
        stats.files,
        stats.first_skip.as_ref().map(|s| format!(" (first: {s})")).unwrap_or_default()
    );
    let (tf, tt) = train.finish()?;
    let (vf, vt) = val.finish()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    stats.train_tokens = tt;
    stats.val_tokens = vt;
    stats.shard_files = tf.iter().chain(&vf).map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    stats.seconds = t0.elapsed().as_secs_f64();
    write_summary(opts, tok, &stats)?;
    Ok(stats)
}

/// `--shard`, `--val-fraction` and `--prefix` as they must be.
fn check_options(opts: &PrepareOptions) -> Result<()> {
    let (shard_i, shard_n) = opts.shard;
    ensure!(shard_n >= 1 && shard_i < shard_n, "--shard {shard_i}/{shard_n}: need 0 <= i < n");
    ensure!((0.0..1.0).contains(&opts.val_fraction), "--val-fraction must be in [0, 1)");
    ensure!(
        !opts.prefix.is_empty() && opts.prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "--prefix `{}`: use letters, digits and '-' (it becomes part of file names)",
        opts.prefix
    );
    Ok(())
}

/// An earlier run's shards of this prefix and shard in the output: refused, or with `--replace`
/// exactly those files deleted (the loader would read them together with the new ones).
fn remove_earlier_output(opts: &PrepareOptions) -> Result<()> {
    let shard_i = opts.shard.0;
    let stale = earlier_output(&opts.output, &opts.prefix, shard_i);
    if stale.is_empty() {
        return Ok(());
    }
    ensure!(
        opts.replace,
        "{} already holds {} file(s) of prefix `{}`, shard {shard_i}, from an earlier run (first: {}): the loader \
         would read them together with the new ones. Pass --replace to delete exactly those files, or use \
         another --output or --prefix",
        opts.output.display(),
        stale.len(),
        opts.prefix,
        stale[0].display()
    );
    for f in &stale {
        std::fs::remove_file(f).with_context(|| format!("cannot remove {}", f.display()))?;
    }
    if opts.progress {
        eprintln!("--replace: removed {} file(s) of the earlier run from {}", stale.len(), opts.output.display());
    }
    Ok(())
}

/// What the reader thread sends: a batch of documents, or a file's counts once it is read.
enum Msg {
    Docs(Vec<String>),
    FileDone(Box<PrepareStats>),
}

/// Reads `files` in order on a thread of its own, sending documents in batches of ~8 MB (an error
/// ends the stream).
fn spawn_reader(
    files: Vec<PathBuf>,
    strict: bool,
) -> (std::sync::mpsc::Receiver<Result<Msg>>, std::thread::JoinHandle<()>) {
    let (tx, rx) = sync_channel::<Result<Msg>>(2);
    let reader = std::thread::spawn(move || {
        let mut batch = vec![];
        let mut bytes = 0usize;
        for path in &files {
            let mut stats = PrepareStats { files: 1, ..Default::default() };
            let mut closed = false;
            let r = read_documents(path, strict, &mut stats, &mut |doc| {
                bytes += doc.len();
                batch.push(doc);
                if bytes >= 8 << 20 {
                    closed |= tx.send(Ok(Msg::Docs(std::mem::take(&mut batch)))).is_err();
                    bytes = 0;
                }
            });
            if let Err(e) = r {
                let _ = tx.send(Err(e));
                return;
            }
            if closed || tx.send(Ok(Msg::FileDone(Box::new(stats)))).is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Msg::Docs(batch)));
    });
    (rx, reader)
}

/// `prepare_{prefix}_{shard}.json`: the options and the counts, beside the shards.
fn write_summary(opts: &PrepareOptions, tok: &Tokenizer, stats: &PrepareStats) -> Result<()> {
    let (shard_i, shard_n) = opts.shard;
    let summary = serde_json::json!({
        "prefix": opts.prefix, "shard": [shard_i, shard_n], "chunk_size": opts.chunk_size,
        "val_fraction": opts.val_fraction, "vocab_size": tok.vocab_size(), "eos_id": tok.eos_id,
        "stats": stats,
    });
    crate::files::write_json(&opts.output.join(format!("prepare_{}_{shard_i}.json", opts.prefix)), &summary)
}

fn merge(a: &mut PrepareStats, b: PrepareStats) {
    a.files += b.files;
    a.input_bytes += b.input_bytes;
    a.skipped_redpajama_github += b.skipped_redpajama_github;
    a.skipped_malformed += b.skipped_malformed;
    a.skipped_no_text += b.skipped_no_text;
    a.skipped_invalid_utf8 += b.skipped_invalid_utf8;
    if a.first_skip.is_none() {
        a.first_skip = b.first_skip;
    }
}

fn progress_bar(on: bool, files: usize) -> Option<indicatif::ProgressBar> {
    if !on {
        return None;
    }
    let b = indicatif::ProgressBar::new(files as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] files {pos}/{len} {wide_msg}").unwrap(),
    );
    b.enable_steady_tick(std::time::Duration::from_millis(200));
    Some(b)
}
