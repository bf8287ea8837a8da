//! The Hub's HTTP API, called as huggingface_hub calls it: `GET /api/models/{repo}/revision/{rev}`
//! (the commit and the file list), `HEAD /{repo}/resolve/{commit}/{file}` (the file's ETag, size
//! and download address; redirects on the Hub's host followed, one to another host — a CDN — taken
//! as the address), and a `GET` of that address, from a byte offset with `Range`. The token goes to the
//! Hub's own host only.

use super::settings::Settings;
use std::time::Duration;

/// A repository at a revision.
pub struct RepoInfo {
    /// The commit the revision is at.
    pub sha: String,
    /// Every file's path in the repository.
    pub files: Vec<String>,
}

/// What a `HEAD` of a file says.
#[derive(Clone, Debug)]
pub struct FileMeta {
    /// `X-Linked-Etag` (an LFS file's sha256) or `ETag` (a git blob's sha1), unquoted.
    pub etag: String,
    /// `X-Linked-Size` or `Content-Length`, where given.
    pub size: Option<u64>,
    /// Where to `GET` the bytes.
    pub url: String,
}

/// Why a request failed.
#[derive(Debug)]
pub enum Failure {
    /// No answer: the network is down, the host unknown, the connection refused, reset or timed out.
    Unreachable(String),
    /// The server answered with an error status (the Hub adds `X-Error-Code` and `X-Error-Message`).
    Status { status: u16, code: Option<String>, message: Option<String>, url: String },
    /// A malformed answer.
    Malformed(String),
}

