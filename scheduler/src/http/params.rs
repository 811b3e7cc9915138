//! Query parameters a route does not take are refused (400), as request
//! bodies refuse unknown fields: an ignored parameter would otherwise be a
//! typo the caller never hears of, and a key that a viewer could vary to
//! force read-cache misses. What each route takes is read once from the
//! OpenAPI document, so the contract and the check cannot drift apart.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::OpenApi;

use super::error::ApiError;
use super::openapi::ApiDoc;

/// Per documented route (method, path template): the query parameters it takes.
static TAKEN: LazyLock<HashMap<(Method, String), HashSet<String>>> = LazyLock::new(|| {
    let doc = ApiDoc::openapi();
    let mut taken = HashMap::new();
    for (path, item) in &doc.paths.paths {
        let operations: [(Method, &Option<Operation>); 5] = [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::PATCH, &item.patch),
            (Method::DELETE, &item.delete),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let names = operation
                .parameters
                .iter()
                .flatten()
                .filter(|p| matches!(p.parameter_in, ParameterIn::Query))
                .map(|p| p.name.clone())
                .collect();
            taken.insert((method, path.clone()), names);
        }
    }
    taken
});

/// Refuses a request to a documented route whose query names a parameter
/// the route does not take. Routes outside the document (the dashboard's
/// files) are left alone.
pub async fn refuse_unknown(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let method = if request.method() == Method::HEAD { Method::GET } else { request.method().clone() };
    if let (Some(route), Some(query)) = (route, request.uri().query()) {
        if let Some(taken) = TAKEN.get(&(method, route)) {
            for (name, _) in form_urlencoded::parse(query.as_bytes()) {
                if !taken.contains(name.as_ref()) {
                    let mut known: Vec<&str> = taken.iter().map(String::as_str).collect();
                    known.sort_unstable();
                    let takes = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                    let message = format!("unknown query parameter '{name}' (this route takes: {takes})");
                    return ApiError::BadRequest(message).into_response();
                }
            }
        }
    }
    next.run(request).await
}
