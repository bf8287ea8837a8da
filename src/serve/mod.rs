//! `tinyllama serve`: an OpenAI-compatible HTTP server (tokio + axum) over the continuous-batching
//! [`engine`]. Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both with
//! `stream: true` as server-sent events ending in `data: [DONE]`), `GET /v1/models`,
//! `GET /health`, `GET /metrics` (Prometheus text). Bad requests get OpenAI's error object and a
//! 4xx; the server keeps serving. SIGTERM or Ctrl-C: stop accepting, finish what runs, exit.

pub mod api;
pub mod engine;

use crate::decode::Request;
use crate::loader::LoadedModel;
use crate::tokenizer::chat_template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use api::{ApiError, ChatRequest, CompletionRequest, GenParams, Prompt};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::{Engine, EngineOptions, Event, Job, Refusal, TokenLogprob};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub model_name: String,
    pub api_key: Option<String>,
    pub max_batch: usize,
    pub max_queue: usize,
    /// Bytes of KV cache for all running sequences together (`None`: `max_batch` full contexts).
    pub kv_budget: Option<usize>,
    /// Largest request body in bytes.
    pub max_body: usize,
}

struct AppState {
    engine: Arc<Engine>,
    tok: Tokenizer,
    template: ChatTemplate,
    opts: ServeOptions,
    ctx: usize,
    end_ids: Vec<u32>,
    started: u64,
    next_id: AtomicU64,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self.body())).into_response()
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Runs the server until SIGTERM / Ctrl-C. `on_listening` gets the bound address (port 0 picks
/// a free one).
pub fn serve(
    loaded: LoadedModel,
    draft: Option<LoadedModel>,
    opts: ServeOptions,
    engine_opts: crate::decode::EngineOptions,
) -> Result<()> {
    if let Some(d) = &draft {
        loaded.check_draft(d)?;
    }
    let LoadedModel { model, tokenizer: tok, chat_template, .. } = loaded;
    let draft = draft.map(|d| Arc::new(d.model));
    let name = |id: u32| tok.id_to_token(id).unwrap_or_default();
    let (template, own) = ChatTemplate::for_model(chat_template.as_deref(), &name(tok.bos_id), &name(tok.eos_id))?;
    if !own {
        eprintln!("note: the model has no chat template; /v1/chat/completions uses TinyLlama-Chat's Zephyr template");
    }
    let ctx = model.max_positions();
    let end_ids = crate::decode::end_ids(&model.cfg, &tok);
    let kv_budget = engine_opts.kv_budget;
    let (step_tokens, draft_tokens) = (engine_opts.step_tokens, engine_opts.draft.max_tokens);
    let eopts = EngineOptions { decode: engine_opts, max_queue: opts.max_queue };
    let drafting = draft.is_some();
    let engine = Engine::start(Arc::new(model), draft, eopts)?;
    let state = Arc::new(AppState {
        engine: engine.clone(),
        tok,
        template,
        opts: opts.clone(),
        ctx,
        end_ids,
        started: now_s(),
        next_id: AtomicU64::new(1),
    });
    let app = Router::new()
        .route("/v1/completions", post(completions).fallback(method_not_allowed))
        .route("/v1/chat/completions", post(chat_completions).fallback(method_not_allowed))
        .route("/v1/models", get(models).fallback(method_not_allowed))
        .route("/tokenize", post(tokenize).fallback(method_not_allowed))
        .route("/detokenize", post(detokenize).fallback(method_not_allowed))
        .route("/tokenizer_info", get(tokenizer_info).fallback(method_not_allowed))
        .route("/health", get(health).fallback(method_not_allowed))
        .route("/metrics", get(metrics).fallback(method_not_allowed))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(opts.max_body))
        .with_state(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener =
            tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "listening on http://{local} (model `{}`, batch {}, queue {}, {step_tokens} tokens a step, KV budget {} MiB{}{})",
            opts.model_name,
            opts.max_batch,
            opts.max_queue,
            kv_budget >> 20,
            if drafting {
                format!(", speculative decoding with up to {draft_tokens} draft tokens")
            } else {
                String::new()
            },
            if opts.api_key.is_some() { ", API key required" } else { "" }
        );
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.context("server error")
    })?;
    eprintln!("stopping: finishing the running requests");
    engine.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &st.opts.api_key else { return Ok(()) };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        return Ok(());
    }
    let mut e = ApiError::invalid("Incorrect API key provided", None).with_code(401, "invalid_api_key");
    if given.is_none() {
        e.message = "You didn't provide an API key: send `Authorization: Bearer KEY`".into();
    }
    Err(e)
}

