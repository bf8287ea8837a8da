//! vLLM's tokenizer endpoints: `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info`.

use super::api::{self, ApiError};
use super::state::{authorize, check_model, read_request, AppState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// `POST /tokenize` (vLLM's): `{"prompt": TEXT, "add_special_tokens": true}` → the token ids, as
/// completions would see them (BOS as the tokenizer's config says, with special tokens).
pub(super) async fn tokenize(
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
pub(super) async fn detokenize(
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
pub(super) async fn tokenizer_info(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
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
