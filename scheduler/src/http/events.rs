//! `GET /v1/events`: migrations' changes of state and progress as
//! server-sent events, for dashboards. Every replica hears all of it
//! through Postgres notifications (`db::changes::watch_migrations`), so a
//! client may connect to any of them.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures_util::{Stream, StreamExt};
use heliotrope_api_spec::{MigrationNews, NewsFilter};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::error::ErrorResponses;
use super::extract::ApiQuery;
use super::AppState;

/// How much news a slow client may fall behind before it misses some (it is then told how much).
pub const BACKLOG: usize = 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", get(stream_events))
}

/// Stream migration news (server-sent events, never ending): `state`
/// events with each entry of a migration's log (a change of state, a cap
/// change, a network step with its report), `progress` events with each
/// progress report from its source, and `lagged` (`{"missed": n}`) when
/// this client fell too far behind. A comment line every 15 s keeps the
/// connection open.
#[utoipa::path(get, path = "/v1/events", tag = "migrations", params(NewsFilter),
    responses((status = 200, content_type = "text/event-stream", body = MigrationNews), ErrorResponses))]
pub async fn stream_events(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<NewsFilter>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let news = BroadcastStream::new(state.news.subscribe())
        .filter(move |item| {
            let wanted = match (item, filter.migration) {
                (Ok(news), Some(id)) => news.migration() == id,
                _ => true,
            };
            std::future::ready(wanted)
        })
        .map(|item| Ok(as_event(item)))
        // An open stream would hold graceful shutdown up forever.
        .take_until(state.stopping.clone().cancelled_owned());
    Sse::new(news).keep_alive(KeepAlive::default())
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
