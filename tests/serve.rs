//! `tinyllama serve` from outside, over real HTTP on localhost: answers equal to `tinyllama
//! generate`, batch-invariant results under 32 concurrent clients, streaming, stop strings,
//! logprobs, every bad input answered with the right 4xx and OpenAI's error object, disconnects,
//! SIGTERM; and the official `openai` Python client against it (skipped loudly without it).
#![cfg(feature = "serve")]

mod common;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tinyllama");

struct Server {
    child: Child,
    addr: String,
    log: std::sync::mpsc::Receiver<String>,
}

impl Server {
    fn start(model: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--port", "0", "--model"])
            .arg(model)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let t = Instant::now();
        let mut srv = Server { child, addr: String::new(), log: rx };
        while t.elapsed() < Duration::from_secs(60) {
            let Ok(line) = srv.log.recv_timeout(Duration::from_secs(60)) else { break };
            if let Some(rest) = line.strip_prefix("listening on http://") {
                srv.addr = rest.split_whitespace().next().unwrap().to_string();
                return srv;
            }
        }
        panic!("the server did not start"); // Drop kills and waits for it
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
        http(&self.addr, method, path, headers, body)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.request("POST", path, &[], body.to_string().as_bytes());
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; the status and the (de-chunked) body.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|h| h.0.eq_ignore_ascii_case("content-type")) {
        req += "Content-Type: application/json\r\n";
    }
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    let _ = s.write_all(body); // the server may answer (413) before reading it all
    let mut raw = vec![];
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    (status, if chunked { dechunk(rest) } else { rest.to_string() })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out += &rest[..n];
        s = &rest[n + 2..];
    }
    out
}

/// The `data:` payloads of a server-sent event stream.
fn sse(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

/// Text of a stream: completions' `text` or chat's `delta.content`, concatenated; and the last
/// chunk with a finish reason.
fn stream_text(events: &[String]) -> (String, Value) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let mut text = String::new();
    let mut last = Value::Null;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        if let Some(c) = v["choices"].get(0) {
            text += c["text"].as_str().or(c["delta"]["content"].as_str()).unwrap_or("");
            if !c["finish_reason"].is_null() {
                last = v.clone();
            }
        }
    }
    (text, last)
}

/// `tinyllama generate` of `prompt`: the continuation as printed (the prompt echoed first).
fn generate(model: &Path, prompt: &str, n: usize) -> String {
    let o = Command::new(BIN)
        .args(["generate", "--prompt", prompt, "--max-new-tokens", &n.to_string(), "--model"])
        .arg(model)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    out.strip_prefix(prompt).unwrap().strip_suffix('\n').unwrap().to_string()
}

const PROMPTS: [&str; 8] = [
    "It is a truth universally acknowledged",
    "def fibonacci(n):",
    "The capital of France is",
    "Emma Woodhouse, handsome, clever, and rich,",
    "import numpy as np\n",
    "Once upon a time",
    "1, 2, 3, 4,",
    "She said that",
];

#[test]
fn greedy_answers_equal_generate_streamed_or_not() {
    let d = common::tmpdir("serve-equal");
    let m = common::tiny_model(&d);
    let srv = Server::start(&m, &[]);
    for prompt in &PROMPTS[..3] {
        let want = generate(&m, prompt, 12);
        let body = json!({"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0});
        let (status, v) = srv.post("/v1/completions", &body);
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["choices"][0]["text"], want, "{prompt:?}");
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        let u = &v["usage"];
        assert_eq!(u["completion_tokens"], 12);
        assert_eq!(u["total_tokens"].as_u64(), Some(u["prompt_tokens"].as_u64().unwrap() + 12));
        // streamed: the same text, ending in [DONE]; no usage unless asked for
        // (usage_once_when_asked_and_penalties_as_generate_applies_them)
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let (status, text) = srv.request("POST", "/v1/completions", &[], sb.to_string().as_bytes());
        assert_eq!(status, 200);
        let (streamed, last) = stream_text(&sse(&text));
        assert_eq!(streamed, want);
        assert_eq!(
            (last["choices"][0]["finish_reason"].as_str(), last["usage"]["completion_tokens"].as_u64()),
            (Some("length"), None)
        );
    }
    // chat: the Zephyr prompt (no template in the model) generated by `generate` gives the same
    // tokens; streamed and not
    let zephyr = "<|system|>\nBe brief.</s>\n<|user|>\nHello!</s>\n<|assistant|>\n";
    let want = generate(&m, zephyr, 10);
    let body = json!({"model": "tiny", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}], "max_tokens": 10, "temperature": 0});
    let (status, v) = srv.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(content.trim_start(), want.trim_start());
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let (_, text) = srv.request("POST", "/v1/chat/completions", &[], sb.to_string().as_bytes());
    let events = sse(&text);
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(stream_text(&events).0, content);
    // with include_usage, a last chunk with no choices and the usage
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(
        (usage_chunk["choices"].as_array().map(Vec::len), usage_chunk["usage"]["completion_tokens"].as_u64()),
        (Some(0), Some(10))
    );
    std::fs::remove_dir_all(d).unwrap();
}

