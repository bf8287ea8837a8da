//! A stand-in Hugging Face Hub on 127.0.0.1, serving what the real one serves to huggingface_hub
//! and to `tinyllama`: `GET /api/models/{repo}/revision/{rev}` (`sha`, `siblings`),
//! `GET /api/models/{repo}/tree/{rev}`, and `HEAD`/`GET /{repo}/resolve/{rev}/{file}` — a git
//! file through a relative redirect to `/api/resolve-cache/…` (`ETag` = its git sha1), an LFS
//! file through an absolute redirect to a CDN (`X-Linked-Etag` = its sha256, `X-Linked-Size`),
//! `X-Repo-Commit` on both; the CDN answers `Range` with 206; errors are 401/404 with
//! `X-Error-Code` as the Hub sends them. Faults on demand: a download cut short, corrupted bytes,
//! a slow CDN. Every request is logged for the tests to check.
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Response, StatusCode};
use axum::routing::{any, get};
use axum::Router;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub auth: Option<String>,
}

struct File {
    bytes: Arc<Vec<u8>>,
    git_sha1: String,
    /// An LFS file's sha256 (safetensors, gguf, bin, model files are LFS on the Hub).
    lfs_sha256: Option<String>,
}

struct RepoState {
    branches: HashMap<String, String>,
    commits: HashMap<String, BTreeMap<String, File>>,
    gated: bool,
}

#[derive(Default)]
struct Faults {
    /// sha256 → bytes after which the next GET of that blob breaks off.
    cut_after: HashMap<String, usize>,
    /// sha256s served with a byte changed.
    corrupt: HashSet<String>,
    /// A pause between 64 KiB chunks of every CDN answer.
    slow: Option<Duration>,
}

#[derive(Default)]
struct Hub {
    repos: Mutex<HashMap<String, RepoState>>,
    token: Mutex<Option<String>>,
    log: Mutex<Vec<Logged>>,
    faults: Mutex<Faults>,
    base: Mutex<String>,
}

pub struct StandInHub {
    pub url: String,
    hub: Arc<Hub>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn git_sha1(bytes: &[u8]) -> String {
    let mut c = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    c.update(format!("blob {}\0", bytes.len()).as_bytes());
    c.update(bytes);
    hex(c.finish().as_ref())
}

fn is_lfs(name: &str) -> bool {
    [".safetensors", ".gguf", ".bin", ".model"].iter().any(|e| name.ends_with(e))
}

impl StandInHub {
    pub fn start() -> StandInHub {
        let hub = Arc::new(Hub::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // the CDN on another host name, as the Hub's is: no token goes there
        *hub.base.lock().unwrap() = url.replace("127.0.0.1", "localhost");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let state = hub.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let app = Router::new()
                    .route("/api/models/{org}/{name}/revision/{*rev}", get(revision))
                    .route("/api/models/{org}/{name}/tree/{*rev}", get(tree))
                    .route("/api/resolve-cache/models/{org}/{name}/{commit}/{*file}", any(resolve_cache))
                    .route("/cdn/{sha}", any(cdn))
                    .route("/{org}/{name}/resolve/{rev}/{*file}", any(resolve))
                    .with_state(state);
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        rx.await.ok();
                    })
                    .await
                    .unwrap();
            });
        });
        StandInHub { url, hub, stop: Some(tx), thread: Some(thread) }
    }

    /// Adds (or moves `main` of) a repository to a new commit holding `files`; returns the commit.
    pub fn publish(&self, repo: &str, files: &[(&str, Vec<u8>)]) -> String {
        let mut listing = BTreeMap::new();
        for (name, bytes) in files {
            let lfs_sha256 = is_lfs(name).then(|| sha256(bytes));
            listing.insert(
                name.to_string(),
                File { git_sha1: git_sha1(bytes), lfs_sha256, bytes: Arc::new(bytes.clone()) },
            );
        }
        let mut key = String::from(repo);
        for (n, f) in &listing {
            key.push_str(n);
            key.push_str(&f.git_sha1);
        }
        let mut repos = self.hub.repos.lock().unwrap();
        key.push_str(&repos.get(repo).map_or(0, |r| r.commits.len()).to_string());
        let commit = git_sha1(key.as_bytes());
        let r = repos.entry(repo.to_string()).or_insert_with(|| RepoState {
            branches: HashMap::new(),
            commits: HashMap::new(),
            gated: false,
        });
        r.commits.insert(commit.clone(), listing);
        r.branches.insert("main".into(), commit.clone());
        commit
    }

    pub fn gate(&self, repo: &str, token: &str) {
        self.hub.repos.lock().unwrap().get_mut(repo).unwrap().gated = true;
        *self.hub.token.lock().unwrap() = Some(token.to_string());
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.hub.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.hub.log.lock().unwrap().clear();
    }

    /// The sha256 (LFS ETag) of a published file's bytes.
    pub fn lfs_etag(bytes: &[u8]) -> String {
        sha256(bytes)
    }

    pub fn cut_next_download(&self, bytes: &[u8], after: usize) {
        self.hub.faults.lock().unwrap().cut_after.insert(sha256(bytes), after);
    }

    pub fn corrupt(&self, bytes: &[u8]) {
        self.hub.faults.lock().unwrap().corrupt.insert(sha256(bytes));
    }

    pub fn slow(&self, pause: Duration) {
        self.hub.faults.lock().unwrap().slow = Some(pause);
    }
}

