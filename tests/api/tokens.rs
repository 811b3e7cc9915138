//! `/v1/tokens`: secrets shown once, stored hashed, revocable.

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{site, spawn_app, ADMIN};
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_new_token_works_with_its_role_until_revoked(pool: PgPool) {
    let app = spawn_app(pool).await;
    let created = app.create("/v1/tokens", json!({"name": "grafana", "role": "viewer"})).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("htp_"));
    assert_eq!(created["token"]["role"], "viewer");
    assert_eq!(created["token"]["last_used_at"], json!(null));

    let read = app.send(Method::GET, "/v1/sites", Some(&secret), None).await;
    assert_eq!(read.status, 200);
    app.send(Method::POST, "/v1/sites", Some(&secret), Some(&site("A"))).await.assert_error(403, "viewer");

    let path = format!("/v1/tokens/{}", created["token"]["id"]);
    let listed = app.get(&path).await.body;
    assert!(listed["last_used_at"].is_string(), "use is recorded: {listed}");
    assert!(listed.get("secret").is_none());

    // Only the digest is stored.
    let stored: i64 = sqlx::query_scalar("select count(*) from api_token where secret_sha256 = sha256($1::bytea)")
        .bind(secret.as_bytes())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    let plain: i64 =
        sqlx::query_scalar("select count(*) from api_token where position($1::bytea in secret_sha256) > 0")
            .bind(secret.as_bytes())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(plain, 0);

    assert_eq!(app.delete(&path).await.status, 204);
    app.send(Method::GET, "/v1/sites", Some(&secret), None).await.assert_error(401, "token");
    app.delete(&path).await.assert_error(404, "token");
    app.get(&path).await.assert_error(404, "token");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn listing_never_shows_secrets(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/tokens", json!({"name": "ci", "role": "planner"})).await;
    let page = app.get("/v1/tokens").await;
    assert_eq!(page.status, 200);
    let text = page.body.to_string();
    assert!(!text.contains("htp_"), "{text}");
    assert_eq!(page.body["items"].as_array().unwrap().len(), 2);
    assert_eq!(app.get("/v1/tokens?role=planner").await.body["items"][0]["name"], "ci");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_last_admin_token_stays(pool: PgPool) {
    let app = spawn_app(pool).await;
    let admins = app.get("/v1/tokens?role=admin").await.body;
    let bootstrap = admins["items"][0]["id"].clone();
    app.delete(&format!("/v1/tokens/{bootstrap}")).await.assert_error(409, "last admin");

    let other = app.create("/v1/tokens", json!({"name": "ops", "role": "admin"})).await;
    assert_eq!(app.delete(&format!("/v1/tokens/{bootstrap}")).await.status, 204);
    app.send(Method::GET, "/v1/tokens", Some(ADMIN), None).await.assert_error(401, "token");
    let new_admin = other["secret"].as_str().unwrap();
    let still = app.send(Method::GET, "/v1/tokens", Some(new_admin), None).await;
    assert_eq!(still.status, 200);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn rules(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.post("/v1/tokens", json!({"name": "x", "role": "root"})).await.assert_error(422, "role");
    app.post("/v1/tokens", json!({"name": "", "role": "viewer"})).await.assert_error(422, "name");
    app.post("/v1/tokens", json!({"role": "viewer"})).await.assert_error(422, "name");
    app.post("/v1/tokens", json!({"name": "x", "role": "viewer", "secret": "mine"})).await.assert_error(422, "secret");
    assert_eq!(app.count("api_token").await, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_rotated_admin_token_from_the_environment_replaces_the_old_one(pool: PgPool) {
    use heliotrope::domain::token::secret_digest;
    // The harness's own admin secret came from the environment path too: it is the first "old" one.
    let app = spawn_app(pool).await;
    let new = "htp_rotated-admin-secret-number-two-0002";
    heliotrope::db::tokens::ensure_admin(&app.pool, Some(new)).await.unwrap();
    let stored = |secret: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select count(*) from api_token where secret_sha256 = $1")
                .bind(&secret_digest(secret)[..])
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!((stored(ADMIN).await, stored(new).await), (0, 1), "the old secret is gone, the new one stands");
    let from_env: i64 = sqlx::query_scalar("select count(*) from api_token where name = 'admin-from-env'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(from_env, 1);
    assert_eq!(app.send(Method::GET, "/v1/tokens", Some(new), None).await.status, 200);
    // Starting again with the same secret changes nothing.
    heliotrope::db::tokens::ensure_admin(&app.pool, Some(new)).await.unwrap();
    assert_eq!(stored(new).await, 1);
}
