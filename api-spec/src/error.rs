//! The single error shape every failing request gets:
//! `{"error":{"code":"...","message":"..."}}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Machine-readable cause of a failure. Each code maps to exactly one HTTP
/// status (see the scheduler's `http::error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request could not be parsed (malformed JSON, bad query string).
    BadRequest,
    /// 401: no bearer token, or one that is unknown.
    Unauthorized,
    /// 403: the token's role may not do this.
    Forbidden,
    /// 404: no such resource or route.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: a unique name is taken, or the resource is still in use.
    Conflict,
    /// 409: a migration's destination confirmed it `done` before it reached
    /// `cutover` (its source has not reported its cutover yet, or the
    /// migration is recovering): ask again. One that ended otherwise is
    /// refused with `conflict`; the message says its state.
    NotInCutover,
    /// 413: the body is larger than the server accepts.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 422: the request parsed but a field is invalid; the message names it.
    ValidationFailed,
    /// 422: no placement satisfies the constraints; the message names the binding one.
    Infeasible,
    /// 429: too many failed authentications from this address; `Retry-After` says when to try again.
    TooManyRequests,
    /// 500: a fault on the server side; details are in the server's log only.
    Internal,
    /// 503: a dependency (the database) is unavailable.
    Unavailable,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for machines (`code`) and for people (`message`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// A sentence naming the offending field or resource where there is one.
    pub message: String,
}
