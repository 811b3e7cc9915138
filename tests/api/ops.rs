//! Operations endpoints, the error shape of unknown routes, and the
//! committed OpenAPI document.

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{spawn_app, ADMIN};
use reqwest::Method;
use sqlx::PgPool;

#[sqlx::test(migrator = "MIGRATOR")]
async fn health_readiness_and_metrics(pool: PgPool) {
    let app = spawn_app(pool).await;
    let health = app.send(Method::GET, "/healthz", None, None).await;
    assert_eq!((health.status.as_u16(), health.body["status"].as_str()), (200, Some("ok")));
    let ready = app.send(Method::GET, "/readyz", None, None).await;
    assert_eq!((ready.status.as_u16(), ready.body["status"].as_str()), (200, Some("ready")));

    app.get("/v1/sites").await;
    app.get("/v1/sites/77").await;
    let text = reqwest::get(app.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        text.contains(r#"heliotrope_http_requests_total{method="GET",route="/v1/sites",status="200"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"route="/v1/sites/{id}",status="404""#), "{text}");
    assert!(text.contains("heliotrope_http_request_duration_seconds_bucket"), "{text}");

    // Without its database the process is alive but not ready.
    app.pool.close().await;
    let unready = app.send(Method::GET, "/readyz", None, None).await;
    unready.assert_error(503, "database");
    assert_eq!(app.send(Method::GET, "/healthz", None, None).await.status, 200);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn unknown_routes_and_methods_answer_json(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.send(Method::GET, "/v1/nothing", Some(ADMIN), None).await.assert_error(404, "route");
    app.send(Method::GET, "/v1/nothing", None, None).await.assert_error(404, "route");
    let patch = app.send(Method::PATCH, "/v1/sites/1", Some(ADMIN), None).await;
    patch.assert_error(405, "method");
}

/// The committed `api-spec/openapi.json` must be what the code generates.
/// Run with `HELIOTROPE_UPDATE_OPENAPI=1` to rewrite it.
#[test]
fn committed_openapi_document_is_fresh() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../api-spec/openapi.json");
    let generated = heliotrope::http::openapi::document();
    if std::env::var_os("HELIOTROPE_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "api-spec/openapi.json is stale: run `HELIOTROPE_UPDATE_OPENAPI=1 cargo nextest run --workspace -E 'test(openapi)'` \
         (or `heliotrope openapi > api-spec/openapi.json`) and commit it"
    );
}