fn body_error(r: BytesRejection) -> ApiError {
    let status = r.status().as_u16();
    let mut e = ApiError::invalid(format!("cannot read the request body: {}", r.body_text()), None);
    e.status = if status == 413 { 413 } else { 400 };
    e
}

fn check_model(st: &AppState, model: Option<String>) -> Result<(), ApiError> {
    match model {
        None => Err(ApiError::invalid("you must provide a `model` parameter", Some("model"))),
        Some(m) if m == st.opts.model_name => Ok(()),
        Some(m) => Err(ApiError::invalid(
            format!("The model `{m}` does not exist: this server serves `{}`", st.opts.model_name),
            Some("model"),
        )
        .with_code(404, "model_not_found")),
    }
}

/// Submits `prompt` and returns the receiver of its tokens and the token budget.
fn submit(
    st: &AppState,
    prompt: &[u32],
    p: &GenParams,
    kind: Kind,
) -> Result<(UnboundedReceiver<Event>, usize), ApiError> {
    let prompt_param = match kind {
        Kind::Completion => "prompt",
        Kind::Chat => "messages",
    };
    let v = st.tok.vocab_size().max(1) as u32;
    if let Some(&t) = prompt.iter().find(|&&t| t >= v) {
        return Err(ApiError::invalid(format!("token id {t} is outside the vocabulary ({v})"), Some("prompt")));
    }
    if prompt.len() >= st.ctx {
        return Err(ApiError::invalid(
            format!(
                "This model's maximum context length is {} tokens; the prompt has {} (room for at least one new token is needed)",
                st.ctx,
                prompt.len()
            ),
            Some(prompt_param),
        )
        .with_code(400, "context_length_exceeded"));
    }
    let max_new = p.max_tokens.unwrap_or(usize::MAX).min(st.ctx - prompt.len());
    let (tx, rx) = unbounded_channel();
    let mut request = Request::new(prompt.to_vec(), max_new, p.sampling.clone(), st.end_ids.clone());
    request.logprobs = p.logprobs;
    request.prompt_logprobs = p.logprobs.filter(|_| p.echo);
    match st.engine.submit(Job { request, events: tx }) {
        Ok(()) => Ok((rx, max_new)),
        Err(Refusal::QueueFull(n)) => Err(ApiError {
            status: 429,
            message: format!("the server is busy ({n} requests waiting): retry later"),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
        }),
        Err(Refusal::Invalid(why)) => {
            Err(ApiError::invalid(format!("{why}: lower max_tokens or shorten the prompt"), Some("max_tokens")))
        }
        Err(Refusal::ShuttingDown) => Err(ApiError {
            status: 503,
            message: "the server is shutting down".into(),
            kind: "server_error",
            param: None,
            code: None,
        }),
    }
}

/// Turns generated tokens into text as OpenAI returns it: special tokens dropped, incomplete
/// UTF-8 held back, and the text cut before the first stop string (also held back while a stop
/// string may be starting); with the finish reason and the log-probabilities not yet sent.
struct TextStream {
    st: Arc<AppState>,
    /// The prompt's last token: a completion is decoded after it, keeping its leading space.
    after: Option<u32>,
    text: crate::decode::TextStream,
    finish: Option<&'static str>,
    generated: usize,
    max_new: usize,
    /// (token text, logprob) of tokens not yet reported.
    logprobs: Vec<(String, TokenLogprob)>,
    /// The prompt's log-probabilities (`echo`).
    prompt_lp: Vec<Option<TokenLogprob>>,
}

