//! `/v1/session`: signing a browser in with an API token. The browser gets
//! a session of its own (a random secret whose digest the database keeps,
//! with its expiry) in an HttpOnly, SameSite=Strict cookie that
//! `auth::require` accepts in place of the Authorization header; the
//! answer carries the CSRF token the page's writes must send back. Any
//! token but an executor's may sign in; what the session may then do is
//! its token's role's, as with the header.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{extract::State, Extension, Json, Router};
use heliotrope_api_spec::{Role, Session, SignIn};

use super::auth::{csrf_token, presented, principal, session_cookie, Presented, Principal, SESSION_COOKIE};
use super::error::{ApiError, ErrorResponses};
use super::extract::ApiJson;
use super::AppState;
use crate::db;
use crate::domain::token::{generate_session_secret, secret_digest};

/// How long a browser session lasts, seconds (a working day).
pub const SESSION_MAX_AGE_S: u32 = 12 * 3600;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/session", get(get_session).post(sign_in).delete(sign_out))
}

/// Sign a browser in: the token's secret in; a session of its own out,
/// in a cookie (HttpOnly, SameSite=Strict, Secure when the API is reached
/// over https) that holds a random secret, never the token, and ends after
/// [`SESSION_MAX_AGE_S`], at sign-out or when the token is revoked; and
/// the CSRF token for its writes. An unknown token answers 401.
#[utoipa::path(post, path = "/v1/session", tag = "tokens", request_body = SignIn, security(()),
    responses((status = 200, body = Session, headers(("Set-Cookie" = String))), ErrorResponses))]
pub async fn sign_in(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: header::HeaderMap,
    ApiJson(body): ApiJson<SignIn>,
) -> Result<Response, ApiError> {
    let secret = body.token.trim();
    if secret.is_empty() || secret.len() > 256 {
        return Err(ApiError::Unauthorized);
    }
    let peer = peer.map(|Extension(ConnectInfo(peer))| peer.ip());
    let who = browser(principal(&state, Presented::Bearer(secret), peer).await?)?;
    let session = generate_session_secret();
    let lasts = std::time::Duration::from_secs(SESSION_MAX_AGE_S.into());
    db::sessions::open(&state.pool, &secret_digest(&session), who.token_id, lasts).await?;
    let secure = if state.secure_cookies || forwarded_https(&headers) { "; Secure" } else { "" };
    let cookie =
        format!("{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_MAX_AGE_S}{secure}");
    let answer = Session { token_id: who.token_id, role: who.role, csrf_token: csrf_token(&session) };
    Ok(([(header::SET_COOKIE, cookie)], Json(answer)).into_response())
}

/// Whether a TLS-terminating proxy says the browser came over https.
fn forwarded_https(headers: &header::HeaderMap) -> bool {
    headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// Who this browser (or bearer) is signed in as, and its CSRF token. A
/// browser that is not signed in (no cookie, or one whose session ended)
/// gets 204 and no body: asking is not an error, and a page asks before
/// it shows its sign-in form. A bearer token that is not valid is 401.
#[utoipa::path(get, path = "/v1/session", tag = "tokens", security((), ("bearer" = [])),
    responses((status = 200, body = Session), (status = 204, description = "Not signed in"), ErrorResponses))]
pub async fn get_session(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: header::HeaderMap,
) -> Result<Response, ApiError> {
    let Some(presented) = presented(&headers) else { return Ok(StatusCode::NO_CONTENT.into_response()) };
    let peer = peer.map(|Extension(ConnectInfo(peer))| peer.ip());
    let who = match principal(&state, presented, peer).await {
        Err(ApiError::Unauthorized) if matches!(presented, Presented::Session(_)) => {
            return Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cleared_cookie())]).into_response())
        }
        who => browser(who?)?,
    };
    let (Presented::Bearer(secret) | Presented::Session(secret)) = presented;
    Ok(Json(Session { token_id: who.token_id, role: who.role, csrf_token: csrf_token(secret) }).into_response())
}

/// A cookie that ends the browser's session cookie.
fn cleared_cookie() -> String {
    format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// Executor tokens are for executors: no browser signs in with one.
fn browser(who: Principal) -> Result<Principal, ApiError> {
    if !who.role.grants(Role::Viewer) {
        return Err(ApiError::Forbidden { have: who.role.as_str(), need: Role::Viewer.as_str() });
    }
    Ok(who)
}

/// Sign out: the session ends on every replica (at once on this one, within
/// the token cache's lifetime on others) and the cookie is cleared. The
/// token itself stays valid; revoke it at `/v1/tokens` to end it everywhere.
#[utoipa::path(delete, path = "/v1/session", tag = "tokens", security(()),
    responses((status = 204, headers(("Set-Cookie" = String))), ErrorResponses))]
pub async fn sign_out(State(state): State<AppState>, headers: header::HeaderMap) -> Result<Response, ApiError> {
    if let Some(session) = session_cookie(&headers) {
        let digest = secret_digest(session);
        db::sessions::close(&state.pool, &digest).await?;
        state.tokens.forget_session(digest);
    }
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cleared_cookie())]).into_response())
}
