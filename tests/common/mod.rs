//! What the integration tests share: the rule for a reference that is not there.
#![allow(dead_code)]

pub mod server;

use std::path::{Path, PathBuf};

/// True when every reference must be present (CI sets `TINYLLAMA_REQUIRE_FIXTURES=1`).
pub fn fixtures_required() -> bool {
    std::env::var("TINYLLAMA_REQUIRE_FIXTURES").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A test that cannot run here says so on stderr, and fails where references are required.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    assert!(!fixtures_required(), "{test} skipped with TINYLLAMA_REQUIRE_FIXTURES set: {why}");
}

/// `path` when it exists; otherwise `None` after [`skip`].
pub fn require<'a>(test: &str, path: &'a Path) -> Option<&'a Path> {
    if path.exists() {
        return Some(path);
    }
    skip(test, &format!("{} not found (no ../shared beside the repository)", path.display()));
    None
}

/// A Python that imports `modules` (comma-separated): the project's environment
/// (`TINYLLAMA_PYENV`, default ~/.cache/tinyllama/pyenv, made by scripts/setup_python.sh), else
/// `python3` on the PATH; `None` after [`skip`] when neither has them.
pub fn python(test: &str, modules: &str) -> Option<PathBuf> {
    let env = std::env::var("TINYLLAMA_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/tinyllama/pyenv"));
    for py in [env.join("bin/python"), "python3".into()] {
        let ok = std::process::Command::new(&py).args(["-c", &format!("import {modules}")]).output();
        if ok.is_ok_and(|o| o.status.success()) {
            return Some(py);
        }
    }
    skip(test, &format!("no Python with {modules} at {} or on the PATH (run scripts/setup_python.sh)", env.display()));
    None
}

/// A fresh temporary directory for one test.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tinyllama-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A random `tiny-10m` (context 256, the Llama-2 tokenizer) as a Hugging Face directory `d/tiny`,
/// written by the CLI itself.
pub fn tiny_model(d: &Path) -> PathBuf {
    let m = d.join("tiny");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tinyllama"))
        .args(["bench", "generate", "--preset", "tiny-10m", "--write-hf"])
        .arg(&m)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    m
}

/// The vendored TRL fixture (`tests/fixtures/trl`, made by `tests/fixtures/make_trl_fixture.py`).
pub fn trl_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trl")
}

/// The TRL fixture's small model copied to `dst`, with the repository's Llama-2 tokenizer.json
/// beside it (the fixture does not keep a second copy).
pub fn trl_model(dst: &Path) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(trl_fixture().join("model")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tokenizer/llama2/tokenizer.json");
    std::fs::copy(tok, dst.join("tokenizer.json")).unwrap();
    dst.to_path_buf()
}

/// `tinyllama ARGS` with `stdin` fed to it; its output, whatever the exit status.
pub fn tinyllama(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut c = Command::new(env!("CARGO_BIN_EXE_tinyllama"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

pub fn stdout_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
