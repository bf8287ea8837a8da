//! The chat page at `/`, in a real browser: headless Chromium driven by selenium
//! (tests/reference/webui_check.py; skipped loudly without chromium, chromedriver or selenium).
//! A reply streamed into the page equals the API's answer to the same conversation and settings;
//! Stop (button or Esc) ends a reply and frees the server's sequence; markup and script in a
//! message or a reply render as text and run nothing; a reload keeps the conversation; the API
//! key flow. Without a browser: the page's headers (content types, CSP, ETag and 304), and
//! `--no-webui`.
#![cfg(feature = "serve")]

mod common;

use common::server::{http, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The page driver's Python, when Chromium, chromedriver and selenium are all here.
fn browser(test: &str) -> Option<PathBuf> {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(tool).exists() {
            common::skip(test, &format!("{tool} not found (apt-get install chromium chromium-driver)"));
            return None;
        }
    }
    common::python(test, "selenium")
}

fn drive(py: &Path, srv: &Server, scenario: &str, arg: Option<&str>) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/webui_check.py");
    let mut c = std::process::Command::new(py);
    c.arg(script).arg(format!("http://{}", srv.addr)).arg(scenario).args(arg);
    let o = c.output().unwrap();
    assert!(o.status.success(), "webui_check.py {scenario}: {}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    // a 401 from /props is how the page learns that it needs a key; anything else is an error
    let errors: Vec<&Value> = v["console"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            !e.as_str().unwrap().contains("/props - Failed to load resource: the server responded with a status of 401")
        })
        .collect();
    assert!(errors.is_empty(), "errors in the browser's console: {errors:?}");
    v
}

/// A random tiny model with a long context (so that a reply runs long enough to be stopped).
fn long_context_model(d: &Path) -> PathBuf {
    let tiny = common::tiny_model(d);
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(tiny.join("config.json")).unwrap()).unwrap();
    cfg["max_position_embeddings"] = json!(8192);
    std::fs::write(d.join("long.json"), cfg.to_string()).unwrap();
    let out = d.join("long");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tinyllama"))
        .args(["bench", "generate", "--config"])
        .arg(d.join("long.json"))
        .arg("--write-hf")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

/// Status and headers of a GET (raw socket: the body is not needed).
fn get_head(srv: &Server, path: &str, extra: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&srv.addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", srv.addr);
    for (k, v) in extra {
        req += &format!("{k}: {v}\r\n");
    }
    s.write_all(format!("{req}\r\n").as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let head = raw.split("\r\n\r\n").next().unwrap().to_string();
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), head)
}

