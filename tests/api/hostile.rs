//! Hostile peers against a live executor process: what a probe of the
//! release build found, each reproduced through the real listener.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use heliotrope::db::MIGRATOR;
use heliotrope_api_spec::Role;
use heliotrope_executor::wire::{nonce, read_frame, write_frame, Frame, VERSION};
use heliotrope_tests::{free_port, spawn_app, wait_until, workspace_binary, Processes};

use crate::crashes::{ready_at, serving};
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let answered = wait_until(Duration::from_secs(5), Duration::from_millis(250), async || answers(to).await, |&a| a);
    assert!(answered.await.is_ok(), "the listener died");
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

/// A process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process runs");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in kB")
}

/// Whether `GET /healthz` at `to` answers 200 within `within` (asking every 200 ms).
async fn healthy_within(to: SocketAddr, within: Duration) -> bool {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let healthy = async || client.get(format!("http://{to}/healthz")).send().await.is_ok_and(|r| r.status() == 200);
    wait_until(within, Duration::from_millis(200), healthy, |&h| h).await.is_ok()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_api_server_cuts_off_slow_and_idle_clients_and_keeps_answering(pool: PgPool) {
    let seeding = spawn_app(pool.clone()).await;
    let port = free_port();
    // 512 descriptors: the server caps its connections below that.
    let mut command = Command::new("prlimit");
    command.arg("--nofile=512:512").arg(workspace_binary("heliotrope"));
    let server = serving(&mut command, &seeding, "hostile", port, false)
        .env("HELIOTROPE_HEADER_TIMEOUT", "2s")
        .spawn()
        .expect("prlimit (util-linux) runs the scheduler");
    // prlimit executes the scheduler in its own process.
    let pid = server.id();
    let _server = Processes(vec![server]);
    let to = ready_at(port, &pool).await.addr;

    // A header sent a line at a time is cut off at the header timeout (it was held for as long as the client kept sending).
    let mut slow = TcpStream::connect(to).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let started = Instant::now();
    // A line every 300 ms at most (the read waits that long for an answer).
    let cut = async || {
        slow.write_all(b"X-Slow: 1\r\n").await.is_err()
            || tokio::time::timeout(Duration::from_millis(300), slow.read(&mut [0; 256])).await.is_ok()
    };
    let cut = wait_until(Duration::from_secs(10), Duration::ZERO, cut, |&cut| cut).await;
    assert!(cut.is_ok(), "a slow header was still open after 10 s");
    assert!(started.elapsed() >= Duration::from_millis(1500), "cut off before its time");

    // 200 clients each 200 KiB into a header that never ends: each is refused once the head outgrows its buffer.
    let before = rss_kib(pid);
    let mut big = Vec::new();
    let line = vec![b'a'; 200 * 1024];
    for _ in 0..200 {
        let mut tcp = TcpStream::connect(to).await.unwrap();
        let _ = tcp.write_all(b"GET /healthz HTTP/1.1\r\nX-Big: ").await;
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&line)).await;
        big.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown_kib = rss_kib(pid).saturating_sub(before);
    assert!(grown_kib < 24 * 1024, "200 unfinished heads grew the server by {grown_kib} KiB");
    drop(big);

    // More idle sockets than the server has descriptors: it stays reachable (the excess is closed on
    // arrival, the rest at the header timeout), where it used to stop answering for good.
    let mut idle = Vec::new();
    for _ in 0..700 {
        if let Ok(Ok(tcp)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(to)).await {
            idle.push(tcp);
        }
    }
    assert!(healthy_within(to, Duration::from_secs(15)).await, "/healthz did not answer beside 700 idle sockets");
    drop(idle);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_address_that_keeps_failing_to_authenticate_is_slowed_down(pool: PgPool) {
    let app = spawn_app(pool).await;
    let unused = app.token(heliotrope_api_spec::Role::Viewer).await;
    assert_eq!(app.get("/v1/sites").await.status, 200, "the admin's token is verified (and cached)");
    let from = |ip: [u8; 4]| reqwest::Client::builder().local_address(std::net::IpAddr::from(ip)).build().unwrap();
    let guesser = from([127, 0, 0, 1]);
    let guess = |client: &reqwest::Client, secret: String| {
        client.get(format!("http://{}/v1/sites", app.addr)).bearer_auth(secret).send()
    };
    for n in 0..20 {
        assert_eq!(guess(&guesser, format!("htp_guess-{n}")).await.unwrap().status(), 401);
    }
    // The 21st guess is refused before the database is asked, and says when to come back.
    let refused = guess(&guesser, "htp_guess-20".into()).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers()["retry-after"].to_str().unwrap().parse::<u64>().is_ok_and(|s| (1..=3).contains(&s)));
    // Signing in counts the same way.
    let sign_in = guesser.post(format!("http://{}/v1/session", app.addr)).json(&serde_json::json!({"token": "htp_x"}));
    assert_eq!(sign_in.send().await.unwrap().status(), 429);
    // A token already verified goes on from the same address (clients behind one proxy); one not
    // yet verified waits like the guesses; another address is not held back.
    assert_eq!(guess(&guesser, heliotrope_tests::ADMIN.into()).await.unwrap().status(), 200);
    assert_eq!(guess(&guesser, unused.clone()).await.unwrap().status(), 429);
    assert_eq!(guess(&from([127, 0, 0, 2]), "htp_guess-x".into()).await.unwrap().status(), 401);
    assert_eq!(guess(&from([127, 0, 0, 2]), unused).await.unwrap().status(), 200);
}

