//! Helpers for end-to-end tests: a real scheduler, bound to a free port on
//! loopback, over a fresh migrated Postgres database per test (made by
//! `#[sqlx::test]`), driven through real HTTP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use heliotrope::db;
use heliotrope::domain::token::{generate_secret, secret_digest};
use heliotrope::startup::{Application, Services};
use heliotrope_api_spec::Role;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The secret of the admin token every test app starts with.
pub const ADMIN: &str = "htp_test-admin-secret";

#[derive(Clone)]
pub struct TestApp {
    pub addr: SocketAddr,
    pub pool: PgPool,
    client: reqwest::Client,
}

/// Starts the scheduler on `pool` (already migrated by `#[sqlx::test]`), as
/// `heliotrope serve` runs it (read cache on).
pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_replica(pool, true).await
}

/// Starts one scheduler replica on `pool`; several may share one database.
pub async fn spawn_replica(pool: PgPool, read_cache: bool) -> TestApp {
    // Tests drive feed polls (`poller::poll_once`) and rebalancing themselves.
    spawn_with(pool, Services { read_cache, ..Services::driven() }).await
}

/// Starts a scheduler replica on `pool` running `services`.
pub async fn spawn_with(pool: PgPool, services: Services) -> TestApp {
    spawn_on(pool, services, "127.0.0.1:0".parse().unwrap()).await
}

/// Starts a scheduler replica on `pool` running `services`, listening at `listen`.
pub async fn spawn_on(pool: PgPool, services: Services, listen: SocketAddr) -> TestApp {
    db::tokens::ensure_admin(&pool, Some(ADMIN)).await.expect("bootstrap admin token");
    let app = Application::build(pool.clone(), listen, services).await.expect("bind");
    let addr = app.local_addr();
    // Nobody cancels this token: the server lives as long as the test's runtime.
    tokio::spawn(app.run_until_stopped(CancellationToken::new()));
    TestApp::at(addr, pool)
}

/// Asks `ask` every `every` until `done` holds for its answer, for at most
/// `within`: `Ok` with that answer, or `Err` with the last one once `within`
/// has passed. The one poll loop of these tests: every wait is made of it.
pub async fn wait_until<T>(
    within: Duration,
    every: Duration,
    mut ask: impl AsyncFnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> Result<T, T> {
    let started = Instant::now();
    loop {
        let answer = ask().await;
        if done(&answer) {
            return Ok(answer);
        }
        if started.elapsed() >= within {
            return Err(answer);
        }
        tokio::time::sleep(every).await;
    }
}

/// Whether the tests run under CI (`CI` set, as CI services set it; the
/// executor's tests read it the same way).
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// What a test needs of the machine it runs on (a data file, network
/// namespaces, a built guest): `Some` when `found` has it. When it does
/// not, the test fails under CI, saying why (there a skipped test would
/// pass quietly); elsewhere it prints why it skips and gets `None`, and
/// returns.
#[track_caller]
pub fn prerequisite<T, E: std::fmt::Display>(what: &str, found: Result<T, E>) -> Option<T> {
    match found {
        Ok(found) => Some(found),
        Err(why) if under_ci() => panic!("{what}: {why} (under CI no test skips)"),
        Err(why) => {
            eprintln!("skipped: {what}: {why}");
            None
        }
    }
}

/// The tests' HTTP client: it lets idle connections go before the server
/// closes them (at its 10 s header timeout), as the executors do.
fn client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(4))
}

impl TestApp {
    /// A scheduler already serving at `addr` (a process of its own) over `pool`'s database.
    pub fn at(addr: SocketAddr, pool: PgPool) -> TestApp {
        TestApp { addr, pool, client: client().build().unwrap() }
    }

    /// The same scheduler, asked from the loopback address `ip` (each address has its own failed-auth budget).
    pub fn from_address(&self, ip: [u8; 4]) -> TestApp {
        let client = client().local_address(std::net::IpAddr::from(ip)).build().unwrap();
        TestApp { client, ..self.clone() }
    }

    /// The URL of the database under `pool` (for processes of their own).
    pub fn database_url(&self) -> String {
        let server = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for the tests");
        db::with_database(&server, self.pool.connect_options().get_database().expect("a test database"))
    }