impl TextStream {
    fn new(st: Arc<AppState>, stop_strings: Vec<String>, after: Option<u32>, max_new: usize) -> Self {
        let text = crate::decode::TextStream::new(stop_strings, after);
        TextStream { st, after, text, finish: None, generated: 0, max_new, logprobs: vec![], prompt_lp: vec![] }
    }

    /// Takes one engine event; returns the text that may be shown now.
    fn push(&mut self, ev: Event) -> Result<String, String> {
        match ev {
            Event::Failed(e) => Err(e),
            Event::PromptLogprobs(lp) => {
                self.prompt_lp = lp;
                Ok(String::new())
            }
            Event::Done => {
                if self.finish.is_none() {
                    self.finish = Some(if self.generated >= self.max_new { "length" } else { "stop" });
                }
                Ok(self.text.finish())
            }
            Event::Token { .. } if self.finish.is_some() => Ok(String::new()),
            Event::Token { id, logprob } if self.st.end_ids.contains(&id) => {
                // the end token is counted and scored (echo's clients slice its place off), not shown
                self.generated += 1;
                if let Some(lp) = logprob {
                    self.logprobs.push((String::new(), lp));
                }
                self.finish = Some("stop");
                Ok(self.text.finish())
            }
            Event::Token { id, logprob } => {
                self.generated += 1;
                if let Some(lp) = logprob {
                    let piece = match self.text.ids().last().copied().or(self.after) {
                        Some(p) => self.st.tok.decode_after(p, &[id]),
                        None => self.st.tok.decode(&[id]),
                    };
                    self.logprobs.push((piece.unwrap_or_default(), lp));
                }
                let out = self.text.push(&self.st.tok, id).map_err(|e| format!("{e:#}"))?;
                if self.text.stopped {
                    self.finish = Some("stop");
                }
                Ok(out)
            }
        }
    }

