//! Browser sessions: a token signs in once, and a session of its own then
//! travels in an HttpOnly, SameSite=Strict cookie; reads need only the
//! cookie, writes also the CSRF token; roles hold as with the header; the
//! session ends at sign-out, at its expiry and with its token.

use heliotrope::db::MIGRATOR;
use heliotrope::startup::Services;
use heliotrope_api_spec::Role;
use heliotrope_tests::{spawn_app, spawn_with, TestApp};
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{json, Value};
use sqlx::PgPool;

/// Signs in with `secret`; returns the cookie pair and the session.
async fn sign_in(app: &TestApp, secret: &str) -> (String, Value) {
    let answer =
        reqwest::Client::new().post(app.url("/v1/session")).json(&json!({"token": secret})).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let set = answer.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    let pair = set.split(';').next().unwrap().to_owned();
    (pair, answer.json().await.unwrap())
}

async fn with_cookie(app: &TestApp, method: reqwest::Method, path: &str, cookie: &str, csrf: Option<&str>) -> u16 {
    let mut request =
        reqwest::Client::new().request(method, app.url(path)).header(COOKIE, cookie).json(&json!({"dry_run": true}));
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    request.send().await.unwrap().status().as_u16()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_browser_session_reads_with_its_cookie_and_writes_with_its_csrf_token(pool: PgPool) {
    let app = spawn_app(pool).await;
    let planner = app.token(Role::Planner).await;
    let (cookie, session) = sign_in(&app, &planner).await;
    assert_eq!(session["role"], "planner");
    let csrf = session["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(with_cookie(&app, reqwest::Method::GET, "/v1/plans", &cookie, None).await, 200);
    let me = reqwest::Client::new().get(app.url("/v1/session")).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(me.json::<Value>().await.unwrap()["csrf_token"], csrf.as_str());
    // A write without the CSRF token, or with another's, is refused before anything happens.
    assert_eq!(with_cookie(&app, reqwest::Method::POST, "/v1/plans", &cookie, None).await, 403);
    assert_eq!(with_cookie(&app, reqwest::Method::POST, "/v1/plans", &cookie, Some("0000")).await, 403);
    assert_eq!(app.count("plan").await, 0);
    // With it, the write is made (an empty fleet's plan).
    assert_eq!(with_cookie(&app, reqwest::Method::POST, "/v1/plans", &cookie, Some(&csrf)).await, 201);
    assert_eq!(app.count("plan").await, 1);

    // A viewer's session reads, and its writes are refused, CSRF token or not.
    let viewer = app.token(Role::Viewer).await;
    let (cookie, session) = sign_in(&app, &viewer).await;
    let csrf = session["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(with_cookie(&app, reqwest::Method::GET, "/v1/sites", &cookie, None).await, 200);
    assert_eq!(with_cookie(&app, reqwest::Method::POST, "/v1/plans", &cookie, Some(&csrf)).await, 403);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn unknown_tokens_and_executors_do_not_sign_in_and_signing_out_clears_the_cookie(pool: PgPool) {
    let app = spawn_app(pool).await;
    let client = reqwest::Client::new();
    for body in [json!({"token": "htp_not-a-real-token"}), json!({"token": ""}), json!({"token": "a;b"})] {
        let answer = client.post(app.url("/v1/session")).json(&body).send().await.unwrap();
        assert_eq!(answer.status(), 401, "{body}");
        assert!(answer.headers().get(SET_COOKIE).is_none());
    }
    let executor = app.token(Role::Executor).await;
    let answer = client.post(app.url("/v1/session")).json(&json!({"token": executor})).send().await.unwrap();
    assert_eq!(answer.status(), 403);
    let bogus = "heliotrope_session=htp_nope";
    assert_eq!(with_cookie(&app, reqwest::Method::GET, "/v1/sites", bogus, None).await, 401);
    // Asking whether a browser is signed in is no error: 204 without a session, and an ended one's cookie cleared.
    assert_eq!(client.get(app.url("/v1/session")).send().await.unwrap().status(), 204);
    let ended = client.get(app.url("/v1/session")).header(COOKIE, bogus).send().await.unwrap();
    assert_eq!(ended.status(), 204);
    assert!(ended.headers()[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    let out = client.delete(app.url("/v1/session")).send().await.unwrap();
    assert_eq!(out.status(), 204);
    assert!(out.headers()[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_session_is_its_own_secret_and_ends_at_sign_out_expiry_and_revocation(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let made = app.post("/v1/tokens", json!({"name": "wallboard", "role": "viewer"})).await;
    let (id, token) = (made.body["token"]["id"].as_i64().unwrap(), made.body["secret"].as_str().unwrap().to_owned());
    let (cookie, _) = sign_in(&app, &token).await;
    // The cookie holds no token: a token in its place is no session.
    assert!(!cookie.contains(&token), "{cookie}");
    let as_cookie = format!("heliotrope_session={token}");
    assert_eq!(with_cookie(&app, reqwest::Method::GET, "/v1/sites", &as_cookie, None).await, 401);
    assert_eq!(with_cookie(&app, reqwest::Method::GET, "/v1/sites", &cookie, None).await, 200);

    // Signing out ends the session, not only the cookie.
    let out = reqwest::Client::new().delete(app.url("/v1/session")).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(with_cookie(&app, reqwest::Method::GET, "/v1/sites", &cookie, None).await, 401);
    assert_eq!(app.count("browser_session").await, 0);

    // Its lifetime is kept by the server, whatever the browser does with Max-Age.
    let (cookie, _) = sign_in(&app, &token).await;
    sqlx::query("update browser_session set expires_at = now() - interval '1 second'").execute(&pool).await.unwrap();
    assert_eq!(with_cookie(&app, reqwest::Method::GET, "/v1/sites", &cookie, None).await, 401);

    // Revoking the token ends its sessions.
    let (cookie, _) = sign_in(&app, &token).await;
    assert_eq!(with_cookie(&app, reqwest::Method::GET, "/v1/sites", &cookie, None).await, 200);
    assert_eq!(app.delete(&format!("/v1/tokens/{id}")).await.status, 204);
    assert_eq!(with_cookie(&app, reqwest::Method::GET, "/v1/sites", &cookie, None).await, 401);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn session_cookies_are_secure_when_browsers_come_over_https(pool: PgPool) {
    let public_url = Some("https://heliotrope.example.net".parse().unwrap());
    let app = spawn_with(pool.clone(), Services { public_url, ..Services::driven() }).await;
    let viewer = app.token(Role::Viewer).await;
    let signed = |app: TestApp, proto: Option<&'static str>| {
        let viewer = viewer.clone();
        async move {
            let mut request = reqwest::Client::new().post(app.url("/v1/session")).json(&json!({"token": viewer}));
            if let Some(proto) = proto {
                request = request.header("x-forwarded-proto", proto);
            }
            request.send().await.unwrap().headers()[SET_COOKIE].to_str().unwrap().to_owned()
        }
    };
    assert!(signed(app.clone(), None).await.contains("; Secure"));
    // Without a public URL, a proxy that says https makes it Secure too.
    let plain = spawn_app(pool).await;
    assert!(!signed(plain.clone(), None).await.contains("Secure"));
    assert!(signed(plain, Some("https")).await.contains("; Secure"));
}
