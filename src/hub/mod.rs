//! Models by Hugging Face Hub id: `org/name` (a model directory), `org/name:Q4_0` or `--hf-file`
//! (one file of a GGUF repository, as llama.cpp's `-hf`), at `--revision` (a branch, tag or
//! commit). Files live in huggingface_hub's own cache (`cache.rs`), so a model Python downloaded
//! runs here without the network, and Python finds what we downloaded. `settings.rs` reads the
//! `HF_*` variables as huggingface_hub does; `select.rs` chooses the files a model needs;
//! `client.rs` and `download.rs` (feature `hub`) talk to the Hub. Offline (`HF_HUB_OFFLINE=1`,
//! `--offline`), or when the Hub does not answer, a cached snapshot is used.
//!
//! The client is a small one over `ureq` with rustls, rather than the `hf-hub` crate: hf-hub 0.5
//! reads only `HF_HOME` and `HF_ENDPOINT`, and 1.x reads no variable and does not resume a download.

pub mod cache;
#[cfg(feature = "hub")]
mod client;
#[cfg(feature = "hub")]
mod download;
pub mod select;
pub mod settings;

use anyhow::{bail, Context, Result};
use cache::RepoCache;
pub use settings::Settings;
use std::path::{Path, PathBuf};

/// A repository named as `org/name`, with llama.cpp's `:TAG` for a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct HubId {
    pub repo: String,
    pub tag: Option<String>,
}

impl HubId {
    /// `org/name` or `org/name:TAG`, as the Hub spells repository ids (letters, digits, `-_.`);
    /// anything else (an absolute or `./` path, a path of three parts) is not a Hub id.
    pub fn parse(name: &str) -> Option<HubId> {
        let part = |p: &str| {
            !p.is_empty()
                && p.len() <= 96
                && !p.starts_with(['.', '-'])
                && !p.contains("..")
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let (repo, tag) = match name.split_once(':') {
            Some((r, t)) => (r, Some(t)),
            None => (name, None),
        };
        let (org, model) = repo.split_once('/')?;
        (part(org) && part(model) && tag.is_none_or(part))
            .then(|| HubId { repo: repo.to_string(), tag: tag.map(str::to_string) })
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}:{t}", self.repo),
            None => write!(f, "{}", self.repo),
        }
    }
}

/// How to fetch: `--revision`, `--hf-file`, `--offline`, and whether to draw progress bars.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    pub revision: String,
    pub hf_file: Option<String>,
    /// `--offline` (`HF_HUB_OFFLINE=1` is in `Settings`): the cache alone, no request.
    pub offline: bool,
    pub progress: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions { revision: "main".into(), hf_file: None, offline: false, progress: true }
    }
}

/// What to fetch of a repository.
pub enum Wanted<'a> {
    /// What a model needs (`select::plan`).
    Model,
    /// Every file matching one of these fnmatch patterns (`tinyllama download --include`).
    Matching(&'a [String]),
}

pub struct Fetched {
    /// The snapshot folder, or the GGUF file in it.
    pub path: PathBuf,
    pub commit: String,
    /// Where it came from, to be said to the user.
    pub note: String,
}

/// A model a user named: a local path if one exists (it always wins over a Hub id), else a Hub
/// id fetched into the cache. Returns the path to load and, for a Hub id or a name that is both,
/// a line saying which was used.
pub fn locate_model(name: &Path, o: &FetchOptions, s: &Settings) -> Result<(PathBuf, Option<String>)> {
    let id = name.to_str().and_then(HubId::parse);
    if name.exists() {
        let note = id.map(|id| format!("{}: the local path (not the Hub repository {id})", name.display()));
        return Ok((name.to_path_buf(), note));
    }
    let Some(id) = id else { return Ok((name.to_path_buf(), None)) };
    let f = fetch(&id, Wanted::Model, o, s)
        .with_context(|| format!("{} is neither a local path nor a model on the Hub", name.display()))?;
    Ok((f.path, Some(f.note)))
}

/// `id` at `o.revision` in the cache, fetched where needed.
pub fn fetch(id: &HubId, want: Wanted, o: &FetchOptions, s: &Settings) -> Result<Fetched> {
    let cache = RepoCache::new(&s.cache_dir, &id.repo);
    if s.offline || o.offline {
        let why = if o.offline { "--offline" } else { "HF_HUB_OFFLINE is set" };
        return from_cache(id, &want, o, &cache, why)
            .with_context(|| format!("{why}, so only the cache {} is read", s.cache_dir.display()));
    }
    #[cfg(feature = "hub")]
    return online(id, &want, o, s, &cache);
    #[cfg(not(feature = "hub"))]
    from_cache(id, &want, o, &cache, "built without the `hub` feature")
        .context("this build has no Hub client (feature `hub`): only cached models can be named")
}

