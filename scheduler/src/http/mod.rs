//! The HTTP edge: routing, authentication, metrics and the error mapping.
//!
//! Handlers are thin: extract, call `domain` to check, call `db` to store,
//! answer. Each resource module exposes `router()`; [`app`] merges them
//! and wraps each group of routes in the role check it needs.

pub mod auth;
pub mod cache;
pub mod dashboard;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod executors;
pub mod extract;
pub mod feeds;
pub mod groups;
pub mod links;
pub mod migrations;
pub mod openapi;
pub mod ops;
pub mod overview;
pub mod params;
pub mod plans;
pub mod rebalancer;
pub mod recoveries;
pub mod server;
pub mod session;
pub mod signals;
pub mod simulations;
pub mod sites;
pub mod tokens;
pub mod vms;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response};
use axum::Router;
use heliotrope_api_spec::MigrationNews;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use self::auth::{Access, FailedAuth, TokenCache};
use self::cache::ReadCache;
use self::error::ApiError;
use crate::config::PlannerConfig;
use crate::domain::clock::Clock;
use crate::metrics::Metrics;

/// Largest request body accepted (bulk inventory writes stay well below).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub tokens: Arc<TokenCache>,
    /// Failed authentications per caller address (429 past a budget).
    pub failed_auth: Arc<FailedAuth>,
    pub metrics: Arc<Metrics>,
    pub read_cache: Arc<ReadCache>,
    pub planner: PlannerConfig,
    /// Migration news from every replica (see `db::changes::watch_migrations`), for `GET /v1/events`.
    pub news: broadcast::Sender<MigrationNews>,
    /// This replica's name, and whether it takes part in leading the rebalancer.
    pub replica: Arc<str>,
    pub rebalances: bool,
    /// Cancelled when the server begins to shut down (ends open event streams).
    pub stopping: CancellationToken,
    /// One simulation at a time per replica (another is refused meanwhile).
    pub simulation_slots: Arc<tokio::sync::Semaphore>,
    /// Browsers reach the API over https (`--public-url https://...`): session cookies are `Secure`.
    pub secure_cookies: bool,
    /// One pricing of `GET /v1/savings` at a time per replica (others wait for it).
    pub savings_pricing: Arc<tokio::sync::Semaphore>,
    /// What "now" is for plans, signals and savings: real time, or the demo's accelerated clock.
    pub clock: Clock,
}

impl AppState {
    pub fn new(pool: PgPool, planner: PlannerConfig, replica: &str, rebalances: bool) -> Self {
        AppState {
            pool,
            tokens: Arc::default(),
            failed_auth: Arc::default(),
            metrics: Arc::default(),
            read_cache: Arc::default(),
            planner,
            news: broadcast::channel(events::BACKLOG).0,
            replica: replica.into(),
            rebalances,
            stopping: CancellationToken::new(),
            simulation_slots: Arc::new(tokio::sync::Semaphore::new(1)),
            secure_cookies: false,
            savings_pricing: Arc::new(tokio::sync::Semaphore::new(1)),
            clock: Clock::new(1.0, chrono::Utc::now()),
        }
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    // The role check wraps the cache: a cached answer is never served to a caller the check refuses.
    let guarded = |router: Router<AppState>, access: Access| {
        router.route_layer(from_fn_with_state((state.clone(), access), auth::require))
    };
    let cached = |router: Router<AppState>| router.route_layer(from_fn_with_state(state.clone(), cache::cached));
    Router::new()
        .merge(guarded(cached(sites::router()), Access::INVENTORY))
        .merge(guarded(cached(links::router()), Access::INVENTORY))
        .merge(guarded(cached(vms::router()), Access::INVENTORY))
        .merge(guarded(cached(groups::router()), Access::INVENTORY))
        // Executors (heartbeats) and tokens (last use) change without notifications: never cached.
        .merge(guarded(executors::router(), Access::INVENTORY))
        .merge(guarded(tokens::router(), Access::ADMIN))
        .merge(guarded(feeds::router(), Access::ADMIN))
        // Signals change without inventory notifications: never cached.
        .merge(guarded(signals::router(), Access::INVENTORY))
        // Plans change with every proposal: never cached.
        .merge(guarded(plans::router(), Access::PLANS))
        .merge(guarded(migrations::router(), Access::PLANS))
        .merge(guarded(events::router(), Access::PLANS))
        .merge(guarded(rebalancer::router(), Access::PLANS))
        .merge(guarded(overview::router(), Access::PLANS))
        .merge(guarded(simulations::router(), Access::PLANS))
        .merge(guarded(recoveries::router(), Access::PLANS))
        .merge(guarded(dispatch::router(), Access::EXECUTOR))
        .merge(session::router())
        .merge(ops::router())
        .merge(dashboard::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        // Before the role check and the cache: an unknown parameter is no cache key.
        .layer(axum::middleware::from_fn(params::refuse_unknown))
        .layer(map_response(json_method_not_allowed))
        .layer(axum::middleware::from_fn(no_store))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn_with_state(state.clone(), track))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
            tracing::info_span!("request", method = %request.method(), route, path = %request.uri().path(),
                token_id = tracing::field::Empty)
        }))
        .with_state(state)
}

/// Times every request and counts it under its route and status.
async fn track(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().to_string();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics.request_answered(method, route, response.status().as_u16(), started.elapsed());
    response
}

/// API answers (tokens' secrets among them) are for their caller alone:
/// no shared or browser cache keeps them. The dashboard's files may be cached.
async fn no_store(request: Request, next: axum::middleware::Next) -> Response {
    let api = request.uri().path().starts_with("/v1/");
    let mut response = next.run(request).await;
    if api && !response.headers().contains_key(axum::http::header::CACHE_CONTROL) {
        let no_store = axum::http::HeaderValue::from_static("no-store");
        response.headers_mut().insert(axum::http::header::CACHE_CONTROL, no_store);
    }
    response
}

/// axum answers a known path with an unsupported method by an empty 405;
/// give it the JSON error body like every other failure.
async fn json_method_not_allowed(response: Response) -> Response {
    if response.status() == axum::http::StatusCode::METHOD_NOT_ALLOWED
        && response.headers().get(axum::http::header::CONTENT_TYPE).is_none()
    {
        let allow = response.headers().get(axum::http::header::ALLOW).cloned();
        let mut json = ApiError::MethodNotAllowed("this route does not take that method".into()).into_response();
        if let Some(allow) = allow {
            json.headers_mut().insert(axum::http::header::ALLOW, allow);
        }
        return json;
    }
    response
}