#[test]
fn the_page_is_served_with_its_types_a_csp_and_revalidation_and_can_be_turned_off() {
    let d = common::tmpdir("webui-headers");
    let model = common::tiny_model(&d);
    let srv = Server::start(&model, &[]);
    for (path, kind) in [("/", "text/html"), ("/webui/app.js", "text/javascript"), ("/webui/style.css", "text/css")] {
        let (status, head) = get_head(&srv, path, &[]);
        assert_eq!(status, 200, "{path}: {head}");
        assert!(header(&head, "content-type").unwrap().starts_with(kind), "{head}");
        let csp = header(&head, "content-security-policy").unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&head, "cache-control"), Some("no-cache"));
        let etag = header(&head, "etag").unwrap().to_string();
        assert_eq!(get_head(&srv, path, &[("If-None-Match", &etag)]).0, 304);
        assert_eq!(get_head(&srv, path, &[("If-None-Match", "\"other\"")]).0, 200);
    }
    let (status, props) = http(&srv.addr, "GET", "/props", &[], b"");
    assert_eq!(status, 200);
    let p: Value = serde_json::from_str(&props).unwrap();
    assert_eq!((p["model"].as_str(), p["n_ctx"].as_u64()), (Some("tiny"), Some(256)));
    drop(srv);
    // the model's generation_config.json sets the page's defaults
    std::fs::write(
        model.join("generation_config.json"),
        r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 200}"#,
    )
    .unwrap();
    let srv = Server::start(&model, &["--api-key", "k1"]);
    assert_eq!(http(&srv.addr, "GET", "/props", &[], b"").0, 401);
    let (_, props) = http(&srv.addr, "GET", "/props", &[("Authorization", "Bearer k1")], b"");
    let p: Value = serde_json::from_str(&props).unwrap();
    assert_eq!(p["default_generation_settings"], json!({"temperature": 0.6, "top_p": 0.9, "max_tokens": 200}));
    assert_eq!(p["api_key_required"], json!(true));
    drop(srv);
    let srv = Server::start(&model, &["--no-webui"]);
    assert_eq!(get_head(&srv, "/", &[]).0, 404);
    assert_eq!(http(&srv.addr, "GET", "/props", &[], b"").0, 404);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_reply_streamed_into_the_page_equals_the_apis_and_survives_a_reload() {
    let Some(py) = browser("a_reply_streamed_into_the_page_equals_the_apis_and_survives_a_reload") else { return };
    let d = common::tmpdir("webui-send");
    let srv = Server::start(&common::tiny_model(&d), &[]);
    let v = drive(&py, &srv, "send", None);
    let (_, api) = srv.post(
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "temperature": 0, "top_p": 0.95, "max_tokens": 24}),
    );
    let answer = api["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!answer.is_empty());
    assert_eq!(
        v["stored"],
        json!([{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": answer}])
    );
    let shown = json!([{"role": "user", "text": "Hello there"}, {"role": "assistant", "text": answer}]);
    if !answer.contains(['*', '`', '#', '\n']) {
        assert_eq!(v["shown"], shown, "the reply as the page shows it");
    }
    assert_eq!(v["after_reload"], v["shown"], "a reload keeps the conversation");
    assert_eq!(v["after_new_chat"], json!([]));
    assert_eq!(v["conversations"], json!(2));
    let prompt_tokens = api["usage"]["prompt_tokens"].as_u64().unwrap();
    let used = prompt_tokens + api["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(v["status"]["model-name"], json!("tiny"));
    assert_eq!(v["status"]["context-use"], json!(format!("context {used} / 256")));
    assert!(v["status"]["speed"].as_str().unwrap().ends_with("tokens/s"), "{v}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn stop_and_escape_end_a_reply_and_free_the_servers_sequence() {
    let Some(py) = browser("stop_and_escape_end_a_reply_and_free_the_servers_sequence") else { return };
    let d = common::tmpdir("webui-stop");
    let srv = Server::start(&long_context_model(&d), &[]);
    let v = drive(&py, &srv, "stop", None);
    for how in ["button", "escape"] {
        let r = &v[how];
        assert_eq!(r["running_while_streaming"], json!(1), "{how}: {r}");
        assert_eq!(r["running_after"], json!(0), "{how}: the server freed the sequence: {r}");
        assert_eq!(r["stopped"], json!(true), "{how}: {r}");
        assert_eq!(r["length"], r["length_later"], "{how}: nothing arrives after Stop: {r}");
        assert!(r["shown"].as_str().unwrap().ends_with("(stopped)"), "{r}");
        assert!(r["length"].as_u64().unwrap() < 8000, "{how}: the reply was stopped before the context filled: {r}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn markup_and_script_in_messages_render_as_text_and_run_nothing() {
    let Some(py) = browser("markup_and_script_in_messages_render_as_text_and_run_nothing") else { return };
    let d = common::tmpdir("webui-xss");
    let srv = Server::start(&common::tiny_model(&d), &[]);
    let v = drive(&py, &srv, "xss", None);
    let clean = json!({"elements": [], "pwned": null});
    assert_eq!(v["after_send"], clean);
    assert_eq!(v["after_reload"], clean);
    let user = v["user_text"].as_str().unwrap();
    assert!(
        user.contains(r#"<img src=x onerror="window.__pwned=1">"#)
            && user.contains("<script>window.__pwned=2</script>"),
        "{user}"
    );
    assert!(user.contains("[click](javascript:window.__pwned=3)"), "a link stays text: {user}");
    let reply = v["assistant_text"].as_str().unwrap();
    assert!(
        reply.contains("<script>window.__pwned=2</script>") && reply.contains("<img src=y onerror=window.__pwned=5>"),
        "{reply}"
    );
    assert_eq!(v["code_blocks"], json!(["<script>window.__pwned=4</script>"]));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn with_an_api_key_the_page_asks_for_it_and_sends_it_as_a_bearer_token() {
    let Some(py) = browser("with_an_api_key_the_page_asks_for_it_and_sends_it_as_a_bearer_token") else { return };
    let d = common::tmpdir("webui-key");
    let srv = Server::start(&common::tiny_model(&d), &["--api-key", "sekrit-key-123"]);
    let v = drive(&py, &srv, "apikey", Some("sekrit-key-123"));
    assert_eq!(v["form_shown"], json!(true));
    assert!(v["error_before"].as_str().unwrap().contains("needs an API key"), "{v}");
    assert!(v["error_wrong"].as_str().unwrap().contains("refused that API key"), "{v}");
    assert_eq!((v["error_right"].as_str(), v["error_after"].as_str()), (Some(""), Some("")));
    assert!(!v["reply"].as_str().unwrap().is_empty());
    for u in v["urls"].as_array().unwrap() {
        assert!(!u.as_str().unwrap().contains("sekrit"), "the key in a URL: {u}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