    fn take_logprobs(&mut self, completion: bool, offset: usize) -> Value {
        let lps = std::mem::take(&mut self.logprobs);
        let tok = &self.st.tok;
        let name = |id: u32, prev: Option<u32>| match prev {
            Some(p) => tok.decode_after(p, &[id]).unwrap_or_default(),
            None => tok.decode(&[id]).unwrap_or_default(),
        };
        if completion {
            let mut off = offset;
            let mut text_offset = vec![];
            for (piece, _) in &lps {
                text_offset.push(off);
                off += piece.len();
            }
            json!({
                "tokens": lps.iter().map(|x| &x.0).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|x| x.1.logprob).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|x| x.1.top.iter().map(|&(id, lp)| (name(id, self.after), json!(lp))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
                "text_offset": text_offset,
            })
        } else {
            json!({"content": lps.iter().map(|(piece, lp)| json!({
                "token": piece, "logprob": lp.logprob, "bytes": piece.as_bytes(),
                "top_logprobs": lp.top.iter().map(|&(id, l)| { let t = name(id, None); json!({"token": t, "logprob": l, "bytes": t.as_bytes()}) }).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()})
        }
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

#[derive(Clone, Copy)]
enum Kind {
    Completion,
    Chat,
}

/// The API key checked, the body read whole (within the size limit) and parsed.
fn read_request<T: serde::de::DeserializeOwned>(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    authorize(st, headers)?;
    let body = body.map_err(body_error)?;
    serde_json::from_slice(&body).map_err(api::parse_error)
}

async fn completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = read_request(&st, &headers, body)?;
    let (model, prompts, p) = req.check(fresh_seed(&st))?;
    check_model(&st, model)?;
    let mut encoded = vec![];
    for prompt in prompts {
        encoded.push(match prompt {
            Prompt::Tokens(t) => (t, None),
            Prompt::Text(s) => {
                let t = st.tok.encode_prompt(&s).map_err(|e| ApiError::invalid(format!("{e:#}"), Some("prompt")))?;
                (t, Some(s))
            }
        });
    }
    if encoded.len() == 1 && p.n == 1 && !p.echo {
        let (prompt, _) = encoded.remove(0);
        let after = prompt.last().copied();
        return respond(st, prompt, p, after, Kind::Completion).await;
    }
    completions_many(st, encoded, p).await
}

/// A completion request with several prompts, `n` > 1 or `echo`: every (prompt, sample) pair a
/// sequence of its own, all submitted at once (the engine decodes them together, and prompts that
/// share a beginning share its cache); choices in order, prompt by prompt. Sample `j` is seeded
/// with `seed + j`.
async fn completions_many(
    st: Arc<AppState>,
    prompts: Vec<(Vec<u32>, Option<String>)>,
    p: GenParams,
) -> Result<Response, ApiError> {
    let mut jobs = vec![];
    for (prompt, _) in &prompts {
        for j in 0..p.n {
            let mut pj = p.clone();
            pj.sampling.seed = p.sampling.seed.wrapping_add(j as u64);
            jobs.push(submit(&st, prompt, &pj, Kind::Completion)?);
        }
    }
    let server_error =
        |message: String| ApiError { status: 500, message, kind: "server_error", param: None, code: None };
    let mut choices = vec![];
    let mut completion_tokens = 0;
    for (k, (mut rx, max_new)) in jobs.into_iter().enumerate() {
        let (prompt, text) = &prompts[k / p.n];
        let mut ts = TextStream::new(st.clone(), p.stop_strings.clone(), prompt.last().copied(), max_new);
        let mut out = String::new();
        while ts.finish.is_none() {
            let Some(ev) = rx.recv().await else { break };
            out += &ts.push(ev).map_err(server_error)?;
        }
        drop(rx);
        completion_tokens += ts.generated;
        let echoed = match (p.echo, text) {
            (false, _) => String::new(),
            (true, Some(t)) => t.clone(),
            (true, None) => st.tok.decode(prompt).unwrap_or_default(),
        };
        let logprobs = match (p.logprobs, p.echo) {
            (None, _) => Value::Null,
            (Some(_), false) => ts.take_logprobs(true, 0),
            (Some(_), true) => {
                let mut lp = echo_logprobs(&st.tok, prompt, &ts.prompt_lp);
                let offset = lp["text_offset"].as_array().and_then(|o| o.last()).and_then(Value::as_u64).unwrap_or(0);
                let last_piece =
                    lp["tokens"].as_array().and_then(|t| t.last()).and_then(Value::as_str).map_or(0, str::len);
                let generated = ts.take_logprobs(true, offset as usize + last_piece);
                for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
                    if let (Some(a), Some(b)) = (lp[key].as_array_mut(), generated[key].as_array()) {
                        a.extend(b.iter().cloned());
                    }
                }
                lp
            }
        };
        choices.push(json!({"index": k, "text": echoed + &out, "logprobs": logprobs, "finish_reason": ts.finish.unwrap_or("stop")}));
    }
    let n = st.next_id.fetch_add(1, Ordering::Relaxed);
    let prompt_tokens: usize = prompts.iter().map(|(t, _)| t.len()).sum();
    Ok(Json(json!({
        "id": format!("cmpl-{n}"), "object": "text_completion", "created": now_s(), "model": st.opts.model_name,
        "choices": choices, "usage": usage(prompt_tokens, completion_tokens),
    }))
    .into_response())
}

/// The prompt's part of an `echo` response's `logprobs`: each token's text (decoded after the one
/// before it), its log-probability (null for the first) and top alternatives, and text offsets.
fn echo_logprobs(tok: &Tokenizer, prompt: &[u32], lps: &[Option<TokenLogprob>]) -> Value {
    let piece = |i: usize, id: u32| match i {
        0 => tok.decode(&[id]).unwrap_or_default(),
        _ => tok.decode_after(prompt[i - 1], &[id]).unwrap_or_default(),
    };
    let (mut tokens, mut token_lp, mut top, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut offset = 0;
    for (i, &id) in prompt.iter().enumerate() {
        let text = piece(i, id);
        offsets.push(offset);
        offset += text.len();
        tokens.push(text);
        match lps.get(i).and_then(Option::as_ref) {
            Some(lp) => {
                token_lp.push(json!(lp.logprob));
                top.push(Value::Object(lp.top.iter().map(|&(alt, l)| (piece(i, alt), json!(l))).collect()));
            }
            None => {
                token_lp.push(Value::Null);
                top.push(Value::Null);
            }
        }
    }
    json!({"tokens": tokens, "token_logprobs": token_lp, "top_logprobs": top, "text_offset": offsets})
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = read_request(&st, &headers, body)?;
    let (model, messages, p) = req.check(fresh_seed(&st))?;
    check_model(&st, model)?;
    let text =
        st.template.render(&messages, true).map_err(|e| ApiError::invalid(format!("{e:#}"), Some("messages")))?;
    let ids = st.tok.encode(&text).map_err(|e| ApiError::invalid(format!("{e:#}"), Some("messages")))?;
    let prompt = st.tok.with_bos(ids).map_err(|e| ApiError::invalid(format!("{e:#}"), Some("messages")))?;
    respond(st, prompt, p, None, Kind::Chat).await
}

fn fresh_seed(st: &AppState) -> u64 {
    let n = st.next_id.load(Ordering::Relaxed);
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0) ^ n.rotate_left(32)
}

async fn respond(
    st: Arc<AppState>,
    prompt: Vec<u32>,
    p: GenParams,
    after: Option<u32>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let (rx, max_new) = submit(&st, &prompt, &p, kind)?;
    let n = st.next_id.fetch_add(1, Ordering::Relaxed);
    let (id, object) = match kind {
        Kind::Completion => (format!("cmpl-{n}"), "text_completion"),
        Kind::Chat => (format!("chatcmpl-{n}"), "chat.completion"),
    };
    if p.stream {
        return Ok(stream_response(st, rx, p, prompt.len(), after, max_new, id, kind).into_response());
    }
    let mut rx = rx;
    let mut ts = TextStream::new(st.clone(), p.stop_strings.clone(), after, max_new);
    let mut text = String::new();
    while ts.finish.is_none() {
        let Some(ev) = rx.recv().await else { break };
        text += &ts.push(ev).map_err(|e| ApiError {
            status: 500,
            message: e,
            kind: "server_error",
            param: None,
            code: None,
        })?;
    }
    drop(rx); // a stop string ended it early: the engine frees the sequence
    let want_lp = p.logprobs.is_some();
    let (choice, completion) = match kind {
        Kind::Completion => (
            json!({"index": 0, "text": text, "logprobs": if want_lp { ts.take_logprobs(true, 0) } else { Value::Null },
                   "finish_reason": ts.finish.unwrap_or("stop")}),
            ts.generated,
        ),
        Kind::Chat => (
            json!({"index": 0, "message": {"role": "assistant", "content": text},
                   "logprobs": if want_lp { ts.take_logprobs(false, 0) } else { Value::Null },
                   "finish_reason": ts.finish.unwrap_or("stop")}),
            ts.generated,
        ),
    };
    Ok(Json(json!({
        "id": id, "object": object, "created": now_s(), "model": st.opts.model_name,
        "choices": [choice], "usage": usage(prompt.len(), completion),
    }))
    .into_response())
}

struct StreamState {
    ts: TextStream,
    rx: UnboundedReceiver<Event>,
    /// 0: the role chunk (chat); 1: tokens; 2: the usage chunk; 3: `[DONE]`; 4: the end.
    phase: u8,
    /// Bytes of completion text sent so far (logprobs' `text_offset`).
    offset: usize,
}

#[allow(clippy::too_many_arguments)]
fn stream_response(
    st: Arc<AppState>,
    rx: UnboundedReceiver<Event>,
    p: GenParams,
    prompt_len: usize,
    after: Option<u32>,
    max_new: usize,
    id: String,
    kind: Kind,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let created = now_s();
    let chat = matches!(kind, Kind::Chat);
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let name = st.opts.model_name.clone();
    let (include_usage, want_lp) = (p.include_usage, p.logprobs.is_some());
    // one chunk: `delta` is the text (completions) or the delta object (chat); `choices` empty
    // for the usage chunk
    let chunk = move |delta: Option<Value>, finish: Option<&str>, logprobs: Value, usage_v: Option<Value>| {
        let choices = match delta {
            None => json!([]),
            Some(d) if chat => json!([{"index": 0, "delta": d, "logprobs": logprobs, "finish_reason": finish}]),
            Some(d) => json!([{"index": 0, "text": d, "logprobs": logprobs, "finish_reason": finish}]),
        };
        let mut v = json!({"id": id, "object": object, "created": created, "model": name, "choices": choices});
        if let Some(u) = usage_v {
            v["usage"] = u;
        }
        Ok(SseEvent::default().data(v.to_string()))
    };
    let text_delta = move |t: String| {
        if chat {
            if t.is_empty() {
                json!({})
            } else {
                json!({"content": t})
            }
        } else {
            json!(t)
        }
    };
    let init = StreamState {
        ts: TextStream::new(st, p.stop_strings, after, max_new),
        rx,
        phase: if chat { 0 } else { 1 },
        offset: 0,
    };
    let stream = futures_util::stream::unfold(init, move |mut s| {
        let chunk = chunk.clone();
        async move {
            match s.phase {
                0 => {
                    s.phase = 1;
                    Some((chunk(Some(json!({"role": "assistant", "content": ""})), None, Value::Null, None), s))
                }
                1 => loop {
                    let ev = s.rx.recv().await.unwrap_or(Event::Failed("the engine stopped".into()));
                    match s.ts.push(ev) {
                        Err(e) => {
                            s.phase = 3;
                            let err =
                                ApiError { status: 500, message: e, kind: "server_error", param: None, code: None };
                            return Some((Ok(SseEvent::default().data(err.body().to_string())), s));
                        }
                        Ok(delta) => {
                            let done = s.ts.finish.is_some();
                            if !done && delta.is_empty() {
                                continue; // held back (a character or a stop string being completed)
                            }
                            let lp = if want_lp { s.ts.take_logprobs(!chat, s.offset) } else { Value::Null };
                            s.offset += delta.len();
                            if !done {
                                return Some((chunk(Some(text_delta(delta)), None, lp, None), s));
                            }
                            s.rx.close(); // the engine drops the sequence at its next step
                                          // usage comes once, in its own chunk, and only when asked for
                            s.phase = if include_usage { 2 } else { 3 };
                            return Some((chunk(Some(text_delta(delta)), s.ts.finish, lp, None), s));
                        }
                    }
                },
                2 => {
                    s.phase = 3;
                    let u = usage(prompt_len, s.ts.generated);
                    Some((chunk(None, None, Value::Null, Some(u)), s))
                }
                3 => {
                    s.phase = 4;
                    Some((Ok(SseEvent::default().data("[DONE]")), s))
                }
                _ => None,
            }
        }
    });
    Sse::new(stream)
}

/// `POST /tokenize` (vLLM's): `{"prompt": TEXT, "add_special_tokens": true}` → the token ids, as
/// completions would see them (BOS as the tokenizer's config says, with special tokens).
async fn tokenize(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: api::TokenizeRequest = read_request(&st, &headers, body)?;
    if req.model.is_some() {
        check_model(&st, req.model)?;
    }
    let bad = |e: anyhow::Error| ApiError::invalid(format!("{e:#}"), Some("prompt"));
    let tokens = match (req.add_special_tokens.unwrap_or(true), req.prompt.is_empty()) {
        (true, false) => st.tok.encode_prompt(&req.prompt).map_err(bad)?,
        (true, true) if st.tok.config.add_bos_token => vec![st.tok.bos_id],
        _ => st.tok.encode(&req.prompt).map_err(bad)?,
    };
    Ok(Json(json!({"count": tokens.len(), "max_model_len": st.ctx, "tokens": tokens, "token_strs": Value::Null}))
        .into_response())
}

/// `POST /detokenize` (vLLM's): `{"tokens": [ids]}` → `{"prompt": TEXT}` (special tokens skipped).
async fn detokenize(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: api::DetokenizeRequest = read_request(&st, &headers, body)?;
    if req.model.is_some() {
        check_model(&st, req.model)?;
    }
    let v = st.tok.vocab_size() as u32;
    if let Some(&t) = req.tokens.iter().find(|&&t| t >= v) {
        return Err(ApiError::invalid(format!("token id {t} is outside the vocabulary ({v})"), Some("tokens")));
    }
    let text = st.tok.decode(&req.tokens).map_err(|e| ApiError::invalid(format!("{e:#}"), Some("tokens")))?;
    Ok(Json(json!({"prompt": text})).into_response())
}

/// `GET /tokenizer_info` (vLLM's): the tokenizer's special tokens, chat template and limits, which
/// lm-evaluation-harness's remote tokenizer reads.
async fn tokenizer_info(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&st, &headers)?;
    let name = |id: u32| st.tok.id_to_token(id);
    let c = &st.tok.config;
    Ok(Json(json!({
        "tokenizer_class": c.tokenizer_class.clone().unwrap_or_else(|| "PreTrainedTokenizerFast".into()),
        "bos_token": name(st.tok.bos_id), "eos_token": name(st.tok.eos_id), "pad_token": Value::Null,
        "add_bos_token": c.add_bos_token, "add_eos_token": c.add_eos_token,
        "chat_template": st.template.source, "model_max_length": st.ctx, "vocab_size": st.tok.vocab_size(),
    }))
    .into_response())
}

async fn models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&st, &headers)?;
    Ok(Json(json!({"object": "list", "data": [{"id": st.opts.model_name, "object": "model", "created": st.started, "owned_by": "tinyllama"}]}))
        .into_response())
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let m = &st.engine.metrics;
    Json(json!({"status": "ok", "running": m.running.load(Ordering::Relaxed), "waiting": m.waiting.load(Ordering::Relaxed)}))
        .into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], prometheus(&st.engine.metrics)).into_response()
}

