//! `/v1/sites/{id}/signals` (push and query a site's carbon and price) and
//! `/v1/signals/current` (the newest of both for every site).

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use heliotrope_api_spec::{CurrentSignals, IngestParams, IngestReport, SeriesParams, SignalRow, SignalSeries};

use super::error::{ApiError, ErrorResponses};
use super::extract::{is_json, media_type, parse_json, read_body, ApiPath, ApiQuery};
use super::AppState;
use crate::db;
use crate::domain::signals::{points_from_csv, points_from_rows, series_window, IngestOptions, Rejection};
use crate::domain::ValidationError;

/// Largest push accepted: 8 weeks of hourly rows for 16 regions (the real trace files) fit many times over.
pub const MAX_PUSH_BYTES: usize = 64 * 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sites/{id}/signals", get(get_series).post(push_signals))
        .route("/v1/signals/current", get(current_signals))
        .layer(DefaultBodyLimit::max(MAX_PUSH_BYTES))
}

/// Push carbon and price points for a site: a JSON array of rows, or CSV
/// (`text/csv`) with header `timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency[,forecast,issued_at]`
/// (the real trace files' `region`, `carbon_direct_g_per_kwh` and `ci_estimated` columns are understood;
/// rows of other regions are skipped). All or nothing: the first bad row is named and nothing is stored.
#[utoipa::path(post, path = "/v1/sites/{id}/signals", tag = "signals", params(("id" = i64, Path), IngestParams),
    request_body(content(
        (Vec<SignalRow> = "application/json"),
        (String = "text/csv", example = "timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency\n2026-11-26T00:00:00Z,320.5,84.1,EUR\n"),
    )),
    responses((status = 200, body = IngestReport), ErrorResponses))]
pub async fn push_signals(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(params): ApiQuery<IngestParams>,
    request: Request,
) -> Result<Json<IngestReport>, ApiError> {
    let options = IngestOptions::parse(&params)?;
    let media = media_type(request.headers());
    let body = read_body(request, &state).await?;
    let (_, region) = db::signals::site_region(&state.pool, id).await?;
    let now = Utc::now();
    let rejected = |r: Rejection| {
        state.metrics.signal_rejected("push", r.reason);
        ApiError::from(ValidationError::from(r))
    };
    let (points, rows, skipped_other_region) = match media.as_deref() {
        Some("text/csv") => {
            let push = points_from_csv(&body, &options, &region, now).map_err(rejected)?;
            (push.points, push.rows, push.skipped_other_region)
        }
        Some(m) if is_json(m) => {
            let rows: Vec<SignalRow> =
                parse_json(&body).inspect_err(|_| state.metrics.signal_rejected("push", "unparseable"))?;
            (points_from_rows(&rows, &options, now).map_err(rejected)?, rows.len() as u64, 0)
        }
        _ => return Err(ApiError::UnsupportedMediaType),
    };
    let points_stored = db::signals::upsert(&state.pool, id, "push", &points).await?;
    Ok(Json(IngestReport { rows, points: points_stored, skipped_other_region }))
}

/// A site's carbon or price series: one value per UTC hour (default) or
/// every stored point, each the best known (actual over forecast, newest forecast first).
#[utoipa::path(get, path = "/v1/sites/{id}/signals", tag = "signals", params(("id" = i64, Path), SeriesParams),
    responses((status = 200, body = SignalSeries), ErrorResponses))]
pub async fn get_series(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(params): ApiQuery<SeriesParams>,
) -> Result<Json<SignalSeries>, ApiError> {
    let (from, to) = series_window(params.from, params.to, state.clock.now())?;
    let resolution = params.resolution.unwrap_or_default();
    let (site, _) = db::signals::site_region(&state.pool, id).await?;
    let points = db::signals::series(&state.pool, id, params.signal, from, to, resolution).await?;
    Ok(Json(SignalSeries { site, signal: params.signal, resolution, points }))
}

/// The newest known carbon intensity and price of every site, in one call.
#[utoipa::path(get, path = "/v1/signals/current", tag = "signals",
    responses((status = 200, body = CurrentSignals), ErrorResponses))]
pub async fn current_signals(State(state): State<AppState>) -> Result<Json<CurrentSignals>, ApiError> {
    Ok(Json(CurrentSignals { items: db::signals::current(&state.pool, state.clock.now()).await? }))
}
