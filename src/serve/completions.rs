//! `POST /v1/completions` (one prompt streamed or not; prompt lists, `n` samples and `echo`
//! scoring) and `POST /v1/chat/completions`.

use super::api::{ApiError, ChatRequest, CompletionRequest, GenParams, Prompt};
use super::engine::{Event, TokenLogprob};
use super::state::{check_model, fresh_seed, now_s, read_request, submit, usage, AppState, Kind};
use super::text::TextStream;
use crate::tokenizer::Tokenizer;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

pub(super) async fn completions(
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
pub(super) async fn completions_many(
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
pub(super) fn echo_logprobs(tok: &Tokenizer, prompt: &[u32], lps: &[Option<TokenLogprob>]) -> Value {
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

pub(super) async fn chat_completions(
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

pub(super) async fn respond(
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

pub(super) struct StreamState {
    pub(super) ts: TextStream,
    pub(super) rx: UnboundedReceiver<Event>,
    /// 0: the role chunk (chat); 1: tokens; 2: the usage chunk; 3: `[DONE]`; 4: the end.
    pub(super) phase: u8,
    /// Bytes of completion text sent so far (logprobs' `text_offset`).
    pub(super) offset: usize,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn stream_response(
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