/// The engine's counters in Prometheus' text format.
fn prometheus(m: &crate::decode::Metrics) -> String {
    use crate::decode::metrics::GAP_BUCKETS;
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let g = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed).to_string();
    let secs = |a: &AtomicU64| format!("{:.6}", r(a) as f64 / 1e6);
    let ratio = |num: u64, den: u64| format!("{:.4}", if den > 0 { num as f64 / den as f64 } else { 0.0 });
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: String| {
        out += &format!("# HELP tinyllama_{name} {help}\n# TYPE tinyllama_{name} {kind}\ntinyllama_{name} {v}\n");
    };
    put("requests_waiting", "gauge", "Requests waiting for a place in the batch.", g(&m.waiting));
    put("requests_running", "gauge", "Sequences in the running batch.", g(&m.running));
    put("kv_cache_bytes", "gauge", "KV-cache bytes held by running sequences.", g(&m.kv_bytes));
    put("prefix_cache_bytes", "gauge", "KV-cache bytes held by cached prompt prefixes.", g(&m.prefix_bytes));
    put("requests_total", "counter", "Requests admitted to the engine.", r(&m.requests_total).to_string());
    put(
        "requests_rejected_total",
        "counter",
        "Requests refused because the queue was full.",
        r(&m.rejected_total).to_string(),
    );
    put("prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", r(&m.prompt_tokens_total).to_string());
    put("generation_tokens_total", "counter", "Tokens generated.", r(&m.generated_tokens_total).to_string());
    put("decode_steps_total", "counter", "Engine steps (one pass of the model each).", r(&m.steps_total).to_string());
    put(
        "step_prefill_tokens_total",
        "counter",
        "Prompt tokens prefilled in steps.",
        r(&m.step_prefill_tokens_total).to_string(),
    );
    put(
        "step_decode_tokens_total",
        "counter",
        "Decode rows of steps (draft tokens verified included).",
        r(&m.step_decode_tokens_total).to_string(),
    );
    put("last_step_prefill_tokens", "gauge", "Prompt tokens in the last step.", g(&m.last_step_prefill_tokens));
    put("last_step_decode_tokens", "gauge", "Decode rows in the last step.", g(&m.last_step_decode_tokens));
    put(
        "generation_tokens_per_second",
        "gauge",
        "Tokens generated per second over the last 10 s.",
        format!("{:.3}", m.tokens_per_second()),
    );
    let ttft_n = r(&m.ttft_count);
    put(
        "time_to_first_token_seconds_mean",
        "gauge",
        "Mean time from submission to the first token.",
        format!("{:.6}", if ttft_n > 0 { r(&m.ttft_micros_total) as f64 / ttft_n as f64 / 1e6 } else { 0.0 }),
    );
    put("time_to_first_token_seconds_count", "counter", "First tokens timed.", ttft_n.to_string());
    put("decode_seconds_total", "counter", "Time in the model's passes.", secs(&m.step_micros_total));
    put("draft_seconds_total", "counter", "Time in the draft model's proposals.", secs(&m.draft_micros_total));
    let (lookups, hits) = (r(&m.prefix_lookups_total), r(&m.prefix_hits_total));
    put("prefix_cache_lookups_total", "counter", "Prompts looked up in the prefix cache.", lookups.to_string());
    put("prefix_cache_hits_total", "counter", "Prompts that continued a cached prefix.", hits.to_string());
    put(
        "prefix_cache_tokens_reused_total",
        "counter",
        "Prompt tokens taken from cached prefixes.",
        r(&m.prefix_tokens_reused_total).to_string(),
    );
    let (proposed, accepted) = (r(&m.draft_proposed_total), r(&m.draft_accepted_total));
    put("draft_tokens_proposed_total", "counter", "Tokens the draft model proposed.", proposed.to_string());
    put("draft_tokens_accepted_total", "counter", "Proposed tokens the model accepted.", accepted.to_string());
    put("draft_acceptance_rate", "gauge", "Accepted / proposed draft tokens.", ratio(accepted, proposed));
    // the gaps between a sequence's tokens, as a Prometheus histogram (cumulative buckets)
    out += "# HELP tinyllama_inter_token_seconds Time between consecutive tokens of a sequence.\n# TYPE tinyllama_inter_token_seconds histogram\n";
    let mut cumulative = 0;
    for (i, b) in m.gap_buckets.iter().enumerate() {
        cumulative += r(b);
        let le = GAP_BUCKETS.get(i).map_or("+Inf".to_string(), |u| u.to_string());
        out += &format!("tinyllama_inter_token_seconds_bucket{{le=\"{le}\"}} {cumulative}\n");
    }
    out += &format!(
        "tinyllama_inter_token_seconds_sum {}\ntinyllama_inter_token_seconds_count {cumulative}\n",
        secs(&m.gap_micros_total)
    );
    out
}

/// A known endpoint asked with another method: 405 with the error object (axum's own has no body).
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    let path = uri.path();
    let allowed = if path.ends_with("completions") || path.ends_with("tokenize") { "POST" } else { "GET" };
    ApiError {
        status: 405,
        message: format!("{} does not take {method}: use {allowed}", uri.path()),
        kind: "invalid_request_error",
        param: None,
        code: Some("method_not_allowed"),
    }
}

async fn not_found() -> ApiError {
    ApiError::invalid(
        "no such endpoint: see /v1/completions, /v1/chat/completions, /v1/models, /tokenize, /detokenize, /tokenizer_info, /health, /metrics",
        None,
    )
    .with_code(404, "not_found")
}
