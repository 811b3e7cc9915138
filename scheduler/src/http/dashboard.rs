//! The planner dashboard: the static files of `web/`, compiled into the
//! binary so that serving it needs nothing beside the executable (and no
//! Node.js to build it). The page itself reads the API with the browser's
//! session cookie (see `session`); nothing here needs authentication.

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::RustEmbed;

use super::error::ApiError;
use super::AppState;

#[derive(RustEmbed)]
#[folder = "../web/"]
#[exclude = "README.md"]
struct Assets;

/// Scripts, styles and data come from this server only; the page is never framed.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                      connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(|| async { asset("index.html") })).route("/web/{*path}", get(web_file))
}

async fn web_file(Path(path): Path<String>) -> Response {
    asset(&path)
}

/// One embedded file with its type and the headers that keep the page to itself.
fn asset(path: &str) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError::NotFound(format!("no dashboard file '{path}'")).into_response();
    };
    let mut response = file.data.into_owned().into_response();
    let headers = response.headers_mut();
    if let Ok(mime) = HeaderValue::from_str(file.metadata.mimetype()) {
        headers.insert(CONTENT_TYPE, mime);
    }
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The page is small; a new release must show at once rather than after a cache expires.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