/// The hostile-client check (`scripts/test` runs it as a step of its own; README, Security): a
/// scheduler and two executors, each a process of its own, while a client holds 2,000 idle sockets
/// and 100 slow headers on the API and sends oversized frames, before any authentication, to the
/// destination's transfer port. `/healthz` answers, a real migration completes, and memory stays
/// within the bounds the README states.
#[sqlx::test(migrator = "MIGRATOR")]
async fn hostile_client_check(pool: PgPool) {
    use crate::plans::{big_vm, flat_signals, site_at};
    use crate::whole_loop::{executor, start};
    use heliotrope_tests::{link, with};

    let seeding = spawn_app(pool.clone()).await;
    let port = free_port();
    let server =
        serving(&mut Command::new(workspace_binary("heliotrope")), &seeding, "hostile", port, false).spawn().unwrap();
    let server_pid = server.id();
    let mut fleet = Processes(vec![server]);
    let app = ready_at(port, &pool).await;
    for (name, price, carbon) in [("A", 300.0, 400.0), ("B", 20.0, 50.0)] {
        let id = site_at(&app, name, "active").await;
        flat_signals(&app, id, price, carbon, "EUR").await;
    }
    app.create("/v1/links", with(link("A", "B"), "/symmetric", serde_json::json!(true))).await;
    app.create("/v1/vms", big_vm("web", "A")).await;
    let data = tempfile::tempdir().unwrap();
    let (at_a, at_b) = (executor(&app, "A", "0.25").await, executor(&app, "B", "0.25").await);
    let destination: SocketAddr = ([127, 0, 0, 1], at_b.port).into();
    fleet.0.push(start(&app, &at_a, data.path()));
    fleet.0.push(start(&app, &at_b, data.path()));
    let destination_pid = fleet.0[2].id();
    let online = |page: &Value| {
        page["items"].as_array().is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["state"] == "online"))
    };
    app.wait_for("both executors online", online, "/v1/executors").await;
    let before = (rss_kib(server_pid), rss_kib(destination_pid));

    // 2,000 idle sockets on the API.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // 100 slow headers: a line a second each.
    let to = app.addr;
    let slow = tokio::spawn(async move {
        let mut slow = Vec::new();
        for _ in 0..100 {
            let mut tcp = TcpStream::connect(to).await.unwrap();
            let _ = tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n").await;
            slow.push(tcp);
        }
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for tcp in &mut slow {
                let _ = tcp.write_all(b"X-Slow: 1\r\n").await;
            }
        }
    });
    // Oversized frames before any proof of a secret: 64 connections from four addresses,
    // each announcing a 60 MiB hello and sending 1 MiB of it.
    let mut oversized = Vec::new();
    for n in 0..64u8 {
        if let Ok(mut tcp) = connect_from([127, 0, 0, 2 + n % 4], destination).await {
            let _ = tcp.write_all(&(60u32 << 20).to_be_bytes()).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&vec![0u8; 1 << 20])).await;
            oversized.push(tcp);
        }
    }
    let during = (rss_kib(server_pid), rss_kib(destination_pid));

    // Meanwhile the API answers, and a migration goes all the way.
    assert!(healthy_within(app.addr, Duration::from_secs(5)).await, "/healthz under attack");
    let applied = app.post("/v1/plans", serde_json::json!({"dry_run": false})).await;
    assert_eq!(applied.body["status"], "applied", "{}", applied.body);
    let done = |page: &Value| page["items"][0]["state"] == "done";
    app.wait_for("the migration done under attack", done, "/v1/migrations").await;
    assert!(healthy_within(app.addr, Duration::from_secs(5)).await, "/healthz after the migration");
    let after = (rss_kib(server_pid), rss_kib(destination_pid));
    slow.abort();
    drop((idle, oversized));

    // What the attack cost: memory grown while it was held, before the migration (whose own
    // buffers the executor may rightly take) began.
    let grown = |then: u64, now: u64| now.saturating_sub(then) / 1024;
    let (server_mib, executor_mib) = (grown(before.0, during.0), grown(before.1, during.1));
    println!(
        "{}",
        serde_json::json!({"server_rss_mib_before": before.0 / 1024, "server_grew_mib": server_mib,
            "server_rss_mib_after_migration": after.0 / 1024, "executor_rss_mib_before": before.1 / 1024,
            "executor_grew_mib": executor_mib, "executor_rss_mib_after_migration": after.1 / 1024})
    );
    assert!(server_mib < 96, "the scheduler grew by {server_mib} MiB");
    assert!(executor_mib < 32, "the destination executor grew by {executor_mib} MiB");
}
