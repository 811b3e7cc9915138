//! `/v1/session`: signing a browser in with an API token. The token goes
//! into an HttpOnly, SameSite=Strict cookie that `auth::require` accepts
//! in place of the Authorization header; the answer carries the CSRF
//! token the page's writes must send back. Any token may sign in; what it
//! may then do is its role's, as with the header.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{extract::State, Json, Router};
use heliotrope_api_spec::{Role, Session, SignIn};

use super::auth::{csrf_token, presented, principal, Principal, SESSION_COOKIE};
use super::error::{ApiError, ErrorResponses};
use super::extract::ApiJson;
use super::AppState;

/// How long a browser session lasts, seconds (a working day).
pub const SESSION_MAX_AGE_S: u32 = 12 * 3600;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/session", get(get_session).post(sign_in).delete(sign_out))
}

/// Sign a browser in: the token's secret in, a session cookie (HttpOnly,
/// SameSite=Strict) and the CSRF token for its writes out. An unknown
/// token answers 401.
#[utoipa::path(post, path = "/v1/session", tag = "tokens", request_body = SignIn, security(()),
    responses((status = 200, body = Session, headers(("Set-Cookie" = String))), ErrorResponses))]
pub async fn sign_in(State(state): State<AppState>, ApiJson(body): ApiJson<SignIn>) -> Result<Response, ApiError> {
    let secret = body.token.trim();
    let cookie_safe = secret.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b',' && b != b'"');
    if secret.is_empty() || secret.len() > 256 || !cookie_safe {
        return Err(ApiError::Unauthorized);
    }
    let who = browser(principal(&state, secret).await?)?;
    let cookie = format!("{SESSION_COOKIE}={secret}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_MAX_AGE_S}");
    let session = Session { token_id: who.token_id, role: who.role, csrf_token: csrf_token(secret) };
    Ok(([(header::SET_COOKIE, cookie)], Json(session)).into_response())
}

/// Who this browser (or bearer) is signed in as, and its CSRF token.
#[utoipa::path(get, path = "/v1/session", tag = "tokens",
    responses((status = 200, body = Session), ErrorResponses))]
pub async fn get_session(State(state): State<AppState>, headers: header::HeaderMap) -> Result<Json<Session>, ApiError> {
    let (secret, _) = presented(&headers).ok_or(ApiError::Unauthorized)?;
    let who = browser(principal(&state, secret).await?)?;
    Ok(Json(Session { token_id: who.token_id, role: who.role, csrf_token: csrf_token(secret) }))
}

/// Executor tokens are for executors: no browser signs in with one.
fn browser(who: Principal) -> Result<Principal, ApiError> {
    if !who.role.grants(Role::Viewer) {
        return Err(ApiError::Forbidden { have: who.role.as_str(), need: Role::Viewer.as_str() });
    }
    Ok(who)
}

/// Sign out: the cookie is cleared (the token itself stays valid; revoke
/// it at `/v1/tokens` to end it everywhere).
#[utoipa::path(delete, path = "/v1/session", tag = "tokens", security(()),
    responses((status = 204, headers(("Set-Cookie" = String))), ErrorResponses))]
pub async fn sign_out() -> Response {
    let cookie = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}