    /// `GET {path}` as the admin every 250 ms until `done` holds for its body
    /// (at most 2 minutes: then it panics, saying `what` never happened).
    pub async fn wait_for(&self, what: &str, done: impl FnMut(&Value) -> bool, path: &str) -> Value {
        let asked = async || self.get(path).await.body;
        let waited = wait_until(Duration::from_secs(120), Duration::from_millis(250), asked, done).await;
        waited.unwrap_or_else(|last| panic!("{what}: never; last {last}"))
    }

    /// Whether it answers `/readyz` with 200 (false while it does not listen yet).
    pub async fn ready(&self) -> bool {
        let answer = self.client.get(self.url("/readyz")).send().await;
        answer.is_ok_and(|r| r.status() == StatusCode::OK)
    }

    /// Follows `GET {path}` (server-sent events) as the admin.
    pub async fn events(&self, path: &str) -> Events {
        self.events_as(path, ADMIN).await
    }

    /// `GET path` as a server-sent event stream, read with `token`.
    pub async fn events_as(&self, path: &str, token: &str) -> Events {
        let response = self.client.get(self.url(path)).bearer_auth(token).send().await.expect("events");
        assert_eq!(response.status(), 200);
        Events { response, buffer: String::new() }
    }
}

/// A stream of server-sent events as it arrives.
pub struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    /// The next event's name and JSON data (panics after 20 s without one).
    pub async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                // Comment lines (keep-alives) carry no data.
                if !data.is_empty() {
                    return (name, serde_json::from_str(&data).expect("event data is JSON"));
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("an event within 20 s")
                .expect("the stream")
                .expect("the stream is still open");
            self.buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
        }
    }

    /// Whether the server ends the stream within `within` (news meanwhile is passed over).
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, async {
            loop {
                match self.response.chunk().await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        })
        .await
        .is_ok()
    }

    /// The next event whose data is not `passed_over`. News reaches a
    /// stream some time after its commit, so news from just before the
    /// stream was opened may still arrive on it.
    pub async fn next_past(&mut self, passed_over: impl Fn(&Value) -> bool) -> (String, Value) {
        loop {
            let event = self.next().await;
            if !passed_over(&event.1) {
                return event;
            }
        }
    }
}

/// A workspace binary (`heliotrope`, `heliotrope-executor`) beside this test's (test binaries sit one level below).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|deps| deps.parent()).unwrap().join(name);
    assert!(bin.exists(), "{} is not built: cargo build --workspace --bins", bin.display());
    bin
}

/// The states a migration went through, from its detail's log: the entries
/// that changed its state (a cap set or an admission leaves it where it was).
pub fn state_changes(detail: &Value) -> Vec<String> {
    let events = detail["events"].as_array().map(Vec::as_slice).unwrap_or_default();
    events.iter().filter(|e| e["from"] != e["to"]).filter_map(|e| e["to"].as_str().map(str::to_owned)).collect()
}

