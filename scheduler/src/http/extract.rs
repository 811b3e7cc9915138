//! Extractors whose rejections are [`ApiError`]s, so that a malformed
//! request gets the same JSON error shape as every other failure.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A path parameter; a malformed one is a 400 that says which.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query parameters; a malformed one is a 400 that says which.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

/// A JSON body. Unlike `axum::Json` it rejects fields the type does not
/// know (a misspelt `pined: true` must not silently leave a VM unpinned),
/// and names the path of whatever is wrong: syntax errors are 400, values
/// of the wrong type or shape 422.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !media_type(req.headers()).is_some_and(|m| is_json(&m)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = read_body(req, state).await?;
        parse_object(&bytes).map(ApiJson)
    }
}

/// [`ApiJson`] for a body that may be left out: an empty body is `T::default()`.
pub struct ApiJsonOrEmpty<T>(pub T);

impl<S, T> FromRequest<S> for ApiJsonOrEmpty<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = media_type(req.headers()).is_some_and(|m| is_json(&m));
        let bytes = read_body(req, state).await?;
        match (bytes.is_empty(), json) {
            (true, _) => Ok(ApiJsonOrEmpty(T::default())),
            (false, true) => parse_object(&bytes).map(ApiJsonOrEmpty),
            (false, false) => Err(ApiError::UnsupportedMediaType),
        }
    }
}

/// The request's media type, lower-cased, without parameters.
pub fn media_type(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

/// Whether a media type is JSON (`application/json` or `application/*+json`).
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || (media_type.starts_with("application/") && media_type.ends_with("+json"))
}

/// The whole body, within the route's size limit.
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|r: BytesRejection| {
        if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(r.body_text())
        }
    })
}

/// [`parse_json`] for a request body, which is a JSON object (serde would
/// also read a struct from an array of its fields, `[]` as all defaults).
fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => parse_json(bytes),
        Some(_) => Err(ApiError::Validation("the body must be a JSON object".into())),
    }
}

/// Parses a JSON document into `T`, refusing unknown fields.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut unknown = Vec::new();
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let tracked = serde_ignored::Deserializer::new(&mut json, &mut record);
    let value: T = serde_path_to_error::deserialize(tracked).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." { inner.to_string() } else { format!("{path}: {inner}") };
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::Validation(message),
            _ => ApiError::BadRequest(format!("malformed JSON: {message}")),
        }
    })?;
    json.end().map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    if let Some(field) = unknown.first() {
        return Err(ApiError::Validation(format!("{field}: unknown field")));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliotrope_api_spec::VmSpec;

    #[test]
    fn a_request_body_is_an_object_not_an_array_of_its_fields() {
        let refused = parse_object::<heliotrope_api_spec::SiteFailure>(b" []").unwrap_err();
        assert!(matches!(refused, ApiError::Validation(_)), "{refused:?}");
        assert!(parse_object::<heliotrope_api_spec::SiteFailure>(b"{}").is_ok());
    }

    fn message(e: ApiError) -> (String, String) {
        let kind = match &e {
            ApiError::Validation(_) => "422",
            ApiError::BadRequest(_) => "400",
            _ => "other",
        };
        (kind.to_owned(), e.to_string())
    }

    #[test]
    fn names_the_wrong_field() {
        let body =
            br#"{"name":"a","vcpus":"two","memory_gib":1,"disk_gib":1,"dirty_rate_mbps":1,"site":"s","driver":"sim"}"#;
        let (kind, msg) = message(parse_json::<VmSpec>(body).unwrap_err());
        assert_eq!(kind, "422");
        assert!(msg.starts_with("vcpus:"), "{msg}");
    }

    #[test]
    fn refuses_unknown_fields() {
        let body = br#"{"name":"a","vcpus":2,"memory_gib":1,"disk_gib":1,"dirty_rate_mbps":1,"site":"s","driver":"sim","pined":true}"#;
        let (kind, msg) = message(parse_json::<VmSpec>(body).unwrap_err());
        assert_eq!(kind, "422");
        assert!(msg.contains("pined"), "{msg}");
    }

    #[test]
    fn syntax_errors_are_400() {
        let trailing =
            br#"{"name":"a","vcpus":2,"memory_gib":1,"disk_gib":1,"dirty_rate_mbps":1,"site":"s","driver":"sim"} x"#;
        for body in [&b"{"[..], trailing, b"nope", b""] {
            let (kind, _) = message(parse_json::<VmSpec>(body).unwrap_err());
            assert_eq!(kind, "400", "{}", String::from_utf8_lossy(body));
        }
    }
}
