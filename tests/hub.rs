//! Models by Hub id against a stand-in Hub on 127.0.0.1 (no test reaches the network): by name =
//! by directory (safetensors and GGUF repositories), huggingface_hub's cache layout, a cut
//! download resumed, a killed one resumed from its `.incomplete` file, corrupted bytes refused,
//! concurrent downloads of one file, offline use and an unreachable Hub, each error's message;
//! and Python's huggingface_hub reading our cache and writing one we read (skipped loudly
//! without it).
#![cfg(all(feature = "serve", feature = "hub"))]

mod common;
mod stand_in_hub;

use stand_in_hub::StandInHub;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tinyllama");

/// The `tinyllama` command with a clean Hub environment: `cache` as HF_HUB_CACHE, `endpoint` as
/// HF_ENDPOINT, HF_HOME (and so the token file) inside the test's folder.
fn cmd(home: &Path, endpoint: &str) -> Command {
    let mut c = Command::new(BIN);
    for v in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN_PATH",
        "HUGGINGFACE_HUB_CACHE",
    ] {
        c.env_remove(v);
    }
    c.env("HF_HOME", home.join("hf-home")).env("HF_HUB_CACHE", home.join("cache")).env("HF_ENDPOINT", endpoint);
    c
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Fails with exit code 1 (never a panic's 101), its stderr holding every one of `says`.
fn refused(o: Output, says: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    for s in says {
        assert!(err.contains(s), "stderr lacks {s:?}: {err}");
    }
    err
}

fn generate(mut c: Command, model: &str, extra: &[&str]) -> Output {
    c.args(["generate", "-m", model, "-p", "Once upon a time", "--max-new-tokens", "12", "--temperature", "0"])
        .args(extra)
        .output()
        .unwrap()
}

/// The files of a model directory, as (repository path, bytes).
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

fn publish(hub: &StandInHub, repo: &str, files: &[(String, Vec<u8>)]) -> String {
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    hub.publish(repo, &refs)
}

/// A tiny model directory and the same files plus what a real repository also holds.
fn tiny_repo(d: &Path) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let dir = common::tiny_model(d);
    let mut files = files_of(&dir);
    files.push(("README.md".into(), b"# tiny\n".to_vec()));
    files.push(("pytorch_model.bin".into(), vec![7u8; 1000]));
    files.push((".gitattributes".into(), b"*.safetensors filter=lfs\n".to_vec()));
    (dir, files)
}