impl Drop for StandInHub {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn log(hub: &Hub, method: &Method, path: &str, headers: &HeaderMap) {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    hub.log.lock().unwrap().push(Logged {
        method: method.to_string(),
        path: path.into(),
        range: h("range"),
        auth: h("authorization"),
    });
}

fn error(status: StatusCode, code: &str, message: &str, commit: Option<&str>) -> Response<Body> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-error-code", code)
        .header("x-error-message", message);
    if let Some(c) = commit {
        r = r.header("x-repo-commit", c);
    }
    r.body(Body::from(serde_json::json!({ "error": message }).to_string())).unwrap()
}

/// The repository's commit for `rev`, or the error the Hub sends (a response: its size does not matter here).
#[allow(clippy::result_large_err)]
fn commit_of(hub: &Hub, repo: &str, rev: &str, headers: &HeaderMap) -> Result<String, Response<Body>> {
    let repos = hub.repos.lock().unwrap();
    let authed = headers.get("authorization").and_then(|v| v.to_str().ok());
    let Some(r) = repos.get(repo) else {
        let status = if authed.is_some() { StatusCode::NOT_FOUND } else { StatusCode::UNAUTHORIZED };
        return Err(error(status, "RepoNotFound", "Repository not found", None));
    };
    if r.gated {
        let want = hub.token.lock().unwrap().as_ref().map(|t| format!("Bearer {t}"));
        if authed.is_none() || authed.map(str::to_string) != want {
            let msg = format!("Access to model {repo} is restricted. You must have access to it and be authenticated to access it. Please log in.");
            return Err(error(StatusCode::UNAUTHORIZED, "GatedRepo", &msg, None));
        }
    }
    let commit = r.branches.get(rev).cloned().or_else(|| r.commits.contains_key(rev).then(|| rev.to_string()));
    commit.ok_or_else(|| error(StatusCode::NOT_FOUND, "RevisionNotFound", &format!("Invalid rev id: {rev}"), None))
}

/// Logs the request, then resolves `rev` of `org/name` as the Hub would (or its error).
#[allow(clippy::result_large_err)]
fn enter(
    hub: &Hub,
    method: &Method,
    headers: &HeaderMap,
    repo: &str,
    rev: &str,
    path: String,
) -> Result<String, Response<Body>> {
    log(hub, method, &path, headers);
    commit_of(hub, repo, rev, headers)
}

fn json_response(v: serde_json::Value) -> Response<Body> {
    Response::builder().header("content-type", "application/json").body(Body::from(v.to_string())).unwrap()
}

