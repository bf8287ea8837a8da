//! What every handler shares: the server's state and options, the API key and model checks, the
//! request body read and parsed, and a request submitted to the engine.

use super::api::{self, ApiError, GenParams};
use super::engine::{Engine, Event, Job, Refusal};
use crate::decode::Request;
use crate::tokenizer::chat_template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
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
    /// The chat page at `/` (`--no-webui`: none).
    pub webui: bool,
}

/// The sampling settings the page starts from: the model's `generation_config.json` where it
/// sets them, else llama.cpp's web UI defaults.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PageDefaults {
    pub temperature: f64,
    pub top_p: f64,
    /// `None`: until the model ends or the context fills.
    pub max_tokens: Option<u64>,
}

impl PageDefaults {
    /// From a model directory's `generation_config.json` (transformers' names: `do_sample: false`
    /// is greedy, `max_new_tokens`).
    pub fn of_model(source: &std::path::Path) -> PageDefaults {
        let mut d = PageDefaults { temperature: 0.8, top_p: 0.95, max_tokens: None };
        let dir = if source.is_dir() { source } else { source.parent().unwrap_or(source) };
        let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else { return d };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return d };
        if let Some(t) = v["temperature"].as_f64() {
            d.temperature = t;
        }
        if v["do_sample"] == serde_json::json!(false) {
            d.temperature = 0.0;
        }
        if let Some(p) = v["top_p"].as_f64() {
            d.top_p = p;
        }
        d.max_tokens = v["max_new_tokens"].as_u64();
        d
    }
}

pub(super) struct AppState {
    pub(super) engine: Arc<Engine>,
    pub(super) tok: Tokenizer,
    pub(super) template: ChatTemplate,
    pub(super) opts: ServeOptions,
    pub(super) ctx: usize,
    pub(super) end_ids: Vec<u32>,
    pub(super) started: u64,
    pub(super) next_id: AtomicU64,
    /// What the chat page starts from.
    pub(super) page_defaults: PageDefaults,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self.body())).into_response()
    }
}

pub(super) fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
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

pub(super) fn body_error(r: BytesRejection) -> ApiError {
    let status = r.status().as_u16();
    let mut e = ApiError::invalid(format!("cannot read the request body: {}", r.body_text()), None);
    e.status = if status == 413 { 413 } else { 400 };
    e
}

pub(super) fn check_model(st: &AppState, model: Option<String>) -> Result<(), ApiError> {
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
pub(super) fn submit(
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

pub(super) fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Completion,
    Chat,
}

/// The API key checked, the body read whole (within the size limit) and parsed.
pub(super) fn read_request<T: serde::de::DeserializeOwned>(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    authorize(st, headers)?;
    let body = body.map_err(body_error)?;
    serde_json::from_slice(&body).map_err(api::parse_error)
}

pub(super) fn fresh_seed(st: &AppState) -> u64 {
    let n = st.next_id.load(Ordering::Relaxed);
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0) ^ n.rotate_left(32)
}