/// 32 clients at once, greedy and seeded sampling mixed: every answer equals the same request
/// sent alone, and the engine did batch them (fewer decode steps than tokens).
#[test]
fn concurrent_clients_get_the_answers_they_get_alone() {
    let d = common::tmpdir("serve-batch");
    let m = common::tiny_model(&d);
    let srv = Server::start(&m, &["--max-batch", "8", "--max-queue", "64"]);
    let bodies: Vec<Value> = (0..32)
        .map(|i| {
            let mut b = json!({"model": "tiny", "prompt": PROMPTS[i % 8], "max_tokens": 8 + i % 5});
            if i % 3 == 0 {
                b["temperature"] = json!(0);
            } else {
                b["temperature"] = json!(0.9);
                b["top_p"] = json!(0.95);
                b["seed"] = json!(1000 + i);
            }
            b
        })
        .collect();
    let alone: Vec<String> = bodies
        .iter()
        .map(|b| {
            let (status, v) = srv.post("/v1/completions", b);
            assert_eq!(status, 200, "{v}");
            v["choices"][0]["text"].as_str().unwrap().to_string()
        })
        .collect();
    let metrics = |srv: &Server| -> (u64, u64) {
        let (_, text) = srv.request("GET", "/metrics", &[], b"");
        let get = |k: &str| {
            text.lines().find_map(|l| l.strip_prefix(&format!("tinyllama_{k} "))).unwrap().parse::<u64>().unwrap()
        };
        (get("decode_steps_total"), get("generation_tokens_total"))
    };
    let (steps0, toks0) = metrics(&srv);
    let addr = srv.addr.clone();
    let together: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = bodies
            .iter()
            .map(|b| {
                let addr = addr.clone();
                s.spawn(move || {
                    let (status, text) = http(&addr, "POST", "/v1/completions", &[], b.to_string().as_bytes());
                    assert_eq!(status, 200, "{text}");
                    let v: Value = serde_json::from_str(&text).unwrap();
                    v["choices"][0]["text"].as_str().unwrap().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, b, "request {i} differs when batched");
    }
    let (steps1, toks1) = metrics(&srv);
    assert!(
        steps1 - steps0 < toks1 - toks0 - 32,
        "no batching: {} decode steps for {} tokens",
        steps1 - steps0,
        toks1 - toks0
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn stop_strings_and_logprobs() {
    let d = common::tmpdir("serve-stop");
    let m = common::tiny_model(&d);
    let srv = Server::start(&m, &[]);
    let prompt = PROMPTS[3];
    let full = generate(&m, prompt, 16);
    // a stop string in the middle of the greedy text: cut before it, finish_reason stop
    let cut = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    let stop: String = full[cut..].chars().take(3).collect();
    let at = full.find(&stop).unwrap();
    let body =
        json!({"model": "tiny", "prompt": prompt, "max_tokens": 16, "temperature": 0, "stop": [stop, "never-there"]});
    let (_, v) = srv.post("/v1/completions", &body);
    assert_eq!(v["choices"][0]["text"], full[..at], "stop {stop:?} in {full:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let (_, text) = srv.request("POST", "/v1/completions", &[], sb.to_string().as_bytes());
    let (streamed, last) = stream_text(&sse(&text));
    assert_eq!((streamed.as_str(), last["choices"][0]["finish_reason"].as_str()), (&full[..at], Some("stop")));
    // logprobs: the greedy token is the most likely one; the pieces spell the text
    let body = json!({"model": "tiny", "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 3});
    let (_, v) = srv.post("/v1/completions", &body);
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens.concat(), v["choices"][0]["text"].as_str().unwrap());
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert_eq!(top.len(), 3);
        let best = top.values().map(|x| x.as_f64().unwrap()).fold(f64::MIN, f64::max);
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        assert!((best - chosen).abs() < 1e-6 && chosen < 0.0, "token {i}: {chosen} vs best {best}");
    }
    let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(offsets[0], 0);
    std::fs::remove_dir_all(d).unwrap();
}

fn error_of(status_want: u16, (status, text): (u16, String)) -> Value {
    assert_eq!(status, status_want, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()) && v["error"]["type"].is_string(), "{v}");
    v
}

#[test]
fn bad_input_gets_the_right_4xx_and_the_server_keeps_serving() {
    let d = common::tmpdir("serve-bad");
    let m = common::tiny_model(&d);
    // a tokenizer that adds no BOS: an empty prompt has nothing to run from
    std::fs::write(m.join("tokenizer_config.json"), r#"{"add_bos_token": false}"#).unwrap();
    let srv = Server::start(&m, &["--api-key", "sekret", "--max-body-kib", "64"]);
    let auth = [("Authorization", "Bearer sekret")];
    let post = |path: &str, body: &str| srv.request("POST", path, &auth, body.as_bytes());
    let v = error_of(401, srv.request("POST", "/v1/completions", &[], br#"{"model": "tiny", "prompt": "x"}"#));
    assert_eq!(v["error"]["code"], "invalid_api_key");
    error_of(
        401,
        srv.request(
            "POST",
            "/v1/completions",
            &[("Authorization", "Bearer nope")],
            br#"{"model": "tiny", "prompt": "x"}"#,
        ),
    );
    error_of(401, srv.request("GET", "/v1/models", &[], b""));
    assert!(error_of(400, post("/v1/completions", r#"{"model": "tiny", "prompt": "#))["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    error_of(400, post("/v1/completions", r#"{"model": "tiny", "prompt": "x", "max_tokens": "many"}"#));
    let v = error_of(400, post("/v1/completions", r#"{"model": "tiny", "prompt": "x", "colour": "blue"}"#));
    assert_eq!(v["error"]["param"], "colour");
    for mt in ["0", "-1"] {
        let v = error_of(
            400,
            post("/v1/completions", &format!(r#"{{"model": "tiny", "prompt": "x", "max_tokens": {mt}}}"#)),
        );
        assert_eq!(v["error"]["param"], "max_tokens");
    }
    let v = error_of(404, post("/v1/completions", r#"{"model": "gpt-4", "prompt": "x"}"#));
    assert_eq!(v["error"]["code"], "model_not_found");
    let long = "word ".repeat(400); // > 256 tokens of context
    let v = error_of(400, post("/v1/completions", &json!({"model": "tiny", "prompt": long}).to_string()));
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["param"], "prompt", "a completion's prompt is `prompt`");
    let v = error_of(
        400,
        post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": [{"role": "user", "content": long}]}).to_string(),
        ),
    );
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["param"], "messages");
    error_of(
        400,
        post("/v1/chat/completions", r#"{"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}"#),
    );
    // a known endpoint with the wrong method: 405 with the error object
    for (method, path) in [("GET", "/v1/completions"), ("GET", "/v1/chat/completions"), ("POST", "/v1/models")] {
        let v = error_of(405, srv.request(method, path, &auth, b""));
        assert!(v["error"]["message"].as_str().unwrap().contains(path), "{v}");
    }
    for (body, param) in [
        (r#"{"model": "tiny", "prompt": "x", "frequency_penalty": 2.5}"#, "frequency_penalty"),
        (r#"{"model": "tiny", "prompt": "x", "repetition_penalty": -1}"#, "repetition_penalty"),
    ] {
        assert_eq!(error_of(400, post("/v1/completions", body))["error"]["param"], param);
    }
    error_of(400, post("/v1/completions", r#"{"model": "tiny", "prompt": [1, 99999999]}"#));
    error_of(413, post("/v1/completions", &json!({"model": "tiny", "prompt": "x".repeat(100_000)}).to_string()));
    error_of(404, srv.request("GET", "/v2/anything", &auth, b""));
    let v = error_of(400, post("/v1/completions", r#"{"model": "tiny", "prompt": ""}"#));
    assert_eq!(v["error"]["param"], "prompt", "{v}");
    // still serving
    let (status, text) = post("/v1/completions", r#"{"model": "tiny", "prompt": "Hi", "max_tokens": 3}"#);
    assert_eq!(status, 200, "{text}");
    let (status, text) = srv.request("GET", "/health", &[], b"");
    assert!(status == 200 && text.contains("ok"), "{text}");
    let (status, text) = srv.request("GET", "/v1/models", &auth, b"");
    assert!(status == 200 && text.contains("\"tiny\""), "{text}");
    std::fs::remove_dir_all(d).unwrap();
}

/// The usage chunk comes once, after the last token, and only with `stream_options.include_usage`
/// (OpenAI's stream); `frequency_penalty`, `presence_penalty` (OpenAI) and `repetition_penalty`
/// (vLLM, llama.cpp) are applied: greedy answers with a penalty equal `tinyllama generate` with the
/// same penalty, and differ from those without.
#[test]
fn usage_once_when_asked_and_penalties_as_generate_applies_them() {
    let d = common::tmpdir("serve-usage");
    let m = common::tiny_model(&d);
    let srv = Server::start(&m, &[]);
    let stream = |extra: Value| {
        let mut body =
            json!({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "stream": true});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, text) = srv.request("POST", "/v1/completions", &[], body.to_string().as_bytes());
        assert_eq!(status, 200, "{text}");
        sse(&text)
    };
    let usage_chunks = |events: &[String]| {
        events
            .iter()
            .filter(|e| e.as_str() != "[DONE]")
            .filter(|e| {
                let v: Value = serde_json::from_str(e).unwrap();
                v.get("usage").is_some_and(|u| !u.is_null())
            })
            .count()
    };
    assert_eq!(usage_chunks(&stream(json!({}))), 0, "no usage without include_usage");
    let asked = stream(json!({"stream_options": {"include_usage": true}}));
    assert_eq!(usage_chunks(&asked), 1, "{asked:?}");
    let last: Value = serde_json::from_str(&asked[asked.len() - 2]).unwrap();
    assert!(last["choices"].as_array().unwrap().is_empty() && last["usage"]["completion_tokens"] == 8, "{last}");
    // penalties: the server's greedy answer equals generate's with the same settings
    let complete = |extra: Value| {
        let mut body = json!({"model": "tiny", "prompt": "1, 2, 3, 4,", "max_tokens": 24, "temperature": 0});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, v) = srv.post("/v1/completions", &body);
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let plain = complete(json!({}));
    let generate_with = |flags: &[&str]| {
        let o = Command::new(BIN)
            .args(["generate", "--prompt", "1, 2, 3, 4,", "--max-new-tokens", "24", "--model"])
            .arg(&m)
            .args(flags)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().strip_prefix("1, 2, 3, 4,").unwrap().trim_end_matches('\n').to_string()
    };
    assert_eq!(plain, generate_with(&[]));
    let freq = complete(json!({"frequency_penalty": 2.0}));
    assert_eq!(freq, generate_with(&["--frequency-penalty", "2"]));
    let pres = complete(json!({"presence_penalty": 2.0}));
    assert_eq!(pres, generate_with(&["--presence-penalty", "2"]));
    // vLLM's repetition_penalty counts the prompt and every generated token
    let rep = complete(json!({"repetition_penalty": 1.5}));
    assert_eq!(rep, generate_with(&["--repeat-penalty", "1.5", "--repeat-last-n", "100000"]));
    assert!(freq != plain || pres != plain || rep != plain, "the penalties change a repetitive answer: {plain:?}");
    std::fs::remove_dir_all(d).unwrap();
}

/// A full queue answers 429; a client that goes away mid-stream frees its place; SIGTERM lets the
/// running stream finish, then the server exits 0.
#[test]
fn queue_limit_disconnects_and_sigterm() {
    let d = common::tmpdir("serve-queue");
    let m = common::tiny_model(&d);
    let mut srv = Server::start(&m, &["--max-batch", "1", "--max-queue", "1"]);
    let addr = srv.addr.clone();
    let long =
        json!({"model": "tiny", "prompt": "Once", "max_tokens": 240, "temperature": 0, "stream": true}).to_string();
    let metric = |srv: &Server, k: &str| -> u64 {
        let (_, text) = srv.request("GET", "/metrics", &[], b"");
        text.lines().find_map(|l| l.strip_prefix(&format!("tinyllama_{k} "))).unwrap().parse().unwrap()
    };
    // a stream read to its first chunk, then dropped: its sequence is freed long before its 240 tokens
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}", long.len()).unwrap();
    let mut buf = [0u8; 512];
    let _ = s.read(&mut buf).unwrap();
    drop(s);
    let t = Instant::now();
    while metric(&srv, "requests_running") > 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "the dropped stream was never freed");
        std::thread::sleep(Duration::from_millis(1));
    }
    let generated = metric(&srv, "generation_tokens_total");
    assert!(generated < 240, "the dropped stream ran to its end ({generated} tokens)");
    // while one request runs (batch of 1), one may wait; the others are refused. Four clients at
    // once; on a loaded machine one may arrive only after the others finished, so a few tries.
    let burst = || -> Vec<u16> {
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let (addr, long) = (addr.clone(), long.clone());
                    sc.spawn(move || http(&addr, "POST", "/v1/completions", &[], long.as_bytes()).0)
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let mut tries = Vec::new();
    while tries.len() < 5 {
        let statuses = burst();
        assert!(statuses.iter().all(|s| [200, 429].contains(s)), "{statuses:?}");
        let both = statuses.contains(&429) && statuses.contains(&200);
        tries.push(statuses);
        if both {
            break;
        }
    }
    let last = tries.last().unwrap();
    assert!(last.contains(&429) && last.contains(&200), "never refused with 429 beyond the queue: {tries:?}");
    assert!(metric(&srv, "requests_rejected_total") >= 1);
    // the server frees a finished request just after its last bytes went out
    let t = Instant::now();
    while metric(&srv, "requests_running") > 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "a finished request still counted as running");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SIGTERM during a stream: it ends with [DONE], then the process exits 0
    let h = std::thread::spawn(move || http(&addr, "POST", "/v1/completions", &[], long.as_bytes()));
    std::thread::sleep(Duration::from_millis(200));
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
    let (status, text) = h.join().unwrap();
    assert_eq!(status, 200);
    let (_, last) = stream_text(&sse(&text));
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    let code = srv.child.wait().unwrap();
    assert!(code.success(), "{code:?}");
    let log: Vec<String> = srv.log.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("finishing the running requests")), "{log:?}");
    std::fs::remove_dir_all(d).unwrap();
}

/// Long prompts cut into 3-row chunks while other streams decode, and prompts that continue a
/// cached conversation: every answer equals `tinyllama generate` of the prompt alone, and the
/// prefix cache and the step counters say they were used.
#[test]
fn chunked_prefill_and_prefix_reuse_change_no_answer() {
    let d = common::tmpdir("serve-chunks");
    let m = common::tiny_model(&d);
    let srv = Server::start(&m, &["--step-tokens", "3", "--max-batch", "4"]);
    let long: Vec<String> = (0..4).map(|i| format!("{} {}", PROMPTS[i], PROMPTS[(i + 3) % 8].repeat(3))).collect();
    let wants: Vec<String> = long.iter().map(|p| generate(&m, p, 12)).collect();
    let addr = srv.addr.clone();
    std::thread::scope(|s| {
        for (p, want) in long.iter().zip(&wants) {
            let addr = addr.clone();
            s.spawn(move || {
                let body = json!({"model": "tiny", "prompt": p, "max_tokens": 12, "temperature": 0});
                let (_, text) = http(&addr, "POST", "/v1/completions", &[], body.to_string().as_bytes());
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(&v["choices"][0]["text"], want, "{p:?} chunked among others");
            });
        }
    });
    // the same prompts again: continued from the cache, the same answers
    for (p, want) in long.iter().zip(&wants) {
        let (_, v) =
            srv.post("/v1/completions", &json!({"model": "tiny", "prompt": p, "max_tokens": 12, "temperature": 0}));
        assert_eq!(&v["choices"][0]["text"], want, "{p:?} from the prefix cache");
    }
    let (_, text) = srv.request("GET", "/metrics", &[], b"");
    let get = |k: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(&format!("tinyllama_{k} "))).unwrap().parse().unwrap()
    };
    assert!(get("prefix_cache_hits_total") >= 4.0, "{text}");
    assert!(get("prefix_cache_tokens_reused_total") >= long.iter().map(|p| p.len() as f64 / 8.0).sum::<f64>());
    let steps = get("decode_steps_total");
    assert!(get("step_prefill_tokens_total") >= 3.0 * 20.0 && steps > 20.0, "{text}");
    assert!(text.contains("tinyllama_inter_token_seconds_bucket{le=\"+Inf\"}"), "{text}");
    std::fs::remove_dir_all(d).unwrap();
}

/// With a draft model (this model quantized to Q4_0: it agrees often, not always), greedy
/// answers are the same tokens as without one, alone or batched with sampled requests; the
/// acceptance counters move.
#[test]
fn speculative_decoding_gives_the_same_tokens() {
    let d = common::tmpdir("serve-spec");
    let m = common::tiny_model(&d);
    let srv = Server::start(
        &m,
        &["--draft", m.to_str().unwrap(), "--draft-dtype", "q4_0", "--draft-tokens", "3", "--draft-p-min", "0"],
    );
    let wants: Vec<String> = PROMPTS.iter().map(|p| generate(&m, p, 24)).collect();
    for (p, want) in PROMPTS.iter().zip(&wants) {
        let (_, v) =
            srv.post("/v1/completions", &json!({"model": "tiny", "prompt": p, "max_tokens": 24, "temperature": 0}));
        assert_eq!(&v["choices"][0]["text"], want, "{p:?} alone");
    }
    let addr = srv.addr.clone();
    std::thread::scope(|s| {
        for (i, (p, want)) in PROMPTS.iter().zip(&wants).enumerate() {
            let a1 = addr.clone();
            s.spawn(move || {
                let body =
                    json!({"model": "tiny", "prompt": p, "max_tokens": 24, "temperature": 0, "stream": i % 2 == 0});
                let (_, text) = http(&a1, "POST", "/v1/completions", &[], body.to_string().as_bytes());
                let got = if i % 2 == 0 {
                    stream_text(&sse(&text)).0
                } else {
                    serde_json::from_str::<Value>(&text).unwrap()["choices"][0]["text"].as_str().unwrap().to_string()
                };
                assert_eq!(&got, want, "{p:?} batched");
            });
            let addr = addr.clone();
            s.spawn(move || {
                let body = json!({"model": "tiny", "prompt": p, "max_tokens": 20, "temperature": 0.8, "seed": i});
                let (status, _) = http(&addr, "POST", "/v1/completions", &[], body.to_string().as_bytes());
                assert_eq!(status, 200);
            });
        }
    });
    let (_, text) = srv.request("GET", "/metrics", &[], b"");
    let get = |k: &str| {
        text.lines().find_map(|l| l.strip_prefix(&format!("tinyllama_{k} "))).unwrap().parse::<f64>().unwrap()
    };
    let (proposed, accepted) = (get("draft_tokens_proposed_total"), get("draft_tokens_accepted_total"));
    assert!(proposed > 0.0 && accepted <= proposed, "{proposed} / {accepted}");
    eprintln!("draft acceptance {accepted}/{proposed}");
    std::fs::remove_dir_all(d).unwrap();
}

/// The official OpenAI Python client (`pip install openai`) against the server.
#[test]
fn openai_python_client() {
    let Some(py) = common::python("openai_python_client", "openai") else { return };
    let d = common::tmpdir("serve-openai");
    let m = common::tiny_model(&d);
    let srv = Server::start(&m, &["--api-key", "k"]);
    let want = generate(&m, PROMPTS[0], 10);
    let o = Command::new(py)
        .arg("tests/reference/openai_client.py")
        .arg(format!("http://{}/v1", srv.addr))
        .arg(PROMPTS[0])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["models"], json!(["tiny"]));
    assert_eq!(v["completion"], want);
    assert_eq!(v["completion_stream"], want);
    assert_eq!(v["completion_usage"][1], 10, "{v}");
    assert_eq!(v["chat"], v["chat_stream"]);
    assert!(v["chat"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(v["errors"], json!({"max_tokens_0": 400, "unknown_model": 404, "wrong_key": 401}));
    std::fs::remove_dir_all(d).unwrap();
}

/// lm-evaluation-harness (`lm_eval[api]`, `local-completions` with token-id requests and `echo`)
/// run against the server on local copies of ARC-Easy and PIQA gives `tinyllama eval`'s acc and
/// acc_norm, and every choice's log-likelihood within 1e-3; the choices of a question continue
/// its cached context.
#[test]
fn lm_eval_through_http_equals_tinyllama_eval() {
    let Some(py) = common::python("lm_eval_through_http_equals_tinyllama_eval", "lm_eval") else { return };
    let Some(shared) = common::require("lm_eval_through_http_equals_tinyllama_eval", Path::new("../shared")) else {
        return;
    };
    let d = common::tmpdir("serve-lmeval");
    let m = common::tiny_model(&d);
    // transformers reads the same tokenizer and adds BOS as `tinyllama eval` does
    std::fs::write(
        m.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true}"#,
    )
    .unwrap();
    let (data, tasks) = (d.join("data"), d.join("tasks"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&tasks).unwrap();
    let yaml = |name: &str, file: &str, text: &str, target: &str, choices: &str| {
        let lines: Vec<String> = std::fs::read_to_string(shared.join("eval").join(file))
            .unwrap()
            .lines()
            .take(24)
            .map(String::from)
            .collect();
        std::fs::write(data.join(file), lines.join("\n") + "\n").unwrap();
        let y = format!(
            "task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {}\noutput_type: multiple_choice\n\
             validation_split: validation\ndoc_to_text: \"{text}\"\ndoc_to_target: \"{target}\"\ndoc_to_choice: \"{choices}\"\n\
             metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
            data.join(file).display()
        );
        std::fs::write(tasks.join(format!("{name}.yaml")), y).unwrap();
    };
    // lm-eval v0.4's own prompts for the two tasks
    yaml(
        "tl_arc_easy",
        "arc_easy_validation.jsonl",
        "Question: {{question}}\\nAnswer:",
        "{{choices.label.index(answerKey)}}",
        "{{choices.text}}",
    );
    yaml("tl_piqa", "piqa_validation.jsonl", "Question: {{goal}}\\nAnswer:", "{{label}}", "{{[sol1, sol2]}}");
    let ours = d.join("ours.json");
    let samples = d.join("ours.jsonl");
    let o = Command::new(BIN)
        .args(["eval", "--tasks", "arc_easy,piqa", "--data-dir"])
        .arg(&data)
        .arg("--json")
        .arg(&ours)
        .arg("--log-samples")
        .arg(&samples)
        .arg("--model")
        .arg(&m)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let srv = Server::start(&m, &[]);
    let out = d.join("lm-eval");
    let o = Command::new(&py)
        .args(["-m", "lm_eval", "--model", "local-completions", "--model_args"])
        .arg(format!(
            "model=tiny,base_url=http://{}/v1/completions,tokenized_requests=True,tokenizer_backend=huggingface,tokenizer={},add_bos_token=True,num_concurrent=4,max_retries=1",
            srv.addr,
            m.display()
        ))
        .args(["--tasks", "tl_arc_easy,tl_piqa", "--include_path"])
        .arg(&tasks)
        .arg("--output_path")
        .arg(&out)
        .arg("--log_samples")
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "lm_eval failed: {}", String::from_utf8_lossy(&o.stderr));
    let files: Vec<std::path::PathBuf> =
        std::fs::read_dir(out.join("tiny")).unwrap().map(|e| e.unwrap().path()).collect();
    let of = |prefix: &str| {
        files.iter().find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix)).unwrap().clone()
    };
    let theirs: Value = serde_json::from_str(&std::fs::read_to_string(of("results_")).unwrap()).unwrap();
    let mine: Value = serde_json::from_str(&std::fs::read_to_string(&ours).unwrap()).unwrap();
    let logged: Vec<Value> =
        std::fs::read_to_string(&samples).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (task, name) in [("arc_easy", "tl_arc_easy"), ("piqa", "tl_piqa")] {
        let r = mine["results"].as_array().unwrap().iter().find(|r| r["task"] == task).unwrap();
        for metric in ["acc", "acc_norm"] {
            let (a, b) =
                (r[metric].as_f64().unwrap(), theirs["results"][name][format!("{metric},none")].as_f64().unwrap());
            assert!((a - b).abs() < 1e-9, "{task} {metric}: tinyllama eval {a}, lm-eval through HTTP {b}");
        }
        for line in std::fs::read_to_string(of(&format!("samples_{name}_"))).unwrap().lines() {
            let s: Value = serde_json::from_str(line).unwrap();
            let doc = s["doc_id"].as_u64().unwrap();
            for (c, resp) in s["filtered_resps"].as_array().unwrap().iter().enumerate() {
                let http: f64 = resp[0].as_str().unwrap().parse().unwrap();
                let direct = logged
                    .iter()
                    .find(|x| x["task"] == task && x["doc_index"] == doc && x["choice_index"] == c as u64)
                    .unwrap()["loglikelihood"]
                    .as_f64()
                    .unwrap();
                assert!(
                    (http - direct).abs() < 1e-3 * direct.abs().max(1.0),
                    "{task} doc {doc} choice {c}: {http} vs {direct}"
                );
            }
        }
    }
    let (_, text) = srv.request("GET", "/metrics", &[], b"");
    let hits: f64 =
        text.lines().find_map(|l| l.strip_prefix("tinyllama_prefix_cache_hits_total ")).unwrap().parse().unwrap();
    assert!(hits > 24.0, "the choices reuse their question's cache: {hits} hits");
    std::fs::remove_dir_all(d).unwrap();
}

/// Several prompts, `n` samples, `echo` scoring with `max_tokens: 0`, and vLLM's tokenizer
/// endpoints; bad requests get 400 and the server goes on.
#[test]
fn prompt_lists_samples_echo_and_tokenizer_endpoints() {
    let d = common::tmpdir("serve-eval-api");
    let m = common::tiny_model(&d);
    let srv = Server::start(&m, &[]);
    let tok = tinyllama::tokenizer::Tokenizer::llama2();
    // /tokenize and /detokenize: the tokenizer's ids, BOS as asked
    let (s, v) = srv.post("/tokenize", &json!({"prompt": "It is a truth", "add_special_tokens": false}));
    assert_eq!(s, 200);
    let ids: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
    assert_eq!(ids, tok.encode("It is a truth").unwrap());
    let (_, v) = srv.post("/tokenize", &json!({"prompt": "It is a truth"}));
    assert_eq!(v["tokens"][0], 1);
    assert_eq!(v["count"], ids.len() + 1);
    let (_, v) = srv.post("/detokenize", &json!({"tokens": ids}));
    assert_eq!(v["prompt"], "It is a truth");
    let (s, info) = srv.request("GET", "/tokenizer_info", &[], b"");
    assert_eq!(s, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!((info["bos_token"].as_str(), info["eos_token"].as_str()), (Some("<s>"), Some("</s>")));
    // two prompts × n 3, sampled: seeded, reproducible, each choice its index
    let body = json!({"model": "tiny", "prompt": [PROMPTS[0], PROMPTS[1]], "n": 3, "max_tokens": 6, "temperature": 1.0, "seed": 5});
    let (s, a) = srv.post("/v1/completions", &body);
    assert_eq!(s, 200, "{a}");
    let (_, b) = srv.post("/v1/completions", &body);
    let texts = |v: &Value| {
        v["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(texts(&a), texts(&b));
    assert_eq!(
        a["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    assert!(texts(&a)[..3].iter().collect::<std::collections::BTreeSet<_>>().len() > 1, "{:?}", texts(&a));
    // the first choice of a prompt equals that prompt asked alone with the same seed
    let (_, alone) = srv.post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": PROMPTS[1], "max_tokens": 6, "temperature": 1.0, "seed": 5}),
    );
    assert_eq!(alone["choices"][0]["text"], a["choices"][3]["text"]);
    // echo with max_tokens 0: the prompt's own log-probabilities, the first null, as a full
    // forward scores them
    let prompt: Vec<u32> = std::iter::once(1).chain(tok.encode(PROMPTS[3]).unwrap()).collect();
    let (s, v) = srv.post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 2}),
    );
    assert_eq!(s, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), prompt.len());
    assert!(lp["token_logprobs"][0].is_null());
    assert_eq!(lp["top_logprobs"][1].as_object().unwrap().len(), 2);
    let model = tinyllama::loader::load_model(&m, None, false).unwrap().model;
    let mut cache = tinyllama::model::KvCache::new(&model, prompt.len());
    let hidden = model.forward_cached_hidden(&prompt, &mut cache, tinyllama::model::RowMode::BatchInvariant).unwrap();
    let logits = model.head_logits(&hidden, tinyllama::model::RowMode::BatchInvariant);
    let vsz = model.cfg.vocab_size;
    for i in 1..prompt.len() {
        let row = &logits[(i - 1) * vsz..i * vsz];
        let lse = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let z: f64 = row.iter().map(|&x| ((x - lse) as f64).exp()).sum();
        let want = (row[prompt[i] as usize] - lse) as f64 - z.ln();
        let got = lp["token_logprobs"][i].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "token {i}: {got} vs {want}");
    }
    assert_eq!(v["usage"]["completion_tokens"], 0);
    // bad input: 400 with the parameter named, and the server keeps serving
    for (body, param) in [
        (json!({"model": "tiny", "prompt": []}), "prompt"),
        (json!({"model": "tiny", "prompt": [[1, 2], []]}), "prompt"),
        (json!({"model": "tiny", "prompt": [1, 40000]}), "prompt"),
        (json!({"model": "tiny", "prompt": "x", "n": 1000}), "n"),
        (json!({"model": "tiny", "prompt": ["a", "b"], "stream": true}), "stream"),
        (json!({"model": "tiny", "prompt": "x", "max_tokens": 0}), "max_tokens"),
        (json!({"model": "tiny", "prompt": "x", "n": 2, "best_of": 3}), "best_of"),
    ] {
        let (s, v) = srv.post("/v1/completions", &body);
        assert_eq!(s, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    let (s, _) = srv.post(
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "echo": true}),
    );
    assert_eq!(s, 400);
    let (s, v) = srv.post("/detokenize", &json!({"tokens": [40000]}));
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("tokens")));
    let (s, _) = srv.post("/v1/completions", &json!({"model": "tiny", "prompt": "still here", "max_tokens": 2}));
    assert_eq!(s, 200);
    std::fs::remove_dir_all(d).unwrap();
}
