//! Bearer-token authentication and role checks.
//!
//! Browsers sign in once (`POST /v1/session`) and then present the token
//! in an HttpOnly, SameSite=Strict cookie instead of a header; their
//! writes must also carry a CSRF token, so that a page elsewhere cannot
//! make one on their behalf.
//!
//! Every router is wrapped in [`require`] with the [`Access`] it needs, so
//! no route can be added without a role check. Verified tokens are cached
//! for a few seconds: authentication is then free for busy clients, and a
//! revocation made here takes effect at once (the entry is evicted), one
//! made on another replica within [`CACHE_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use heliotrope_api_spec::Role;

use super::error::ApiError;
use super::AppState;
use crate::db;
use crate::domain::token::secret_digest;
use sha2::{Digest, Sha256};

/// How long a verified token is trusted without asking the database again.
pub const CACHE_TTL: Duration = Duration::from_secs(10);

/// The roles a group of routes needs: one to read (GET, HEAD), one for the rest.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub read: Role,
    pub write: Role,
}

impl Access {
    /// Viewers read; admins change (the inventory).
    pub const INVENTORY: Access = Access { read: Role::Viewer, write: Role::Admin };
    /// Viewers read; planners (and admins) propose, approve and apply.
    pub const PLANS: Access = Access { read: Role::Viewer, write: Role::Planner };
    /// Executors only (the executor protocol).
    pub const EXECUTOR: Access = Access { read: Role::Executor, write: Role::Executor };
    /// Admins only (tokens).
    pub const ADMIN: Access = Access { read: Role::Admin, write: Role::Admin };

    fn needs(&self, method: &Method) -> Role {
        if method == Method::GET || method == Method::HEAD {
            self.read
        } else {
            self.write
        }
    }
}

/// Who made a request, as a verified token says: what the cache keeps, and
/// what handlers find in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Principal {
    pub token_id: i64,
    pub role: Role,
}

impl Principal {
    /// How logs of changes name the caller.
    pub fn actor(&self) -> String {
        format!("token:{}", self.token_id)
    }
}

/// Verified tokens by secret digest.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
}

impl TokenCache {
    fn get(&self, digest: &[u8; 32]) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(digest).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(p, _)| *p)
    }

    fn put(&self, digest: [u8; 32], principal: Principal) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Only valid tokens get here, so the map stays as small as the token table;
        // still, drop expired entries now and then.
        if entries.len() > 1024 {
            entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        entries.insert(digest, (principal, Instant::now()));
    }

    /// Forgets a revoked token at once.
    pub fn evict(&self, token_id: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (p, _)| p.token_id != token_id);
    }
}

/// The browser session's cookie: it carries an API token's secret.
pub const SESSION_COOKIE: &str = "heliotrope_session";
/// The header a write from a browser session must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The secret a request presents: its bearer token, else its session
/// cookie (`true`: it came from the cookie).
pub(super) fn presented(headers: &HeaderMap) -> Option<(&str, bool)> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|s| (s.trim(), false));
    let cookie = || {
        headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then(|| (value.trim(), true))
        })
    };
    bearer.or_else(cookie).filter(|(s, _)| !s.is_empty() && s.len() <= 256)
}

/// Who a secret belongs to: from the cache, else the database.
pub(super) async fn principal(state: &AppState, secret: &str) -> Result<Principal, ApiError> {
    let digest = secret_digest(secret);
    if let Some(p) = state.tokens.get(&digest) {
        return Ok(p);
    }
    let (token_id, role) = db::tokens::authenticate(&state.pool, &digest).await?.ok_or(ApiError::Unauthorized)?;
    let p = Principal { token_id, role };
    state.tokens.put(digest, p);
    Ok(p)
}

/// The CSRF token of a session: derived from its secret, so that any
/// replica can check it, and revealing nothing of the secret.
pub fn csrf_token(secret: &str) -> String {
    Sha256::digest(format!("heliotrope-csrf:{secret}").as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Middleware: 401 without a known token, 403 when its role falls short
/// or when a write from a browser session lacks its CSRF token.
pub async fn require(
    State((state, access)): State<(AppState, Access)>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (secret, from_cookie) = presented(request.headers()).ok_or(ApiError::Unauthorized)?;
    let principal = principal(&state, secret).await?;
    let need = access.needs(request.method());
    if !principal.role.grants(need) {
        return Err(ApiError::Forbidden { have: principal.role.as_str(), need: need.as_str() });
    }
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    if from_cookie && !read {
        // Compared in constant time: the time taken says nothing of how much of a guess was right.
        let csrf = request.headers().get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(csrf, csrf_token(secret).as_bytes())) {
            return Err(ApiError::MissingCsrf);
        }
    }
    tracing::Span::current().record("token_id", principal.token_id);
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}
