//! `/v1/tokens`: API tokens (admin only). A secret is shown once, when made.

use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{extract::State, Json, Router};
use heliotrope_api_spec::{CreatedToken, NewToken, PageParams, Token, TokenFilter, TokenPage};

use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::db;
use crate::domain::inventory::parse_token;
use crate::domain::page::PageRequest;
use crate::domain::token::{generate_secret, secret_digest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token).get(get_token))
}

/// List tokens (never their secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(PageParams, TokenFilter),
    responses((status = 200, body = TokenPage), ErrorResponses))]
pub async fn list_tokens(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<TokenFilter>,
) -> Result<Json<TokenPage>, ApiError> {
    let page = db::tokens::list(&state.pool, PageRequest::parse(&page)?, &filter).await?;
    Ok(Json(TokenPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Create a token; the answer holds its secret, shown this once.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), ErrorResponses))]
pub async fn create_token(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let spec = parse_token(spec)?;
    let secret = generate_secret();
    let token =
        db::tokens::insert(&state.pool, &spec.name, spec.role, spec.site.as_deref(), &secret_digest(&secret)).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

/// Get one token (not its secret).
#[utoipa::path(get, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = i64, Path)),
    responses((status = 200, body = Token), ErrorResponses))]
pub async fn get_token(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Token>, ApiError> {
    Ok(Json(db::tokens::get(&state.pool, id).await?))
}

/// Revoke a token; the last admin token cannot be revoked (409).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = i64, Path)),
    responses((status = 204), ErrorResponses))]
pub async fn revoke_token(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, ApiError> {
    db::tokens::delete(&state.pool, id).await?;
    state.tokens.evict(id);
    Ok(StatusCode::NO_CONTENT)
}