async fn revision(
    State(hub): State<Arc<Hub>>,
    Path((org, name, rev)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response<Body> {
    let repo = format!("{org}/{name}");
    let commit = match enter(&hub, &method, &headers, &repo, &rev, format!("/api/models/{repo}/revision/{rev}")) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let repos = hub.repos.lock().unwrap();
    let r = &repos[&repo];
    let siblings: Vec<_> = r.commits[&commit].keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
    let body = serde_json::json!({
        "_id": commit[..24], "id": repo, "modelId": repo, "sha": commit, "private": false,
        "gated": if r.gated { serde_json::json!("manual") } else { serde_json::json!(false) },
        "disabled": false, "downloads": 0, "likes": 0, "tags": [], "library_name": "transformers",
        "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z", "siblings": siblings,
    });
    json_response(body)
}

async fn tree(
    State(hub): State<Arc<Hub>>,
    Path((org, name, rev)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response<Body> {
    let repo = format!("{org}/{name}");
    let commit = match enter(&hub, &method, &headers, &repo, &rev, format!("/api/models/{repo}/tree/{rev}")) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let repos = hub.repos.lock().unwrap();
    let entries: Vec<_> = repos[&repo].commits[&commit]
        .iter()
        .map(|(p, f)| {
            let mut e = serde_json::json!({ "type": "file", "oid": f.git_sha1, "size": f.bytes.len(), "path": p });
            if let Some(s) = &f.lfs_sha256 {
                e["lfs"] = serde_json::json!({ "oid": s, "size": f.bytes.len(), "pointerSize": 134 });
            }
            e
        })
        .collect();
    json_response(serde_json::Value::from(entries))
}

async fn resolve(
    State(hub): State<Arc<Hub>>,
    Path((org, name, rev, file)): Path<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response<Body> {
    let repo = format!("{org}/{name}");
    let commit = match enter(&hub, &method, &headers, &repo, &rev, format!("/{repo}/resolve/{rev}/{file}")) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let repos = hub.repos.lock().unwrap();
    let Some(f) = repos[&repo].commits[&commit].get(&file) else {
        return error(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            &format!("{file} does not exist on \"{rev}\""),
            Some(&commit),
        );
    };
    let b = Response::builder().header("x-repo-commit", &commit).header("etag", format!("\"{}\"", f.git_sha1));
    match &f.lfs_sha256 {
        Some(sha) => b
            .status(StatusCode::FOUND)
            .header("location", format!("{}/cdn/{sha}", hub.base.lock().unwrap()))
            .header("x-linked-etag", format!("\"{sha}\""))
            .header("x-linked-size", f.bytes.len())
            .body(Body::empty())
            .unwrap(),
        None => b
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header("location", format!("/api/resolve-cache/models/{repo}/{commit}/{file}"))
            .body(Body::empty())
            .unwrap(),
    }
}

async fn resolve_cache(
    State(hub): State<Arc<Hub>>,
    Path((org, name, commit, file)): Path<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response<Body> {
    let repo = format!("{org}/{name}");
    if let Err(e) =
        enter(&hub, &method, &headers, &repo, &commit, format!("/api/resolve-cache/models/{repo}/{commit}/{file}"))
    {
        return e;
    }
    let repos = hub.repos.lock().unwrap();
    let Some(f) = repos[&repo].commits[&commit].get(&file) else {
        return error(StatusCode::NOT_FOUND, "EntryNotFound", "not found", Some(&commit));
    };
    let b = Response::builder()
        .header("x-repo-commit", &commit)
        .header("etag", format!("\"{}\"", f.git_sha1))
        .header("content-length", f.bytes.len())
        .header("accept-ranges", "bytes");
    let body = if method == Method::HEAD { Body::empty() } else { Body::from(f.bytes.as_ref().clone()) };
    b.body(body).unwrap()
}

async fn cdn(
    State(hub): State<Arc<Hub>>,
    Path(sha): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response<Body> {
    log(&hub, &method, &format!("/cdn/{sha}"), &headers);
    let bytes = {
        let repos = hub.repos.lock().unwrap();
        let found = repos
            .values()
            .flat_map(|r| r.commits.values())
            .flat_map(|c| c.values())
            .find(|f| f.lfs_sha256.as_deref() == Some(sha.as_str()));
        match found {
            Some(f) => f.bytes.clone(),
            None => return Response::builder().status(404).body(Body::empty()).unwrap(),
        }
    };
    let (cut, corrupt, slow) = {
        let mut faults = hub.faults.lock().unwrap();
        let cut = if method == Method::GET { faults.cut_after.remove(&sha) } else { None };
        (cut, faults.corrupt.contains(&sha), faults.slow)
    };
    let total = bytes.len();
    let start = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<usize>().ok());
    let mut b = Response::builder().header("accept-ranges", "bytes").header("etag", format!("\"{sha}\""));
    let start = match start {
        Some(s) if s >= total => {
            return b.status(416).header("content-range", format!("bytes */{total}")).body(Body::empty()).unwrap();
        }
        Some(s) => {
            b = b.status(206).header("content-range", format!("bytes {s}-{}/{total}", total - 1));
            s
        }
        None => 0,
    };
    b = b.header("content-length", total - start);
    if method == Method::HEAD {
        return b.body(Body::empty()).unwrap();
    }
    let mut data = bytes[start..].to_vec();
    if corrupt && !data.is_empty() {
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
    }
    let send = cut.map_or(data.len(), |c| c.min(data.len()));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = data[..send].chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    let broken = cut.is_some();
    let stream =
        futures_util::stream::unfold((chunks.into_iter(), broken, slow), |(mut it, broken, slow)| async move {
            match it.next() {
                Some(c) => {
                    if let Some(p) = slow {
                        tokio::time::sleep(p).await;
                    }
                    Some((c, (it, broken, slow)))
                }
                None if broken => Some((Err(std::io::Error::other("cut")), (it, false, slow))),
                None => None,
            }
        });
    b.body(Body::from_stream(stream)).unwrap()
}
