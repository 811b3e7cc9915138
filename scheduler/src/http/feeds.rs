//! `/v1/feeds`: where each site's carbon and price come from (admin only),
//! with the health of their polling.

use axum::http::StatusCode;
use axum::routing::get;
use axum::{extract::State, Json, Router};
use heliotrope_api_spec::{Feed, FeedFilter, FeedPage, FeedSpec, PageParams};

use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::db;
use crate::domain::feeds::parse_feed;
use crate::domain::inventory::check_filter_names;
use crate::domain::page::PageRequest;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/feeds", get(list_feeds).post(create_feed))
        .route("/v1/feeds/{id}", get(get_feed).put(replace_feed).delete(delete_feed))
}

/// List feeds with their health.
#[utoipa::path(get, path = "/v1/feeds", tag = "feeds", params(PageParams, FeedFilter),
    responses((status = 200, body = FeedPage), ErrorResponses))]
pub async fn list_feeds(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<FeedFilter>,
) -> Result<Json<FeedPage>, ApiError> {
    check_filter_names(&[("site", filter.site.as_deref())])?;
    let page = db::feeds::list(&state.pool, PageRequest::parse(&page)?, &filter).await?;
    Ok(Json(FeedPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Create a feed; polling starts within a minute.
#[utoipa::path(post, path = "/v1/feeds", tag = "feeds", request_body = FeedSpec,
    responses((status = 201, body = Feed), ErrorResponses))]
pub async fn create_feed(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<FeedSpec>,
) -> Result<(StatusCode, Json<Feed>), ApiError> {
    let feed = db::feeds::store(&state.pool, None, &parse_feed(spec)?).await?;
    Ok((StatusCode::CREATED, Json(feed)))
}

/// Get one feed: its settings and health (last success, last error, points ingested, stale).
#[utoipa::path(get, path = "/v1/feeds/{id}", tag = "feeds", params(("id" = i64, Path)),
    responses((status = 200, body = Feed), ErrorResponses))]
pub async fn get_feed(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Feed>, ApiError> {
    Ok(Json(db::feeds::get(&state.pool, id).await?))
}

/// Replace a feed's settings (its health stays).
#[utoipa::path(put, path = "/v1/feeds/{id}", tag = "feeds", params(("id" = i64, Path)), request_body = FeedSpec,
    responses((status = 200, body = Feed), ErrorResponses))]
pub async fn replace_feed(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(spec): ApiJson<FeedSpec>,
) -> Result<Json<Feed>, ApiError> {
    Ok(Json(db::feeds::store(&state.pool, Some(id), &parse_feed(spec)?).await?))
}

/// Delete a feed; the points it brought stay.
#[utoipa::path(delete, path = "/v1/feeds/{id}", tag = "feeds", params(("id" = i64, Path)),
    responses((status = 204), ErrorResponses))]
pub async fn delete_feed(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, ApiError> {
    db::feeds::delete(&state.pool, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