/// Every file under a snapshot, as repository paths.
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.exists() {
                let rel = p.strip_prefix(dir).expect("under the snapshot").to_string_lossy().to_string();
                if !rel.rsplit('/').next().is_some_and(|n| n.starts_with('.') && n.ends_with(".link")) {
                    out.push(rel);
                }
            }
        }
    }
    out.sort();
    out
}

fn from_cache(id: &HubId, want: &Wanted, o: &FetchOptions, cache: &RepoCache, why: &str) -> Result<Fetched> {
    let commit = cache.commit_of(&o.revision).with_context(|| {
        format!("{} is not in the cache at revision {} ({} has no such ref)", id.repo, o.revision, cache.dir.display())
    })?;
    let snap = cache.snapshot(&commit);
    let files = snapshot_files(&snap);
    if files.is_empty() {
        bail!("{} has no cached files at revision {} ({} is empty or missing)", id.repo, o.revision, snap.display());
    }
    let short = &commit[..commit.len().min(12)];
    let note = |path: &Path| format!("{id}: the cached snapshot {short} ({why}) → {}", path.display());
    let path = match want {
        Wanted::Matching(_) => snap.clone(),
        Wanted::Model => match select::plan(&id.repo, &files, id.tag.as_deref(), o.hf_file.as_deref())
            .with_context(|| format!("in the cached snapshot {}", snap.display()))?
        {
            select::Plan::Gguf(f) => snap.join(f),
            select::Plan::Directory { index: Some(ix), .. } => {
                let text = std::fs::read_to_string(snap.join(&ix)).with_context(|| format!("cannot read {ix}"))?;
                for shard in select::shards_of_index(&text, &ix)? {
                    if !snap.join(&shard).exists() {
                        bail!(
                            "the cached snapshot {} lacks {shard}, which {ix} names: fetch it online",
                            snap.display()
                        );
                    }
                }
                snap.clone()
            }
            select::Plan::Directory { .. } => snap.clone(),
        },
    };
    Ok(Fetched { note: note(&path), path, commit })
}

/// Retries a metadata request on 429 and 5xx (four times, 1–8 s apart) and once when nothing answered.
#[cfg(feature = "hub")]
fn retried<T>(mut call: impl FnMut() -> Result<T, client::Failure>) -> Result<T, client::Failure> {
    let mut tries = 0u32;
    loop {
        match call() {
            Err(f) if f.is_transient() && tries < if matches!(f, client::Failure::Unreachable(_)) { 1 } else { 4 } => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_secs(1 << (tries - 1)));
            }
            r => return r,
        }
    }
}

#[cfg(feature = "hub")]
fn online(id: &HubId, want: &Wanted, o: &FetchOptions, s: &Settings, cache: &RepoCache) -> Result<Fetched> {
    let client = client::Client::new(s);
    let info = match client.repo_info(&id.repo, &o.revision) {
        Ok(info) => info,
        Err(f) => {
            // as huggingface_hub: a Hub that does not answer, or refuses, leaves the cache usable
            if f.code() != Some("RevisionNotFound") {
                if let Ok(found) = from_cache(id, want, o, cache, &format!("the Hub did not answer as hoped: {f}")) {
                    return Ok(found);
                }
            }
            match retried(|| client.repo_info(&id.repo, &o.revision)) {
                Ok(info) => info,
                Err(f) => return Err(explain(id, o, s, None, &f)),
            }
        }
    };
    // the one file a GGUF model is, else the snapshot folder
    let mut gguf: Option<String> = None;
    let files: Vec<String> = match want {
        Wanted::Matching(patterns) => {
            let m: Vec<String> =
                info.files.iter().filter(|f| patterns.iter().any(|p| select::glob_match(p, f))).cloned().collect();
            if m.is_empty() {
                bail!("no file of {} matches {} (its files: {})", id.repo, patterns.join(", "), info.files.join(", "));
            }
            m
        }
        Wanted::Model => match select::plan(&id.repo, &info.files, id.tag.as_deref(), o.hf_file.as_deref())? {
            select::Plan::Gguf(f) => {
                gguf = Some(f.clone());
                vec![f]
            }
            select::Plan::Directory { mut files, index } => {
                files.extend(index);
                files
            }
        },
    };
    cache.prepare()?;
    cache.write_ref(&o.revision, &info.sha)?;
    let mut downloaded = 0usize;
    let mut get = |file: &str| -> Result<PathBuf> {
        if !select::is_safe_repo_path(file) {
            bail!("{} lists a file named {file:?}, which is not a path inside the repository: refused", id.repo);
        }
        let pointer = cache.snapshot(&info.sha).join(file);
        if pointer.exists() {
            return Ok(pointer);
        }
        let meta =
            retried(|| client.file_meta(&id.repo, &info.sha, file)).map_err(|f| explain(id, o, s, Some(file), &f))?;
        downloaded += !cache.blob(&meta.etag).exists() as usize;
        download::fetch_file(&client, cache, &meta, &info.sha, file, o.progress)
    };
    for f in &files {
        let got = get(f)?;
        if f == select::SAFETENSORS_INDEX && matches!(want, Wanted::Model) {
            let text = std::fs::read_to_string(&got).with_context(|| format!("cannot read {}", got.display()))?;
            for shard in select::shards_of_index(&text, f)? {
                if !info.files.contains(&shard) {
                    bail!("{}: {f} names {shard}, which the repository does not hold", id.repo);
                }
                get(&shard)?;
            }
        }
    }
    let snap = cache.snapshot(&info.sha);
    let path = gguf.map_or(snap.clone(), |f| snap.join(f));
    let short = &info.sha[..info.sha.len().min(12)];
    let what = if downloaded == 0 { "cached".to_string() } else { format!("{downloaded} files downloaded") };
    let note = format!("{id}: Hugging Face Hub, {} = {short} ({what}) → {}", o.revision, path.display());
    Ok(Fetched { path, commit: info.sha, note })
}

