//! `tinyllama serve`: an OpenAI-compatible HTTP server (tokio + axum) over the continuous-batching
//! [`engine`]. Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both with
//! `stream: true` as server-sent events ending in `data: [DONE]`), `GET /v1/models`,
//! `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info` (vLLM's), `GET /health`,
//! `GET /metrics` (Prometheus text). `state.rs` what the handlers share, `completions.rs` the two
//! generation endpoints, `text.rs` tokens into OpenAI's text and log-probabilities, `tokenize.rs`
//! the tokenizer's endpoints, `webui.rs` the chat page at `/` (and `/props`). Bad requests get OpenAI's error object and a
//! 4xx; the server keeps serving. SIGTERM or Ctrl-C: stop accepting, finish what runs, exit.

pub mod api;
mod completions;
pub mod engine;
mod state;
mod text;
mod tokenize;
mod webui;

use crate::loader::LoadedModel;
use crate::tokenizer::chat_template::ChatTemplate;
use anyhow::{Context, Result};
use api::ApiError;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::{Engine, EngineOptions};
use serde_json::json;
pub use state::ServeOptions;
use state::{authorize, now_s, AppState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    let page_defaults = state::PageDefaults::of_model(&loaded.source);
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
        page_defaults,
    });
    let page = if opts.webui { webui::routes() } else { Router::new() };
    let app = Router::new()
        .route("/v1/completions", post(completions::completions).fallback(method_not_allowed))
        .route("/v1/chat/completions", post(completions::chat_completions).fallback(method_not_allowed))
        .route("/v1/models", get(models).fallback(method_not_allowed))
        .route("/tokenize", post(tokenize::tokenize).fallback(method_not_allowed))
        .route("/detokenize", post(tokenize::detokenize).fallback(method_not_allowed))
        .route("/tokenizer_info", get(tokenize::tokenizer_info).fallback(method_not_allowed))
        .route("/health", get(health).fallback(method_not_allowed))
        .route("/metrics", get(metrics).fallback(method_not_allowed))
        .merge(page)
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
