//! Hostile peers against a live executor process: what a probe of the
//! release build found, each reproduced through the real listener.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use heliotrope::db::MIGRATOR;
use heliotrope_api_spec::Role;
use heliotrope_executor::wire::{nonce, read_frame, write_frame, Frame, VERSION};
use heliotrope_tests::{free_port, spawn_app, workspace_binary, Processes};
use serde_json::Value;
use sqlx::PgPool;
use tokio::net::{TcpSocket, TcpStream};

use crate::plans::site_at;

/// A connection to `to` from the loopback address `from` (127.0.0.0/8 is all this machine's).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Whether the executor at `to` still answers a peer: a hello is challenged (whether or not it expects the job).
async fn answers(to: SocketAddr) -> bool {
    let Ok(Ok(mut tcp)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(to)).await else {
        return false;
    };
    let hello = Frame::Hello { version: VERSION, job: 424242, stream: 0, streams: 1, nonce: nonce() };
    if write_frame(&mut tcp, &hello).await.is_err() {
        return false;
    }
    matches!(tokio::time::timeout(Duration::from_secs(5), read_frame(&mut tcp)).await, Ok(Ok(Frame::Challenge { .. })))
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_transfer_listener_outlives_running_out_of_descriptors(pool: PgPool) {
    let app = spawn_app(pool).await;
    site_at(&app, "A", "active").await;
    let port = free_port();
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let data = tempfile::tempdir().unwrap();
    // 128 descriptors: a few dozen go to the runtime, the database client and the data dir.
    let executor = Command::new("prlimit")
        .arg("--nofile=128:128")
        .arg(workspace_binary("heliotrope-executor"))
        .args(["run", "--site", "A", "--listen", &to.to_string(), "--data-dir"])
        .arg(data.path())
        .env("HELIOTROPE_SCHEDULER", format!("http://{}", app.addr))
        .env("HELIOTROPE_TOKEN", app.token(Role::Executor).await)
        .env("RUST_LOG", "error")
        .spawn()
        .expect("prlimit (util-linux) runs the executor");
    let _executor = Processes(vec![executor]);
    let online = |page: &Value| page["items"][0]["state"] == "online";
    app.wait_for("the executor online", online, "/v1/executors").await;
    assert!(answers(to).await, "the listener answers at first");

    // Idle connections from four peer addresses, more than the descriptors left.
    let mut idle = Vec::new();
    for peer in 2..6u8 {
        for _ in 0..60 {
            if let Ok(tcp) = connect_from([127, 0, 0, peer], to).await {
                idle.push(tcp);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(idle);
    // Once they are gone the executor takes connections again (it used to stop accepting for good).
    let mut answered = false;
    for _ in 0..20 {
        if answers(to).await {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(answered, "the listener died");
    // Its heartbeat told the scheduler what happened.
    let told = |page: &Value| {
        let listener = &page["items"][0]["listener"];
        listener["accept_errors"].as_u64().is_some_and(|n| n > 0) && listener["accepting"] == true
    };
    app.wait_for("the heartbeat reports the failed accepts, and accepting again", told, "/v1/executors").await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn unknown_query_parameters_are_refused_and_answers_are_not_stored(pool: PgPool) {
    let app = spawn_app(pool).await;
    site_at(&app, "A", "active").await;
    // A parameter the route does not take would have been a cache key a viewer could vary at will.
    let answer = app.get("/v1/vms?limit=5&nonce=1").await;
    answer.assert_error(400, "unknown query parameter 'nonce'");
    assert!(answer.message().contains("cursor, driver, group, limit, pinned, site"), "{}", answer.body);
    app.get("/v1/sites/1?x=1").await.assert_error(400, "this route takes: none");
    assert_eq!(app.get("/v1/vms?limit=5&site=A").await.status, 200);
    // API answers, a token's secret among them, are for no cache to keep.
    let client = reqwest::Client::new();
    let made = client
        .post(format!("http://{}/v1/tokens", app.addr))
        .bearer_auth(heliotrope_tests::ADMIN)
        .json(&serde_json::json!({"name": "grafana", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    assert_eq!(made.headers()["cache-control"], "no-store");
    let health = client.get(format!("http://{}/healthz", app.addr)).send().await.unwrap();
    assert!(health.headers().get("cache-control").is_none(), "operations endpoints are not the API");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_event_stream_ends_when_its_token_is_revoked(pool: PgPool) {
    let app = spawn_app(pool).await;
    let made = app.post("/v1/tokens", serde_json::json!({"name": "wallboard", "role": "viewer"})).await;
    let (id, secret) = (made.body["token"]["id"].as_i64().unwrap(), made.body["secret"].as_str().unwrap().to_owned());
    let mut stream = app.events_as("/v1/events", &secret).await;
    assert!(!stream.ends_within(Duration::from_secs(1)).await, "an open stream stays open");
    assert_eq!(app.delete(&format!("/v1/tokens/{id}")).await.status, 204);
    // Within the revocation delay (a token's cache lives 10 s on other replicas; streams check every 5 s).
    assert!(stream.ends_within(Duration::from_secs(10)).await, "the stream outlived its token");
}
