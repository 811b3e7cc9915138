//! `GET /v1/events`: migrations' changes of state and progress as
//! server-sent events, for dashboards. Every replica hears all of it
//! through Postgres notifications (`db::changes::watch_migrations`), so a
//! client may connect to any of them.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use futures_util::{Stream, StreamExt};
use heliotrope_api_spec::{MigrationNews, NewsFilter};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::auth::Principal;
use super::error::ErrorResponses;
use super::extract::ApiQuery;
use super::AppState;
use crate::db;

/// How much news a slow client may fall behind before it misses some (it is then told how much).
pub const BACKLOG: usize = 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", get(stream_events))
}

/// Stream migration news (server-sent events, never ending): `state`
/// events with each entry of a migration's log (a change of state, a cap
/// change, a network step with its report), `progress` events with each
/// progress report from its source, `recovered` events as a lost site's VM
/// is handed to its standby (its record moves there), then runs there or
/// fails, with its recovery point and the data known lost (not sent when
/// `migration` filters the stream), and `lagged` (`{"missed": n}`) when
/// this client fell too far behind. A comment line every 15 s keeps the
/// connection open.
#[utoipa::path(get, path = "/v1/events", tag = "migrations", params(NewsFilter),
    responses((status = 200, content_type = "text/event-stream", body = MigrationNews), ErrorResponses))]
pub async fn stream_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiQuery(filter): ApiQuery<NewsFilter>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // A stream ends when the server stops, and when its token is revoked (within REVALIDATE).
    let (stopping, pool) = (state.stopping.clone(), state.pool.clone());
    let ended = async move {
        tokio::select! {
            _ = stopping.cancelled() => {}
            _ = revoked(pool, caller.token_id) => {}
        }
    };
    let news = BroadcastStream::new(state.news.subscribe())
        .filter(move |item| {
            let wanted = match (item, filter.migration) {
                (Ok(news), Some(id)) => news.migration() == Some(id),
                _ => true,
            };
            std::future::ready(wanted)
        })
        .map(|item| Ok(as_event(item)))
        // An open stream would hold graceful shutdown up forever.
        .take_until(ended);
    Sse::new(news).keep_alive(KeepAlive::default())
}

/// How often an open stream checks that its token still stands.
const REVALIDATE: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves once token `token_id` is revoked (a failed check is not a revocation).
async fn revoked(pool: sqlx::PgPool, token_id: i64) {
    loop {
        tokio::time::sleep(REVALIDATE).await;
        match db::tokens::exists(&pool, token_id).await {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => tracing::warn!(error = %e, "checking an event stream's token failed"),
        }
    }
}

fn as_event(item: Result<MigrationNews, BroadcastStreamRecvError>) -> Event {
    match item {
        Ok(news) => {
            let data = serde_json::to_string(&news).unwrap_or_default();
            Event::default().event(news.kind()).data(data)
        }
        Err(BroadcastStreamRecvError::Lagged(missed)) => {
            Event::default().event("lagged").data(serde_json::json!({ "missed": missed }).to_string())
        }
    }
}