#[test]
fn a_model_by_name_equals_the_model_by_directory_and_is_cached_as_huggingface_hub_caches() {
    let d = common::tmpdir("hub-by-name");
    let hub = StandInHub::start();
    let (dir, files) = tiny_repo(&d);
    let commit = publish(&hub, "tiny-org/tiny-model", &files);
    let by_dir = ok(generate(cmd(&d, &hub.url), dir.to_str().unwrap(), &[]));
    let run = generate(cmd(&d, &hub.url), "tiny-org/tiny-model", &[]);
    let err = String::from_utf8_lossy(&run.stderr).to_string();
    assert_eq!(ok(run), by_dir);
    assert!(
        err.contains("tiny-org/tiny-model: Hugging Face Hub, main = ") && err.contains("files downloaded"),
        "{err}"
    );

    // huggingface_hub's layout: refs/main, relative links into blobs/ named by ETag
    let repo = d.join("cache/models--tiny-org--tiny-model");
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), commit);
    let snap = repo.join("snapshots").join(&commit);
    let mut got: Vec<String> =
        std::fs::read_dir(&snap).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    got.sort();
    let mut want: Vec<String> = files_of(&dir).into_iter().map(|(n, _)| n).collect();
    want.sort();
    assert_eq!(got, want, "only what the model needs (no README.md, pytorch_model.bin)");
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let link = std::fs::read_link(snap.join("model.safetensors")).unwrap();
    assert_eq!(link, PathBuf::from("../../blobs").join(StandInHub::lfs_etag(&weights)));
    assert_eq!(std::fs::read(snap.join("model.safetensors")).unwrap(), weights);
    assert!(d.join("cache/.locks/models--tiny-org--tiny-model").is_dir());
    assert!(d.join("cache/CACHEDIR.TAG").is_file());

    // cached: one API call, no file fetched again
    hub.clear_log();
    let again = generate(cmd(&d, &hub.url), "tiny-org/tiny-model", &[]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("(cached)"));
    assert_eq!(ok(again), by_dir);
    let paths: Vec<String> = hub.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/api/models/tiny-org/tiny-model/revision/main".to_string()]);

    // a local path wins over a Hub id of the same name, and says so
    std::fs::create_dir_all(d.join("tiny-org")).unwrap();
    std::os::unix::fs::symlink(&dir, d.join("tiny-org/tiny-model")).unwrap();
    let mut local = cmd(&d, "http://127.0.0.1:9");
    local.current_dir(&d);
    let o = generate(local, "tiny-org/tiny-model", &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("the local path (not the Hub repository"));
    assert_eq!(ok(o), by_dir);

    // --revision: an older commit by hash, a branch moved on
    let mut changed = files.clone();
    changed.push(("generation_config.json".into(), br#"{"bos_token_id": 1}"#.to_vec()));
    let newer = publish(&hub, "tiny-org/tiny-model", &changed);
    assert_ne!(newer, commit);
    let o = ok(cmd(&d, &hub.url)
        .args(["download", "tiny-org/tiny-model", "--revision", &commit, "--quiet"])
        .output()
        .unwrap());
    assert_eq!(PathBuf::from(o.trim()), snap);
    ok(cmd(&d, &hub.url).args(["download", "tiny-org/tiny-model", "--quiet"]).output().unwrap());
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), newer);
    assert!(repo.join("snapshots").join(&newer).join("generation_config.json").exists());
    // the unchanged weights were not fetched twice: one blob per distinct file
    let blobs = std::fs::read_dir(repo.join("blobs")).unwrap().count();
    assert_eq!(blobs, want.len() + 1);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_gguf_repository_gives_the_file_its_tag_names() {
    let d = common::tmpdir("hub-gguf");
    let hub = StandInHub::start();
    let mut gguf_files = Vec::new();
    for q in ["q8_0", "q4_0"] {
        let f = d.join(format!("tiny.{}.gguf", q.to_uppercase()));
        let o = Command::new(BIN)
            .args(["bench", "generate", "--preset", "tiny-10m", "--dtype", q, "--write-gguf"])
            .arg(&f)
            .output()
            .unwrap();
        ok(o);
        gguf_files.push((f.file_name().unwrap().to_string_lossy().to_string(), std::fs::read(&f).unwrap()));
    }
    gguf_files.push(("README.md".into(), b"GGUF".to_vec()));
    publish(&hub, "tiny-org/tiny-GGUF", &gguf_files);
    let local = ok(generate(cmd(&d, &hub.url), d.join("tiny.Q8_0.gguf").to_str().unwrap(), &[]));
    assert_eq!(ok(generate(cmd(&d, &hub.url), "tiny-org/tiny-GGUF:Q8_0", &[])), local);
    assert_eq!(ok(generate(cmd(&d, &hub.url), "tiny-org/tiny-GGUF", &["--hf-file", "tiny.Q8_0.gguf"])), local);
    let q4 = ok(generate(cmd(&d, &hub.url), d.join("tiny.Q4_0.gguf").to_str().unwrap(), &[]));
    assert_eq!(ok(generate(cmd(&d, &hub.url), "tiny-org/tiny-GGUF:q4_0", &[])), q4);
    let snap_files = std::fs::read_dir(d.join("cache/models--tiny-org--tiny-GGUF/snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::read_dir(snap_files).unwrap().count(), 2, "the two files asked for, nothing else");
    refused(
        generate(cmd(&d, &hub.url), "tiny-org/tiny-GGUF:Q6_K", &[]),
        &["no GGUF file tagged Q6_K", "tiny.Q4_0.gguf"],
    );
    refused(generate(cmd(&d, &hub.url), "tiny-org/tiny-GGUF", &[]), &["several GGUF files", ":TAG or --hf-file"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_cut_or_killed_download_resumes_with_range() {
    let d = common::tmpdir("hub-resume");
    let hub = StandInHub::start();
    let (dir, files) = tiny_repo(&d);
    publish(&hub, "tiny-org/tiny-model", &files);
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let etag = StandInHub::lfs_etag(&weights);
    // the connection breaks after a third of the file: the same run goes on from there
    hub.cut_next_download(&weights, weights.len() / 3);
    let o = cmd(&d, &hub.url).args(["download", "tiny-org/tiny-model"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let snap = PathBuf::from(ok(o).trim());
    assert!(err.contains("model.safetensors") && err.contains("resuming"), "{err}");
    assert_eq!(std::fs::read(snap.join("model.safetensors")).unwrap(), weights);
    let gets: Vec<_> =
        hub.requests().into_iter().filter(|r| r.path == format!("/cdn/{etag}") && r.method == "GET").collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    // from what arrived before the break (at most the third sent)
    let from: usize =
        gets[1].range.as_deref().unwrap().strip_prefix("bytes=").unwrap().trim_end_matches('-').parse().unwrap();
    assert!(from > 0 && from <= weights.len() / 3, "{from}");

    // a killed process leaves blobs/<etag>.incomplete: the next run asks for the rest only
    let d2 = d.join("second");
    std::fs::create_dir_all(d2.join("cache/models--tiny-org--tiny-model/blobs")).unwrap();
    let part = d2.join(format!("cache/models--tiny-org--tiny-model/blobs/{etag}.incomplete"));
    std::fs::write(&part, &weights[..1000]).unwrap();
    hub.clear_log();
    let snap = PathBuf::from(
        ok(cmd(&d2, &hub.url).args(["download", "tiny-org/tiny-model", "--quiet"]).output().unwrap()).trim(),
    );
    assert_eq!(std::fs::read(snap.join("model.safetensors")).unwrap(), weights);
    assert!(!part.exists());
    let ranges: Vec<_> = hub.requests().into_iter().filter(|r| r.path.starts_with("/cdn/")).map(|r| r.range).collect();
    assert_eq!(ranges, vec![Some("bytes=1000-".to_string())]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn corrupted_bytes_are_refused_and_nothing_is_linked() {
    let d = common::tmpdir("hub-corrupt");
    let hub = StandInHub::start();
    let (dir, files) = tiny_repo(&d);
    let commit = publish(&hub, "tiny-org/tiny-model", &files);
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    hub.corrupt(&weights);
    let err = refused(
        cmd(&d, &hub.url).args(["download", "tiny-org/tiny-model", "--quiet"]).output().unwrap(),
        &["model.safetensors", "is corrupt", "sha256", &StandInHub::lfs_etag(&weights)],
    );
    let repo = d.join("cache/models--tiny-org--tiny-model");
    assert!(!repo.join("snapshots").join(&commit).join("model.safetensors").exists(), "{err}");
    let blobs: Vec<_> = std::fs::read_dir(repo.join("blobs")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!blobs.iter().any(|b| b.to_string_lossy().starts_with(&StandInHub::lfs_etag(&weights))), "{blobs:?}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn processes_downloading_the_same_file_wait_for_each_other() {
    let d = common::tmpdir("hub-concurrent");
    let hub = StandInHub::start();
    let (dir, files) = tiny_repo(&d);
    publish(&hub, "tiny-org/tiny-model", &files);
    hub.slow(std::time::Duration::from_millis(3));
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let spawn = || {
        cmd(&d, &hub.url)
            .args(["download", "tiny-org/tiny-model", "--quiet"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (ok(a.wait_with_output().unwrap()), ok(b.wait_with_output().unwrap()));
    assert_eq!(a, b);
    assert_eq!(std::fs::read(PathBuf::from(a.trim()).join("model.safetensors")).unwrap(), weights);
    let cdn_gets = hub.requests().into_iter().filter(|r| r.path.starts_with("/cdn/") && r.method == "GET").count();
    assert_eq!(cdn_gets, 1, "the second process found the blob the first one wrote");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_cached_model_runs_offline_and_with_the_hub_unreachable() {
    let d = common::tmpdir("hub-offline");
    let hub = StandInHub::start();
    let (dir, files) = tiny_repo(&d);
    publish(&hub, "tiny-org/tiny-model", &files);
    let by_dir = ok(generate(cmd(&d, &hub.url), dir.to_str().unwrap(), &[]));
    // nothing cached and no Hub: a clear error, before any model work
    let dead = "http://127.0.0.1:9";
    refused(
        generate(cmd(&d, dead), "tiny-org/tiny-model", &[]),
        &["cannot reach the Hub at http://127.0.0.1:9", "tiny-org/tiny-model", "not in the cache"],
    );
    let mut off = cmd(&d, &hub.url);
    off.env("HF_HUB_OFFLINE", "1");
    refused(generate(off, "tiny-org/tiny-model", &[]), &["HF_HUB_OFFLINE is set", "not in the cache"]);
    assert!(hub.requests().is_empty(), "offline makes no request");

    ok(cmd(&d, &hub.url).args(["download", "tiny-org/tiny-model", "--quiet"]).output().unwrap());
    hub.clear_log();
    let mut off = cmd(&d, &hub.url);
    off.env("HF_HUB_OFFLINE", "1");
    assert_eq!(ok(generate(off, "tiny-org/tiny-model", &[])), by_dir);
    assert_eq!(ok(generate(cmd(&d, &hub.url), "tiny-org/tiny-model", &["--offline"])), by_dir);
    assert!(hub.requests().is_empty(), "offline makes no request");
    let o = generate(cmd(&d, dead), "tiny-org/tiny-model", &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("the Hub did not answer"));
    assert_eq!(ok(o), by_dir);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn hub_errors_name_the_repository_and_say_what_to_do() {
    let d = common::tmpdir("hub-errors");
    let hub = StandInHub::start();
    let (_, files) = tiny_repo(&d);
    publish(&hub, "tiny-org/gated-model", &files);
    hub.gate("tiny-org/gated-model", "hf_secret");
    publish(
        &hub,
        "tiny-org/weights-bin",
        &[("config.json".into(), b"{}".to_vec()), ("pytorch_model.bin".into(), vec![1; 10])],
    );
    let dl = |c: &mut Command, args: &[&str]| c.arg("download").args(args).arg("--quiet").output().unwrap();
    refused(dl(&mut cmd(&d, &hub.url), &["nobody/nothing"]), &["repository nobody/nothing was not found", "HF_TOKEN"]);
    refused(dl(&mut cmd(&d, &hub.url), &["tiny-org/gated-model"]), &["tiny-org/gated-model is gated", "HF_TOKEN"]);
    refused(dl(cmd(&d, &hub.url).env("HF_TOKEN", "hf_wrong"), &["tiny-org/gated-model"]), &["is gated"]);
    ok(dl(cmd(&d, &hub.url).env("HF_TOKEN", "hf_secret"), &["tiny-org/gated-model"]));
    // the token file (HF_HOME/token), as `hf auth login` writes it; the CDN never sees it
    std::fs::create_dir_all(d.join("hf-home")).unwrap();
    std::fs::write(d.join("hf-home/token"), "hf_secret").unwrap();
    ok(dl(&mut cmd(&d, &hub.url), &["tiny-org/gated-model", "--revision", "main", "--include", "*.json"]));
    assert!(hub.requests().iter().filter(|r| r.path.starts_with("/cdn/")).all(|r| r.auth.is_none()));
    std::fs::remove_file(d.join("hf-home/token")).unwrap();
    refused(
        dl(&mut cmd(&d, &hub.url), &["tiny-org/gated-model", "--revision", "v9"]),
        &["tiny-org/gated-model is gated"],
    );
    publish(&hub, "tiny-org/open-model", &files);
    refused(
        dl(&mut cmd(&d, &hub.url), &["tiny-org/open-model", "--revision", "v9"]),
        &["tiny-org/open-model has no revision v9"],
    );
    refused(
        dl(&mut cmd(&d, &hub.url), &["tiny-org/open-model", "--hf-file", "x.gguf"]),
        &["tiny-org/open-model has no file x.gguf"],
    );
    refused(dl(&mut cmd(&d, &hub.url), &["tiny-org/weights-bin"]), &["only PyTorch .bin weights"]);
    refused(dl(&mut cmd(&d, &hub.url), &["not a repo"]), &["not a Hub repository id"]);
    // a name that is neither: both said
    refused(
        generate(cmd(&d, &hub.url), "nobody/nothing", &[]),
        &["nobody/nothing is neither a local path nor a model on the Hub"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// Python's huggingface_hub, against the same stand-in Hub: what it downloads runs here offline,
/// and it finds what we downloaded (`local_files_only`, `scan_cache_dir` without warnings).
#[test]
fn python_huggingface_hub_and_tinyllama_share_the_cache() {
    let Some(py) = common::python("python_huggingface_hub_and_tinyllama_share_the_cache", "huggingface_hub") else {
        return;
    };
    let d = common::tmpdir("hub-python");
    let hub = StandInHub::start();
    let (dir, files) = tiny_repo(&d);
    let commit = publish(&hub, "tiny-org/tiny-model", &files);
    let by_dir = ok(generate(cmd(&d, &hub.url), dir.to_str().unwrap(), &[]));
    let python = |cache: &Path, code: &str| -> String {
        let o = Command::new(&py)
            .args(["-c", code])
            .env("HF_HUB_CACHE", cache)
            .env("HF_HOME", d.join("hf-home"))
            .env("HF_ENDPOINT", &hub.url)
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .env("HF_HUB_DISABLE_XET", "1")
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap();
        assert!(o.status.success(), "python: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    // Python downloads; we run it from the cache with no Hub at all
    let py_cache = d.join("py-cache");
    let snap = python(
        &py_cache,
        "from huggingface_hub import snapshot_download\nprint(snapshot_download('tiny-org/tiny-model'))",
    );
    assert!(snap.trim().ends_with(&commit), "{snap}");
    let mut c = cmd(&d, "http://127.0.0.1:9");
    c.env("HF_HUB_CACHE", &py_cache).env("HF_HUB_OFFLINE", "1");
    assert_eq!(ok(generate(c, "tiny-org/tiny-model", &[])), by_dir);

    // we download; Python finds every file without the network, and its cache scan is clean
    let ours = ok(cmd(&d, &hub.url).args(["download", "tiny-org/tiny-model", "--quiet"]).output().unwrap());
    let code = r#"
import json, os
from huggingface_hub import snapshot_download, hf_hub_download, scan_cache_dir
snap = snapshot_download('tiny-org/tiny-model', local_files_only=True)
cfg = hf_hub_download('tiny-org/tiny-model', 'config.json', local_files_only=True)
info = scan_cache_dir()
repos = [(r.repo_id, sorted(f.file_name for rev in r.revisions for f in rev.files), [rev.commit_hash for rev in r.revisions], r.size_on_disk) for r in info.repos]
print(json.dumps({"snap": snap, "config": open(cfg).read(), "warnings": [str(w) for w in info.warnings], "repos": repos}))
"#;
    let v: serde_json::Value = serde_json::from_str(&python(&d.join("cache"), code)).unwrap();
    assert_eq!(v["snap"].as_str().unwrap(), ours.trim());
    assert_eq!(v["config"].as_str().unwrap(), std::fs::read_to_string(dir.join("config.json")).unwrap());
    assert_eq!(v["warnings"], serde_json::json!([]));
    let names: Vec<String> = files_of(&dir).into_iter().map(|(n, _)| n).collect();
    let total: u64 = files_of(&dir).iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(v["repos"], serde_json::json!([["tiny-org/tiny-model", names, [commit], total]]));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A listing naming a file outside the snapshot (`../…`) is refused before anything is written there.
#[test]
fn a_file_name_leaving_the_snapshot_is_refused() {
    let d = common::tmpdir("hub-traversal");
    let hub = StandInHub::start();
    publish(
        &hub,
        "tiny-org/evil",
        &[("config.json".into(), b"{}".to_vec()), ("../../../escaped.json".into(), b"x".to_vec())],
    );
    refused(
        cmd(&d, &hub.url).args(["download", "tiny-org/evil", "--include", "*", "--quiet"]).output().unwrap(),
        &["not a path inside the repository"],
    );
    assert!(!d.join("cache/escaped.json").exists() && !d.join("escaped.json").exists());
    std::fs::remove_dir_all(&d).unwrap();
}
