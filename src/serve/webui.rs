//! The chat page at `/`: three files embedded in the binary (`webui/index.html`, `app.js`,
//! `style.css`; no CDN, works offline), served with their content types, an ETag (a reload asks
//! `If-None-Match` and gets 304) and a Content-Security-Policy that allows same-origin scripts,
//! styles and requests only — so that nothing a model or a user writes can run or load. `/props`
//! tells the page the model's name, context and default sampling settings (llama.cpp's `/props`);
//! with `--api-key` it asks for the key like the API does, which is how the page knows to ask.

use super::api::ApiError;
use super::state::{authorize, AppState};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

const INDEX: &str = include_str!("webui/index.html");
const APP_JS: &str = include_str!("webui/app.js");
const STYLE_CSS: &str = include_str!("webui/style.css");

/// Scripts, styles and requests from this origin only; no inline script, no plugin, no frame, no
/// form posted elsewhere, no image or font from anywhere.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { page_file(&h, INDEX, "text/html; charset=utf-8") }))
        .route(
            "/webui/app.js",
            get(|h: HeaderMap| async move { page_file(&h, APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/webui/style.css",
            get(|h: HeaderMap| async move { page_file(&h, STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route("/props", get(props))
        // browsers ask for one; the page has none
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

fn etag(body: &str) -> String {
    format!("\"{:016x}\"", crate::files::digest(body.as_bytes()))
}

/// The headers every page response carries.
fn page_headers(content_type: &'static str, tag: String) -> [(&'static str, String); 6] {
    [
        ("content-type", content_type.to_string()),
        ("content-security-policy", CONTENT_SECURITY_POLICY.to_string()),
        ("x-content-type-options", "nosniff".to_string()),
        ("referrer-policy", "no-referrer".to_string()),
        // revalidated on every load, answered 304 while unchanged: a new binary's page is never stale
        ("cache-control", "no-cache".to_string()),
        ("etag", tag),
    ]
}

fn page_file(headers: &HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    let tag = etag(body);
    let unchanged = headers
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, page_headers(content_type, tag)).into_response();
    }
    (page_headers(content_type, tag), body).into_response()
}

async fn props(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&st, &headers)?;
    let body = serde_json::json!({
        "model": st.opts.model_name,
        "n_ctx": st.ctx,
        "api_key_required": st.opts.api_key.is_some(),
        "default_generation_settings": st.page_defaults,
    });
    Ok(Json(body).into_response())
}
