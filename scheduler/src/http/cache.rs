//! A per-replica cache of inventory reads (GET answers, as serialised
//! bytes), dropped whenever the inventory changes.
//!
//! Dashboards and tools poll the same pages over and over, and building a
//! page of VMs costs Postgres a join per row plus decoding and JSON on our
//! side; a cache hit costs neither. Correctness rests on three rules:
//! - Any committed change to the cached tables notifies every replica
//!   (`db::changes`); a notification moves the cache to a new generation,
//!   and entries of an older generation are never served.
//! - An answer is stored under the generation read *before* its query ran,
//!   so a change that lands while it is built makes it stale at once.
//! - While the listener is not connected the cache serves nothing, and a
//!   successful write through this replica invalidates at once, so a client
//!   reads its own writes. Other replicas see a change within the
//!   notification's delivery time (milliseconds).
//!
//! Cached answers must not depend on who asks: the role check runs before
//! the cache (it wraps it), and inventory answers are the same for every role.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::db::changes::Change;

/// Most bytes of answers kept; past it the cache starts over.
const MAX_CACHED_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default)]
pub struct ReadCache {
    /// Moves on every change; entries of an older generation are dead.
    generation: AtomicU64,
    /// Whether changes are being heard (the listener is connected).
    live: AtomicBool,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    generation: u64,
    bytes: usize,
    answers: HashMap<String, Bytes>,
}

impl ReadCache {
    /// Applies what the change listener reports.
    pub fn on_change(&self, change: Change) {
        self.invalidate();
        self.live.store(change != Change::Lost, Ordering::SeqCst);
    }

    /// Drops every entry (by moving to a new generation).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn get(&self, key: &str) -> Option<Bytes> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        (entries.generation == generation).then(|| entries.answers.get(key).cloned()).flatten()
    }

    fn put(&self, key: String, body: Bytes, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock: a change after this point moves the
        // generation, which makes this entry unreachable.
        if generation != self.generation.load(Ordering::SeqCst) || !self.live.load(Ordering::SeqCst) {
            return;
        }
        if entries.generation != generation || entries.bytes + body.len() > MAX_CACHED_BYTES {
            *entries = Entries { generation, ..Entries::default() };
        }
        entries.bytes += body.len();
        if let Some(old) = entries.answers.insert(key, body) {
            entries.bytes -= old.len();
        }
    }
}

/// Middleware for cacheable routes: answers GETs from the cache when it
/// can, stores successful JSON answers, and invalidates after a successful write.
pub async fn cached(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let cache = &state.read_cache;
    if request.method() != Method::GET {
        let response = next.run(request).await;
        if response.status().is_success() {
            cache.invalidate();
        }
        return response;
    }
    let key = request.uri().to_string();
    if let Some(body) = cache.get(&key) {
        state.metrics.read_cache_lookup(true);
        return ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
    }
    state.metrics.read_cache_lookup(false);
    let generation = cache.generation.load(Ordering::SeqCst);
    let response = next.run(request).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, MAX_CACHED_BYTES).await {
        Ok(bytes) => {
            cache.put(key, bytes.clone(), generation);
            Response::from_parts(parts, Body::from(bytes))
        }
        Err(error) => super::error::ApiError::Internal(error.into()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live_cache() -> ReadCache {
        let cache = ReadCache::default();
        cache.on_change(Change::Listening);
        cache
    }

    #[test]
    fn serves_what_it_stored_until_a_change() {
        let cache = live_cache();
        let generation = cache.generation.load(Ordering::SeqCst);
        cache.put("/v1/vms".into(), Bytes::from_static(b"[]"), generation);
        assert_eq!(cache.get("/v1/vms").as_deref(), Some(&b"[]"[..]));
        cache.on_change(Change::Changed);
        assert_eq!(cache.get("/v1/vms"), None);
    }

    #[test]
    fn an_answer_built_across_a_change_is_not_stored() {
        let cache = live_cache();
        let before = cache.generation.load(Ordering::SeqCst);
        cache.invalidate();
        cache.put("/v1/vms".into(), Bytes::from_static(b"[]"), before);
        assert_eq!(cache.get("/v1/vms"), None);
    }

    #[test]
    fn serves_nothing_while_deaf() {
        let cache = ReadCache::default();
        cache.put("/v1/vms".into(), Bytes::from_static(b"[]"), 0);
        assert_eq!(cache.get("/v1/vms"), None, "never heard a Listening");
        let cache = live_cache();
        let generation = cache.generation.load(Ordering::SeqCst);
        cache.put("/v1/vms".into(), Bytes::from_static(b"[]"), generation);
        cache.on_change(Change::Lost);
        assert_eq!(cache.get("/v1/vms"), None);
    }
}