/// Child processes killed when the test ends, however it ends.
#[derive(Default)]
pub struct Processes(pub Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kills, when dropped, every process whose command line mentions `dir`:
/// the QEMU guests executors started under a test's data directory (a
/// guest outlives its executor, as it must in production, so killing the
/// executors leaves it running).
pub struct KillUnder(pub std::path::PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        let needle = self.0.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            if pid != std::process::id() as i32 && String::from_utf8_lossy(&cmdline).contains(&needle) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The error code of an error answer (panics with the body otherwise).
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {}", self.body))
    }

    /// The error message of an error answer.
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_else(|| panic!("not an error body: {}", self.body))
    }

    /// Asserts an error status and that the message mentions `needle` (e.g. a field name).
    #[track_caller]
    pub fn assert_error(&self, status: u16, needle: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert!(self.message().contains(needle), "message {:?} should mention {needle:?}", self.message());
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn send(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Answer {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request reaches the server");
        answer(response).await
    }

    /// Sends raw bytes with a given content type, as admin.
    pub async fn send_raw(&self, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
        let response = self
            .client
            .request(method, self.url(path))
            .bearer_auth(ADMIN)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request reaches the server");
        answer(response).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, Some(ADMIN), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(Method::POST, path, Some(ADMIN), Some(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.send(Method::PUT, path, Some(ADMIN), Some(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(Method::DELETE, path, Some(ADMIN), None).await
    }

    /// Creates, as admin, and returns the new resource; panics unless 201.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let answer = self.post(path, body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "POST {path}: {}", answer.body);
        answer.body
    }

    /// A fresh token's secret for `role`, stored directly.
    pub async fn token(&self, role: Role) -> String {
        let secret = generate_secret();
        db::tokens::insert(&self.pool, role.as_str(), role, None, &secret_digest(&secret)).await.unwrap();
        secret
    }

    /// Counts rows of `table`, to check that a refused request stored nothing.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("select count(*) from {table}")).fetch_one(&self.pool).await.unwrap()
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    Answer { status, body }
}

/// A valid site body.
pub fn site(name: &str) -> Value {
    json!({
        "name": name, "region": name, "latitude": 50.1, "longitude": 8.7, "timezone": "Europe/Berlin",
        "capacity": {"vcpus": 256, "memory_gib": 1024.0, "disk_gib": 20000.0},
        "pue": 1.2, "power_model": {"watts_per_vcpu": 10.0, "watts_per_gib": 0.4}
    })
}

/// A valid link body.
pub fn link(from: &str, to: &str) -> Value {
    json!({"from_site": from, "to_site": to, "bandwidth_mbps": 1000.0, "rtt_ms": 12.0, "background_reserve_pct": 20.0})
}

/// A valid VM body.
pub fn vm(name: &str, site: &str) -> Value {
    json!({"name": name, "vcpus": 2, "memory_gib": 4.0, "disk_gib": 40.0, "dirty_rate_mbps": 50.0, "site": site, "driver": "sim"})
}

/// `base` with the value at `pointer` (a JSON pointer such as `/capacity/vcpus`) set to `value`,
/// adding the last key when it is absent.
pub fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer starts with /");
    let parent = base.pointer_mut(parent).and_then(Value::as_object_mut);
    parent.unwrap_or_else(|| panic!("{pointer}: no such object in the body")).insert(key.to_owned(), value);
    base
}

/// `base` without the top-level `field`.
pub fn without(mut base: Value, field: &str) -> Value {
    base.as_object_mut().unwrap().remove(field);
    base
}

/// A stand-in for a provider's HTTP API, serving scripted replies in the
/// provider's own format on a free loopback port. Each path answers with
/// its script; a path may require a header (`401` otherwise).
#[derive(Clone, Default)]
pub struct FakeProvider {
    scripts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Script>>>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct Script {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    required: Option<(String, String)>,
}

impl FakeProvider {
    /// Starts serving; returns the provider and its base URL.
    pub async fn start() -> (FakeProvider, String) {
        let fake = FakeProvider::default();
        let handler_fake = fake.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let fake = handler_fake.clone();
            async move { fake.answer(request) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, base)
    }

    /// Answers `path` with `status`, `content_type` and `body` from now on.
    pub fn reply(&self, path: &str, status: u16, content_type: &str, body: &str) -> &Self {
        let script = Script {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
            required: None,
        };
        self.scripts.lock().unwrap().insert(path.into(), script);
        self
    }

    /// Adds a header to `path`'s reply.
    pub fn header(&self, path: &str, name: &str, value: &str) -> &Self {
        self.scripts.lock().unwrap().get_mut(path).unwrap().headers.push((name.into(), value.into()));
        self
    }

    /// Makes `path` answer 401 unless the request carries `name: value`.
    pub fn require(&self, path: &str, name: &str, value: &str) -> &Self {
        self.scripts.lock().unwrap().get_mut(path).unwrap().required = Some((name.into(), value.into()));
        self
    }

    /// The paths (with query) requested so far.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn answer(&self, request: axum::extract::Request) -> axum::response::Response {
        use axum::response::IntoResponse;
        let path = request.uri().path().to_owned();
        self.log.lock().unwrap().push(request.uri().to_string());
        let Some(script) = self.scripts.lock().unwrap().get(&path).cloned() else {
            return (axum::http::StatusCode::NOT_FOUND, format!("no script for {path}")).into_response();
        };
        if let Some((name, value)) = &script.required {
            if request.headers().get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str()) {
                return (axum::http::StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#).into_response();
            }
        }
        let mut response = (axum::http::StatusCode::from_u16(script.status).unwrap(), script.body).into_response();
        for (name, value) in script.headers {
            response.headers_mut().insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                axum::http::HeaderValue::from_str(&value).unwrap(),
            );
        }
        response
    }
}
