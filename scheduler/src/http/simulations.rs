//! `/v1/simulations`: what-if replays of the stored signals of a past
//! window through the placement policies, on the server's own inventory
//! (viewers read, planners start them), and their plots.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{extract::State, Json, Router};
use chrono::Utc;
use heliotrope_api_spec::{PageParams, Simulation, SimulationPage, SimulationRequest, SimulationStatus};

use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::db;
use crate::domain::page::PageRequest;
use crate::domain::simulation::parse_request;
use crate::simulation::plots::{self, PLOTS};
use crate::simulation::service::{self, Runner};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/simulations", get(list_simulations).post(create_simulation))
        .route("/v1/simulations/{id}", get(get_simulation))
        .route("/v1/simulations/{id}/plots/{name}", get(get_plot))
}

/// Start a simulation: the inventory as it stands, replayed through the
/// stored signals of `from` to `to` by each policy asked for (static and
/// the oracle always run). It runs in the background: poll it by id.
/// Signals missing for the window (nor found a day earlier), or an empty
/// inventory, answer 422 at once; another simulation running on this
/// server, 409.
#[utoipa::path(post, path = "/v1/simulations", tag = "simulations", request_body = SimulationRequest,
    responses((status = 202, body = Simulation, headers(("Location" = String))), ErrorResponses))]
pub async fn create_simulation(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SimulationRequest>,
) -> Result<Response, ApiError> {
    let asked = parse_request(request, Utc::now())?;
    let runner = Runner {
        pool: state.pool.clone(),
        planner: state.planner,
        slots: state.simulation_slots.clone(),
        stopping: state.stopping.clone(),
    };
    let simulation = service::start(&runner, asked).await?;
    let location = format!("/v1/simulations/{}", simulation.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(simulation)).into_response())
}

/// List simulations (without their reports), oldest first.
#[utoipa::path(get, path = "/v1/simulations", tag = "simulations", params(PageParams),
    responses((status = 200, body = SimulationPage), ErrorResponses))]
pub async fn list_simulations(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<SimulationPage>, ApiError> {
    let page = db::simulations::list(&state.pool, PageRequest::parse(&page)?).await?;
    Ok(Json(SimulationPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Get one simulation: where it stands and, once done, its report.
#[utoipa::path(get, path = "/v1/simulations/{id}", tag = "simulations", params(("id" = i64, Path)),
    responses((status = 200, body = Simulation), ErrorResponses))]
pub async fn get_simulation(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Simulation>, ApiError> {
    Ok(Json(db::simulations::get(&state.pool, id).await?))
}

/// One plot of a finished simulation, as SVG: `emissions.svg` (per hour
/// by policy), `placement.svg` (where the fleet runs over time) or
/// `savings.svg` (cumulative, over static).
#[utoipa::path(get, path = "/v1/simulations/{id}/plots/{name}", tag = "simulations",
    params(("id" = i64, Path), ("name" = String, Path, description = "emissions.svg, placement.svg or savings.svg")),
    responses((status = 200, content_type = "image/svg+xml", body = String), ErrorResponses))]
pub async fn get_plot(
    State(state): State<AppState>,
    ApiPath((id, name)): ApiPath<(i64, String)>,
) -> Result<Response, ApiError> {
    if !PLOTS.contains(&name.as_str()) {
        return Err(ApiError::NotFound(format!("no plot '{name}': one of {}", PLOTS.join(", "))));
    }
    let simulation = db::simulations::get(&state.pool, id).await?;
    let report = match (simulation.status, simulation.report) {
        (SimulationStatus::Done, Some(report)) => report,
        (SimulationStatus::Running, _) => {
            return Err(ApiError::Conflict(format!("simulation {id} is still running")));
        }
        _ => return Err(ApiError::Conflict(format!("simulation {id} failed: it has no plots"))),
    };
    let svg = tokio::task::spawn_blocking(move || plots::draw(&report, &name))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the plot of simulation {id} could not be drawn")))?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}