/// A failure said with the repository (and file) it concerns, and what to do.
#[cfg(feature = "hub")]
fn explain(id: &HubId, o: &FetchOptions, s: &Settings, file: Option<&str>, f: &client::Failure) -> anyhow::Error {
    use client::Failure;
    let repo = &id.repo;
    let token_hint = if s.token.is_some() {
        "the token sent (HF_TOKEN or the token file) may lack access"
    } else {
        "set HF_TOKEN (or log in with `hf auth login`) if it is private or gated"
    };
    let status = match f {
        Failure::Status { status, .. } => *status,
        _ => 0,
    };
    match (f, f.code()) {
        (Failure::Unreachable(e), _) => anyhow::anyhow!(
            "cannot reach the Hub at {} ({e}), and {repo} (revision {}) is not in the cache {}: check the network or \
             HF_ENDPOINT, or run with a cache that holds it (HF_HUB_CACHE)",
            s.endpoint,
            o.revision,
            s.cache_dir.display()
        ),
        (_, Some("GatedRepo")) => anyhow::anyhow!(
            "{repo} is gated: accept its conditions at {}/{repo}, then set HF_TOKEN to a token of that account",
            s.endpoint
        ),
        (_, Some("RevisionNotFound")) => {
            anyhow::anyhow!("{repo} has no revision {} (a branch, tag or commit): check --revision", o.revision)
        }
        (_, Some("EntryNotFound")) => {
            anyhow::anyhow!("{repo} has no file {} at revision {}", file.unwrap_or("?"), o.revision)
        }
        (_, Some("RepoNotFound")) => {
            anyhow::anyhow!("repository {repo} was not found on {}: check the name; {token_hint}", s.endpoint)
        }
        _ if status == 401 || status == 403 => {
            anyhow::anyhow!("{} refused access to {repo} (HTTP {status}): {token_hint}", s.endpoint)
        }
        _ if status == 404 => match file {
            Some(file) => anyhow::anyhow!("{repo} has no file {file} at revision {} (HTTP 404)", o.revision),
            None => anyhow::anyhow!("repository {repo} was not found on {} (HTTP 404): check the name", s.endpoint),
        },
        _ => anyhow::anyhow!("{repo}{}: {f}", file.map(|f| format!(", {f}")).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_from_paths() {
        let id = |s: &str| HubId::parse(s);
        assert_eq!(id("TinyLlama/TinyLlama-1.1B-Chat-v1.0").unwrap().repo, "TinyLlama/TinyLlama-1.1B-Chat-v1.0");
        let g = id("TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF:Q4_K_M").unwrap();
        assert_eq!((g.repo.as_str(), g.tag.as_deref()), ("TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF", Some("Q4_K_M")));
        for not in ["/abs/path", "./a/b", "a/b/c", "model.gguf", "a/", "/b", "../x/y", "a/b:", "runs/x y"] {
            assert_eq!(id(not), None, "{not}");
        }
    }
}
