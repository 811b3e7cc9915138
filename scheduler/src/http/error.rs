//! The one mapping from failures to HTTP responses.
//!
//! Every handler returns `Result<_, ApiError>`; every extractor rejection is
//! turned into an `ApiError` too, so that each failing request, whatever
//! failed, answers `{"error":{"code","message"}}` with the status of its
//! code. Server-side faults are logged here, once, with their cause chain,
//! and answer an opaque message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use heliotrope_api_spec::{ErrorBody, ErrorCode, ErrorDetail};
use utoipa::IntoResponses;

use crate::db::StoreError;
use crate::domain::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("a valid bearer token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    #[error("this token's role ({have}) may not do this; it needs {need}")]
    Forbidden { have: &'static str, need: &'static str },
    #[error("a write from a browser session needs the X-CSRF-Token header GET /v1/session gives")]
    MissingCsrf,
    /// The token may not act so (an executor token for another site's executor).
    #[error("{0}")]
    NotYours(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotInCutover(String),
    #[error("the request body is larger than the server accepts")]
    PayloadTooLarge,
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    Infeasible(String),
    #[error("the database is unavailable")]
    Unavailable,
    /// Too many failed authentications from the caller's address.
    #[error("too many failed authentications from this address; try again in {} s", .0.as_secs().max(1))]
    TooManyFailures(std::time::Duration),
    /// The planner's solver gave up (time limit); trying later or with a shorter horizon may help.
    #[error("{0}")]
    Unsolved(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::Forbidden { .. } | ApiError::MissingCsrf | ApiError::NotYours(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::NotInCutover(_) => ErrorCode::NotInCutover,
            ApiError::PayloadTooLarge => ErrorCode::PayloadTooLarge,
            ApiError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            ApiError::Validation(_) => ErrorCode::ValidationFailed,
            ApiError::Infeasible(_) => ErrorCode::Infeasible,
            ApiError::Unavailable | ApiError::Unsolved(_) => ErrorCode::Unavailable,
            ApiError::TooManyFailures(_) => ErrorCode::TooManyRequests,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// The status each error code answers with: one table, used by every response.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Conflict | ErrorCode::NotInCutover => StatusCode::CONFLICT,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::ValidationFailed | ErrorCode::Infeasible => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "request failed on the server side");
        }
        let code = self.code();
        let body = ErrorBody { error: ErrorDetail { code, message: self.to_string() } };
        let mut response = (status_of(code), Json(body)).into_response();
        if let ApiError::TooManyFailures(wait) = self {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, wait.as_secs().max(1).into());
        }
        if code == ErrorCode::Unauthorized {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"heliotrope\""),
            );
        }
        response
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::Validation(e.to_string())
    }
}

impl From<crate::overview::SavingsError> for ApiError {
    fn from(e: crate::overview::SavingsError) -> Self {
        match e {
            crate::overview::SavingsError::Store(e) => e.into(),
            e @ crate::overview::SavingsError::Pricing(_) => ApiError::Internal(e.into()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::NotInCutover(message) => ApiError::NotInCutover(message),
            StoreError::NotYours(message) => ApiError::NotYours(message),
            e @ StoreError::UnknownReference { .. } => ApiError::Validation(e.to_string()),
            StoreError::Database(e) => ApiError::from(e),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => ApiError::Unavailable,
            e => ApiError::Internal(e.into()),
        }
    }
}

/// The error answers every `/v1` route may give, documented once.
#[allow(dead_code)] // Only its derived OpenAPI description is used.
#[derive(IntoResponses)]
pub enum ErrorResponses {
    /// The request could not be parsed.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// No valid bearer token.
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// The token's role may not do this.
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// No such resource.
    #[response(status = 404)]
    NotFound(#[to_schema] ErrorBody),
    /// The name is taken, or the resource is still in use.
    #[response(status = 409)]
    Conflict(#[to_schema] ErrorBody),
    /// The body is too large.
    #[response(status = 413)]
    PayloadTooLarge(#[to_schema] ErrorBody),
    /// The body is not JSON.
    #[response(status = 415)]
    UnsupportedMediaType(#[to_schema] ErrorBody),
    /// A field is invalid; the message names it.
    #[response(status = 422)]
    ValidationFailed(#[to_schema] ErrorBody),
    /// Too many failed authentications from this address (see `Retry-After`).
    #[response(status = 429)]
    TooManyRequests(#[to_schema] ErrorBody),
    /// The database is unavailable.
    #[response(status = 503)]
    Unavailable(#[to_schema] ErrorBody),
}