impl Failure {
    /// Worth another try after a pause: no answer, 429, or a 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Unreachable(_) => true,
            Failure::Status { status, .. } => *status == 429 || *status >= 500,
            Failure::Malformed(_) => false,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            Failure::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(e) => write!(f, "no answer: {e}"),
            Failure::Status { status, code, message, url } => {
                write!(f, "HTTP {status}")?;
                if let Some(c) = code {
                    write!(f, " {c}")?;
                }
                if let Some(m) = message {
                    write!(f, " ({m})")?;
                }
                write!(f, " from {url}")
            }
            Failure::Malformed(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Failure {}

pub struct Client {
    /// Follows no redirect: `HEAD` reads them itself.
    no_redirects: ureq::Agent,
    /// Follows redirects, sending the token to the same host only.
    downloads: ureq::Agent,
    endpoint: String,
    token: Option<String>,
}

type Response = ureq::http::Response<ureq::Body>;

fn header(r: &Response, name: &str) -> Option<String> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..].find('/').map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// huggingface_hub's `quote(revision, safe="")` for the few characters a branch name may hold.
fn quote(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn quote_path(p: &str) -> String {
    p.split('/').map(quote).collect::<Vec<_>>().join("/")
}

impl Client {
    pub fn new(settings: &Settings) -> Client {
        let agent = |redirects: u32| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(redirects)
                .max_redirects_will_error(false)
                .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
                .user_agent(format!("tinyllama/{}", env!("CARGO_PKG_VERSION")))
                .accept_encoding("identity")
                .timeout_connect(Some(Duration::from_secs(10)))
                .timeout_recv_response(Some(Duration::from_secs(60)))
                .timeout_per_read(Some(Duration::from_secs(60)))
                .build()
                .into()
        };
        Client {
            no_redirects: agent(0),
            downloads: agent(10),
            endpoint: settings.endpoint.clone(),
            token: settings.token.clone(),
        }
    }

    /// The `Authorization` header for `url`: the token, to the Hub's own host only.
    fn auth(&self, url: &str) -> Option<String> {
        let same_host = origin(url) == origin(&self.endpoint);
        self.token.as_ref().filter(|_| same_host).map(|t| format!("Bearer {t}"))
    }

    fn call(&self, agent: &ureq::Agent, method: &str, url: &str, range_from: u64) -> Result<Response, Failure> {
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        if let Some(a) = self.auth(url) {
            req = req.header("Authorization", a);
        }
        if range_from > 0 {
            req = req.header("Range", format!("bytes={range_from}-"));
        }
        let req = req.body(()).map_err(|e| Failure::Malformed(format!("bad request address {url}: {e}")))?;
        agent.run(req).map_err(|e| Failure::Unreachable(e.to_string()))
    }

    fn failure(url: &str, r: &mut Response) -> Failure {
        let message = header(r, "x-error-message").or_else(|| {
            let body = r.body_mut().read_to_string().ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            v.get("error")?.as_str().map(str::to_string)
        });
        Failure::Status { status: r.status().as_u16(), code: header(r, "x-error-code"), message, url: url.to_string() }
    }

    /// The commit `revision` is at and the repository's files.
    pub fn repo_info(&self, repo: &str, revision: &str) -> Result<RepoInfo, Failure> {
        let url = format!("{}/api/models/{repo}/revision/{}", self.endpoint, quote(revision));
        let mut r = self.call(&self.no_redirects, "GET", &url, 0)?;
        if !r.status().is_success() {
            return Err(Self::failure(&url, &mut r));
        }
        let bad = |what: &str| Failure::Malformed(format!("{url} answered {what}; is HF_ENDPOINT a Hugging Face Hub?"));
        let text = r.body_mut().read_to_string().map_err(|e| Failure::Unreachable(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| bad("something that is not JSON"))?;
        let sha = v.get("sha").and_then(|s| s.as_str()).ok_or_else(|| bad("no commit (`sha`)"))?;
        let siblings = v.get("siblings").and_then(|s| s.as_array()).ok_or_else(|| bad("no file list (`siblings`)"))?;
        let files = siblings.iter().filter_map(|s| s.get("rfilename")?.as_str().map(str::to_string)).collect();
        Ok(RepoInfo { sha: sha.to_string(), files })
    }

    /// A file's ETag, size, commit and download address.
    pub fn file_meta(&self, repo: &str, commit: &str, file: &str) -> Result<FileMeta, Failure> {
        let mut url = format!("{}/{repo}/resolve/{}/{}", self.endpoint, quote(commit), quote_path(file));
        for _ in 0..10 {
            let mut r = self.call(&self.no_redirects, "HEAD", &url, 0)?;
            let status = r.status().as_u16();
            let location = header(&r, "location");
            if (300..400).contains(&status) {
                // a redirect on the Hub's host is followed; one elsewhere (a CDN) is the address
                match location {
                    Some(l) if l.starts_with('/') => {
                        url = format!("{}{l}", origin(&url));
                        continue;
                    }
                    Some(l) if origin(&l) == origin(&url) => {
                        url = l;
                        continue;
                    }
                    Some(l) => return Self::meta_from(&r, &url, l),
                    None => return Err(Failure::Malformed(format!("{url} redirects without a Location"))),
                }
            }
            if !r.status().is_success() {
                return Err(Self::failure(&url, &mut r));
            }
            let here = url.clone();
            return Self::meta_from(&r, &url, here);
        }
        Err(Failure::Malformed(format!("{url}: too many redirects")))
    }

    fn meta_from(r: &Response, url: &str, download: String) -> Result<FileMeta, Failure> {
        let etag = header(r, "x-linked-etag").or_else(|| header(r, "etag"));
        let etag = etag.map(|e| e.trim_start_matches("W/").trim_matches('"').to_string()).filter(|e| !e.is_empty());
        let etag =
            etag.ok_or_else(|| Failure::Malformed(format!("{url} gave no ETag, so the file cannot be cached")))?;
        if etag.contains(['/', '\\']) || etag.starts_with('.') {
            return Err(Failure::Malformed(format!("{url} gave an ETag that is not a file name: {etag}")));
        }
        if header(r, "x-repo-commit").is_none() {
            return Err(Failure::Malformed(format!("{url} gave no X-Repo-Commit: is HF_ENDPOINT a Hugging Face Hub?")));
        }
        let redirected = (300..400).contains(&r.status().as_u16());
        let size = header(r, "x-linked-size").or_else(|| (!redirected).then(|| header(r, "content-length")).flatten());
        let size = size.and_then(|s| s.parse().ok());
        Ok(FileMeta { etag, size, url: download })
    }

    /// `GET url`, from byte `from` on (`Range`); the response, redirects followed.
    pub fn get(&self, url: &str, from: u64) -> Result<Response, Failure> {
        let mut r = self.call(&self.downloads, "GET", url, from)?;
        let status = r.status().as_u16();
        if status == 200 || status == 206 || status == 416 {
            return Ok(r);
        }
        Err(Self::failure(url, &mut r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_quoting() {
        assert_eq!(origin("https://huggingface.co/api/x"), "https://huggingface.co");
        assert_eq!(origin("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(quote("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(quote_path("sub dir/a.json"), "sub%20dir/a.json");
    }
}
