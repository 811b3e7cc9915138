//! Bearer-token authentication and role checks.
//!
//! Browsers sign in once with a token (`POST /v1/session`) and then
//! present a session of their own in an HttpOnly, SameSite=Strict cookie
//! instead of a header; their writes must also carry a CSRF token, so that
//! a page elsewhere cannot make one on their behalf.
//!
//! Every router is wrapped in [`require`] with the [`Access`] it needs, so
//! no route can be added without a role check. Verified tokens are cached
//! for a few seconds: authentication is then free for busy clients, and a
//! revocation made here takes effect at once (the entry is evicted), one
//! made on another replica within [`CACHE_TTL`].

use std::collections::HashMap;
use std::net::IpAddr;
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

/// Failed authentications per address, as a token bucket: an address may
/// fail `burst` times at once (`--failed-auth-burst`, 20 by default), then
/// once per [`FAILURE_REFILL`]. While its bucket is empty, a secret not
/// already verified (in the cache) is refused with 429 before the database
/// is asked, so that guessing costs the guesser time and the database
/// nothing; clients whose secrets are good, behind the same proxy, go on.
pub struct FailedAuth {
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

const FAILURE_REFILL: Duration = Duration::from_secs(3);

impl Default for FailedAuth {
    fn default() -> Self {
        FailedAuth::new(crate::config::FAILED_AUTH_BURST)
    }
}

impl FailedAuth {
    pub fn new(burst: u32) -> FailedAuth {
        FailedAuth { burst: f64::from(burst.max(1)), buckets: Mutex::default() }
    }

    /// The failures an address has left now (its bucket refilled for the time since).
    fn left(&self, bucket: (f64, Instant), now: Instant) -> f64 {
        let (left, at) = bucket;
        (left + now.duration_since(at).as_secs_f64() / FAILURE_REFILL.as_secs_f64()).min(self.burst)
    }

    /// How long `ip` must wait, if it has no failure left.
    fn refuses(&self, ip: IpAddr) -> Option<Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let left = self.left(*buckets.get(&ip)?, Instant::now());
        (left < 1.0).then(|| FAILURE_REFILL.mul_f64(1.0 - left))
    }

    fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // Full buckets say nothing: drop them now and then, so the map stays as small as the guessers.
        if buckets.len() > 10_000 {
            buckets.retain(|_, bucket| self.left(*bucket, now) < self.burst);
        }
        let left = buckets.get(&ip).map_or(self.burst, |bucket| self.left(*bucket, now));
        buckets.insert(ip, ((left - 1.0).max(0.0), now));
    }
}

/// A cached secret: whether it is a session's (else a token's), and its digest.
/// The kind is part of the key, so a token's secret is never taken for a session's.
type CacheKey = (bool, [u8; 32]);

/// Verified tokens and sessions by secret digest.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<CacheKey, (Principal, Instant)>>,
}

impl TokenCache {
    fn get(&self, key: &CacheKey) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(p, _)| *p)
    }

    fn put(&self, key: CacheKey, principal: Principal) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Only valid tokens get here, so the map stays as small as the token table;
        // still, drop expired entries now and then.
        if entries.len() > 1024 {
            entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        entries.insert(key, (principal, Instant::now()));
    }

    /// Forgets a closed session at once.
    pub fn forget_session(&self, digest: [u8; 32]) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(&(true, digest));
    }

    /// Forgets a revoked token at once.
    pub fn evict(&self, token_id: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (p, _)| p.token_id != token_id);
    }
}

/// The browser session's cookie: it carries a session's secret (see `session`).
pub const SESSION_COOKIE: &str = "heliotrope_session";
/// The header a write from a browser session must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a request presents to be let in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Presented<'a> {
    /// An API token's secret, in `Authorization: Bearer`.
    Bearer(&'a str),
    /// A browser session's secret, in the session cookie.
    Session(&'a str),
}

/// The request's bearer token, else its session cookie.
pub(super) fn presented(headers: &HeaderMap) -> Option<Presented<'_>> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|s| Presented::Bearer(s.trim()));
    bearer.or_else(|| session_cookie(headers).map(Presented::Session)).filter(|p| {
        let (Presented::Bearer(s) | Presented::Session(s)) = p;
        !s.is_empty() && s.len() <= 256
    })
}

/// The session cookie's value, if the request carries one.
pub(super) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == SESSION_COOKIE).then(|| value.trim())
    })
}

/// Who a token's or a session's secret acts for: from the cache, else the
/// database, unless the caller's address (`peer`) has failed too often.
pub(super) async fn principal(
    state: &AppState,
    presented: Presented<'_>,
    peer: Option<IpAddr>,
) -> Result<Principal, ApiError> {
    let (Presented::Bearer(secret) | Presented::Session(secret)) = presented;
    let digest = secret_digest(secret);
    let key = (matches!(presented, Presented::Session(_)), digest);
    if let Some(p) = state.tokens.get(&key) {
        return Ok(p);
    }
    if let Some(wait) = peer.and_then(|ip| state.failed_auth.refuses(ip)) {
        return Err(ApiError::TooManyFailures(wait));
    }
    let found = match presented {
        Presented::Bearer(_) => db::tokens::authenticate(&state.pool, &digest).await?,
        Presented::Session(_) => db::sessions::authenticate(&state.pool, &digest).await?,
    };
    let Some((token_id, role)) = found else {
        if let Some(ip) = peer {
            state.failed_auth.failed(ip);
        }
        return Err(ApiError::Unauthorized);
    };
    let p = Principal { token_id, role };
    state.tokens.put(key, p);
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
    let presented = presented(request.headers()).ok_or(ApiError::Unauthorized)?;
    let principal = principal(&state, presented, super::server::peer(&request).map(|a| a.ip())).await?;
    let need = access.needs(request.method());
    if !principal.role.grants(need) {
        return Err(ApiError::Forbidden { have: principal.role.as_str(), need: need.as_str() });
    }
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    if let (Presented::Session(secret), false) = (presented, read) {
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
