//! The executor protocol: registration, claims (source and destination
//! sides, capacity, at most once under concurrency), progress under a
//! lease, cutover confirmed by the destination moving the VM, lease expiry
//! and recovery, cancellation reaching the source, and the refusals.

use chrono::DateTime;
use heliotrope::db::MIGRATOR;
use heliotrope_api_spec::Role;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::plans::{signals_over, swap_fleet, two_sites};
use heliotrope_tests::{site, spawn_app, state_changes, with, Answer, TestApp};

/// An executor: its token and registered id.
struct Executor {
    token: String,
    id: i64,
}

async fn register(app: &TestApp, site: &str, address: &str) -> Executor {
    register_taking(app, site, address, 1).await
}

/// An executor that takes up to `capacity` migrations at once as a source.
async fn register_taking(app: &TestApp, site: &str, address: &str, capacity: u32) -> Executor {
    let token = app.token(Role::Executor).await;
    let body = json!({"site": site, "address": address, "driver": "sim", "capacity": capacity});
    let registered = app.send(Method::POST, "/v1/executors/register", Some(&token), Some(&body)).await;
    assert_eq!(registered.status, 200, "{}", registered.body);
    assert_eq!((registered.body["state"].as_str(), registered.body["driver"].as_str()), (Some("online"), Some("sim")));
    Executor { id: registered.body["id"].as_i64().unwrap(), token }
}

impl Executor {
    async fn claim(&self, app: &TestApp) -> Answer {
        app.send(Method::POST, &format!("/v1/executors/{}/claim", self.id), Some(&self.token), None).await
    }

    async fn call(&self, app: &TestApp, migration: i64, what: &str, body: Value) -> Answer {
        let path = format!("/v1/migrations/{migration}/{what}?executor={}", self.id);
        app.send(Method::POST, &path, Some(&self.token), Some(&body)).await
    }
}

/// DEAR and CHEAP with an executor each, and a plan applied that moves `big` from DEAR to CHEAP; returns its migration id.
async fn under_way(app: &TestApp) -> (Executor, Executor, i64) {
    two_sites(app).await;
    let (dear, cheap) =
        (register(app, "DEAR", "dear-exec:7070").await, register(app, "CHEAP", "cheap-exec:7070").await);
    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["status"], "applied", "{}", applied.body);
    let id = app.get("/v1/migrations").await.body["items"][0]["id"].as_i64().unwrap();
    (dear, cheap, id)
}

async fn vms_at(app: &TestApp, site: &str) -> usize {
    app.get(&format!("/v1/vms?site={site}")).await.body["items"].as_array().unwrap().len()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_migration_runs_through_its_states_and_the_destination_moves_the_vm(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (dear, cheap, id) = under_way(&app).await;
    assert_eq!(cheap.claim(&app).await.status, 204, "nothing for the destination before the source claims");

    let source = dear.claim(&app).await;
    assert_eq!(source.status, 200, "{}", source.body);
    assert_eq!((source.body["role"].as_str(), source.body["migration"]["id"].as_i64()), (Some("source"), Some(id)));
    assert_eq!(source.body["peer_address"], "cheap-exec:7070");
    let secret = source.body["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    assert_eq!(dear.claim(&app).await.status, 204, "capacity 1: one at a time");
    let destination = cheap.claim(&app).await;
    assert_eq!(destination.status, 200, "{}", destination.body);
    assert_eq!(
        (destination.body["role"].as_str(), destination.body["secret"].as_str()),
        (Some("destination"), Some(&*secret))
    );
    assert_eq!(cheap.claim(&app).await.status, 204, "its side is taken once");

    let report = json!({"state": "transferring", "raw_bytes": 1000, "wire_bytes": 100, "round": 0, "eta_s": 5.0});
    let answer = dear.call(&app, id, "progress", report.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        (answer.body["state"].as_str(), answer.body["cancelled"].as_bool()),
        (Some("transferring"), Some(false))
    );
    assert!(answer.body["cap_mbps"].as_f64().unwrap() > 0.0);
    cheap.call(&app, id, "progress", report).await.assert_error(409, "not held by executor");
    let early = cheap.call(&app, id, "complete", json!({"state": "done"})).await;
    early.assert_error(409, "only after cutover");
    assert_eq!(early.body["error"]["code"], "not_in_cutover", "the executor retries by this code");
    let cutover =
        dear.call(&app, id, "progress", json!({"state": "cutover", "raw_bytes": 2000, "wire_bytes": 150})).await;
    assert_eq!(cutover.body["state"], "cutover", "{}", cutover.body);
    dear.call(&app, id, "complete", json!({"state": "done"})).await.assert_error(409, "destination executor confirms");
    assert_eq!(vms_at(&app, "CHEAP").await, 0, "the VM moves only when the destination confirms");

    let done = cheap.call(&app, id, "complete", json!({"state": "done", "detail": "runs at CHEAP"})).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["state"], "done");
    assert_eq!(state_changes(&done.body), ["scheduled", "claimed", "transferring", "cutover", "done"]);
    let events = done.body["events"].as_array().unwrap();
    let actors: Vec<&str> =
        events.iter().filter(|e| e["from"] != e["to"]).map(|e| e["actor"].as_str().unwrap()).collect();
    assert_eq!(actors[1], format!("executor:{}", dear.id));
    assert_eq!(actors[4], format!("executor:{}", cheap.id));
    assert!(events.iter().any(|e| e["actor"] == "dispatcher"), "the admission is logged: {}", done.body);
    assert_eq!(vms_at(&app, "CHEAP").await, 1, "big runs at CHEAP now");
    // Confirming again (after a recovery, say) answers the same, and changes nothing.
    let again = cheap.call(&app, id, "complete", json!({"state": "done"})).await;
    assert_eq!((again.status.as_u16(), state_changes(&again.body).len()), (200, 5));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_lost_executor_is_recovered_and_a_cancel_reaches_the_source(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (dear, cheap, id) = under_way(&app).await;
    assert_eq!(dear.claim(&app).await.status, 200);
    // The source stops reporting: its lease runs out, and the next claim anywhere finds it.
    sqlx::query("update migration_job set lease_expires = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    cheap.claim(&app).await;
    let detail = app.get(&format!("/v1/migrations/{id}")).await.body;
    assert_eq!(detail["state"], "recovering");
    assert_eq!(detail["events"].as_array().unwrap().last().unwrap()["actor"], "scheduler");
    cheap.call(&app, id, "recover", json!({"runs_at": "source"})).await.assert_error(409, "at its source site");

    // Back, the source finds the VM still there: the migration is scheduled again.
    let recovered = dear.call(&app, id, "recover", json!({"runs_at": "source"})).await;
    assert_eq!(recovered.status, 200, "{}", recovered.body);
    assert_eq!(recovered.body["state"], "scheduled");
    let again = dear.claim(&app).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["migration"]["attempts"], 2);

    // A planner cancels: the source's next report says stop; the VM stays where it was.
    let planner = app.token(Role::Planner).await;
    let cancelled = app.send(Method::POST, &format!("/v1/migrations/{id}/cancel"), Some(&planner), None).await;
    assert_eq!(cancelled.body["state"], "cancelled", "{}", cancelled.body);
    let answer = dear.call(&app, id, "progress", json!({"raw_bytes": 10, "wire_bytes": 10})).await;
    assert_eq!((answer.status.as_u16(), answer.body["cancelled"].as_bool()), (200, Some(true)), "{}", answer.body);
    assert_eq!(vms_at(&app, "DEAR").await, 2);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_migration_is_claimed_once_however_many_executors_race_for_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    two_sites(&app).await;
    let mut sources = Vec::new();
    for n in 0..4 {
        sources.push(register(&app, "DEAR", &format!("dear-{n}:7070")).await);
    }
    register(&app, "CHEAP", "cheap:7070").await;
    app.post("/v1/plans", json!({"dry_run": false})).await;
    let claims = claim_together(&app, &sources).await;
    assert_eq!(claims.iter().filter(|&&s| s == 200).count(), 1, "{claims:?}");
    assert_eq!(claims.iter().filter(|&&s| s == 204).count(), 3, "{claims:?}");
}

async fn claim_together(app: &TestApp, executors: &[Executor]) -> Vec<u16> {
    let mut tasks = Vec::new();
    for e in executors {
        let (app, token, id) = (app.clone(), e.token.clone(), e.id);
        tasks.push(tokio::spawn(async move {
            app.send(Method::POST, &format!("/v1/executors/{id}/claim"), Some(&token), None).await.status.as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn executors_act_only_as_themselves_and_reports_are_checked(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (dear, cheap, id) = under_way(&app).await;
    let path = format!("/v1/executors/{}/heartbeat", dear.id);
    assert_eq!(app.send(Method::POST, &path, Some(&dear.token), None).await.status, 204);
    app.send(Method::POST, &path, Some(&cheap.token), None).await.assert_error(404, "of this token");
    let bad = json!({"site": "DEAR", "address": "no-port", "driver": "sim", "capacity": 1});
    app.send(Method::POST, "/v1/executors/register", Some(&dear.token), Some(&bad)).await.assert_error(422, "address");
    let tunnel =
        json!({"site": "DEAR", "address": "d:1", "driver": "sim", "capacity": 1, "tunnel_address": "224.0.0.1"});
    app.send(Method::POST, "/v1/executors/register", Some(&dear.token), Some(&tunnel))
        .await
        .assert_error(422, "tunnel_address");
    let unknown = json!({"site": "MARS", "address": "m:1", "driver": "sim", "capacity": 1});
    app.send(Method::POST, "/v1/executors/register", Some(&dear.token), Some(&unknown)).await.assert_error(422, "MARS");
    let path = format!("/v1/executors/{}/claim?wait_s=31", dear.id);
    app.send(Method::POST, &path, Some(&dear.token), None).await.assert_error(422, "wait_s");
    assert_eq!(dear.claim(&app).await.status, 200);
    let negative = json!({"raw_bytes": 1, "wire_bytes": 1, "dirty_bytes_per_s": -1.0});
    dear.call(&app, id, "progress", negative).await.assert_error(422, "dirty_bytes_per_s");
    let backwards = json!({"state": "done", "raw_bytes": 1, "wire_bytes": 1});
    dear.call(&app, id, "progress", backwards).await.assert_error(422, "transferring or cutover");
    dear.call(&app, id, "complete", json!({"state": "cancelled"}))
        .await
        .assert_error(422, "done, failed or rolled_back");
    // Network steps: from the cutover on, only from the migration's executors, and checked.
    let step = json!({"step": "forward_away", "driver": "linux", "duration_ms": 2.5, "ok": true, "detail": "tunnel"});
    dear.call(&app, id, "network", step.clone()).await.assert_error(409, "from the cutover on");
    let slow = with(step.clone(), "/duration_ms", json!(-1.0));
    dear.call(&app, id, "network", slow).await.assert_error(422, "duration_ms");
    let odd = with(step.clone(), "/driver", json!("Linux!"));
    dear.call(&app, id, "network", odd).await.assert_error(422, "driver");
    let stranger = register(&app, "DEAR", "other-exec:7070").await;
    stranger.call(&app, id, "network", step).await.assert_error(409, "neither end");
    let failed = dear.call(&app, id, "complete", json!({"state": "failed", "detail": "disk full"})).await;
    assert_eq!((failed.body["state"].as_str(), failed.body["failure"].as_str()), (Some("failed"), Some("disk full")));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_planner_changes_a_running_cap_and_the_events_stream_shows_it_all(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (dear, _cheap, id) = under_way(&app).await;
    let mut all = app.events("/v1/events").await;
    let mut this_one = app.events(&format!("/v1/events?migration={id}")).await;
    // The migration's creation, just before the streams opened, may still reach them.
    let created = |news: &Value| news["kind"] == "state" && news["from"].is_null();
    // So may the dispatcher's word on it while it waited (admitted, capped).
    let waiting = |news: &Value| news["kind"] == "state" && news["to"] != "claimed";
    assert_eq!(dear.claim(&app).await.status, 200);
    let (kind, claimed) = all.next_past(waiting).await;
    assert_eq!((kind.as_str(), &claimed["kind"], &claimed["migration"]), ("state", &json!("state"), &json!(id)));
    assert_eq!((claimed["from"].as_str(), claimed["to"].as_str()), (Some("scheduled"), Some("claimed")));
    assert_eq!(claimed["actor"], format!("executor:{}", dear.id));

    // The cap: checked, logged, and answered to the source's next report.
    let path = format!("/v1/migrations/{id}");
    let planner = app.token(Role::Planner).await;
    let patch = |body: Value| {
        let (app, path, planner) = (&app, &path, &planner);
        async move { app.send(Method::PATCH, path, Some(planner), Some(&body)).await }
    };
    patch(json!({"cap_mbps": 0})).await.assert_error(422, "cap_mbps");
    // The least positive float once passed, and panicked the source's shaper (a wait of infinity).
    patch(json!({"cap_mbps": 5e-324})).await.assert_error(422, "cap_mbps");
    patch(json!({"cap_mbps": 0.05})).await.assert_error(422, "cap_mbps");
    patch(json!({"cap_mbps": 250, "x": 1})).await.assert_error(422, "x");
    let viewer = app.token(Role::Viewer).await;
    let refused = app.send(Method::PATCH, &path, Some(&viewer), Some(&json!({"cap_mbps": 250}))).await;
    assert_eq!(refused.status, 403);
    let changed = patch(json!({"cap_mbps": 250})).await;
    assert_eq!((changed.status.as_u16(), changed.body["cap_mbps"].as_f64()), (200, Some(250.0)), "{}", changed.body);
    let (_, capped) = all.next().await;
    assert_eq!((capped["from"].as_str(), capped["to"].as_str()), (Some("claimed"), Some("claimed")));
    assert!(capped["detail"].as_str().unwrap().starts_with("cap set to 250 Mbit/s by token:"), "{capped}");
    let report = json!({"state": "transferring", "raw_bytes": 1000, "wire_bytes": 100, "round": 1, "eta_s": 5.0});
    let answer = dear.call(&app, id, "progress", report).await;
    assert_eq!(answer.body["cap_mbps"], 250.0, "{}", answer.body);
    let (_, transferring) = all.next().await;
    assert_eq!(transferring["to"], "transferring");
    let (kind, progress) = all.next().await;
    assert_eq!(kind, "progress");
    assert_eq!((progress["state"].as_str(), &progress["report"]["raw_bytes"]), (Some("transferring"), &json!(1000)));
    let lifted = patch(json!({"cap_mbps": null})).await;
    assert!(lifted.body["cap_mbps"].is_null(), "{}", lifted.body);

    // The filtered stream saw the same migration's news, in order.
    let mut kinds = Vec::new();
    for k in 0..5 {
        let (kind, news) = if k == 0 { this_one.next_past(waiting).await } else { this_one.next_past(created).await };
        assert_eq!(news["migration"], id);
        kinds.push(kind);
    }
    assert_eq!(kinds, ["state", "state", "state", "progress", "state"]);

    // Cancelled: the end is news too, and an ended migration's cap stays.
    app.post(&format!("/v1/migrations/{id}/cancel"), json!({})).await;
    let (_, lifted_news) = all.next().await;
    assert!(lifted_news["detail"].as_str().unwrap().starts_with("cap lifted"));
    let (_, cancelled) = all.next().await;
    assert_eq!(cancelled["to"], "cancelled");
    patch(json!({"cap_mbps": 100})).await.assert_error(409, "ended");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_restarted_destination_takes_its_side_again_and_an_unconfirmed_cutover_rolls_back(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (dear, cheap, id) = under_way(&app).await;
    assert_eq!(dear.claim(&app).await.status, 200);
    assert_eq!(cheap.claim(&app).await.body["role"], "destination");
    let cutover = json!({"state": "cutover", "raw_bytes": 2000, "wire_bytes": 150});
    assert_eq!(
        dear.call(&app, id, "progress", json!({"state": "transferring", "raw_bytes": 1, "wire_bytes": 1})).await.status,
        200
    );
    assert_eq!(dear.call(&app, id, "progress", cutover).await.body["state"], "cutover");

    // The destination restarts (registers again at its address): its side is handed to it again.
    let body = json!({"site": "CHEAP", "address": "cheap-exec:7070", "driver": "sim", "capacity": 1});
    let again = app.send(Method::POST, "/v1/executors/register", Some(&cheap.token), Some(&body)).await;
    assert_eq!(again.body["id"].as_i64(), Some(cheap.id), "the same executor");
    let retaken = cheap.claim(&app).await;
    assert_eq!(
        (retaken.body["role"].as_str(), retaken.body["migration"]["id"].as_i64()),
        (Some("destination"), Some(id))
    );

    // Only the source rolls back, and only in cutover; then the destination's confirmation is refused.
    cheap.call(&app, id, "complete", json!({"state": "rolled_back"})).await.assert_error(409, "not held by executor");
    let back = dear.call(&app, id, "complete", json!({"state": "rolled_back", "detail": "no confirmation"})).await;
    assert_eq!(back.body["state"], "rolled_back", "{}", back.body);
    let late = cheap.call(&app, id, "complete", json!({"state": "done"})).await;
    late.assert_error(409, "ended rolled_back");
    assert_eq!(late.body["error"]["code"], "conflict", "the executor drops what it received by this code");
    assert_eq!((vms_at(&app, "DEAR").await, vms_at(&app, "CHEAP").await), (2, 0), "big stays at DEAR");
    dear.call(&app, id, "complete", json!({"state": "paused"})).await.assert_error(422, "state");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_qemu_vm_goes_only_to_executors_that_run_qemu(pool: PgPool) {
    goes_only_to_executors_that_run(pool, "qemu", json!({"memory_mib": 262144}), "libvirt").await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_libvirt_vm_goes_only_to_executors_that_run_libvirt(pool: PgPool) {
    goes_only_to_executors_that_run(pool, "libvirt", json!({"domain": "big"}), "qemu").await;
}

/// VM `big`, made a `driver` VM with `spec` while its migration waits, is
/// taken by neither a sim executor nor one of driver `other`, only by an
/// executor of `driver` once its destination has one too.
async fn goes_only_to_executors_that_run(pool: PgPool, driver: &str, spec: Value, other: &str) {
    let app = spawn_app(pool).await;
    let (dear, _cheap, id) = under_way(&app).await;
    sqlx::query("update vm set driver = $1, driver_spec = $2 where name = 'big'")
        .bind(driver)
        .bind(&spec)
        .execute(&app.pool)
        .await
        .unwrap();
    let refused = dear.claim(&app).await;
    assert_eq!(refused.status, 204, "a sim executor does not take a {driver} VM: {}", refused.body);
    let executor = |site: &str, address: &str, driver: &str| {
        let body = json!({"site": site, "address": address, "driver": driver, "capacity": 1});
        let app = &app;
        async move {
            let token = app.token(Role::Executor).await;
            let registered = app.send(Method::POST, "/v1/executors/register", Some(&token), Some(&body)).await;
            Executor { id: registered.body["id"].as_i64().unwrap(), token }
        }
    };
    let dear_other = executor("DEAR", "dear-other:7070", other).await;
    executor("CHEAP", "cheap-other:7070", other).await;
    assert_eq!(dear_other.claim(&app).await.status, 204, "a {other} executor does not take a {driver} VM");
    let dear_runs = executor("DEAR", "dear-runs:7070", driver).await;
    assert_eq!(dear_runs.claim(&app).await.status, 204, "no executor at CHEAP runs {driver} yet");
    executor("CHEAP", "cheap-runs:7070", driver).await;
    let claimed = dear_runs.claim(&app).await;
    assert_eq!(
        (claimed.body["migration"]["id"].as_i64(), claimed.body["vm"]["driver"].as_str()),
        (Some(id), Some(driver))
    );
    assert_eq!(claimed.body["peer_address"], "cheap-runs:7070", "the destination runs {driver} too");
    assert_eq!(claimed.body["vm"]["driver_spec"], spec);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_overview_shows_migrations_under_way_and_savings_count_the_hours_since(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (dear, cheap, id) = under_way(&app).await;
    let mut news = app.events(&format!("/v1/events?migration={id}")).await;
    app.create("/v1/sites", site("QUIET")).await;
    let overview = app.get("/v1/overview").await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    let by_name = |body: &Value, name: &str| {
        body["sites"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned().unwrap()
    };
    let at_dear = by_name(&overview.body, "DEAR");
    assert_eq!((at_dear["vms"].as_u64(), at_dear["migrations_out"].as_u64()), (Some(2), Some(1)), "{at_dear}");
    assert_eq!(at_dear["vcpus_used"], 66);
    assert_eq!((at_dear["stale"].as_bool(), at_dear["price"]["value"].as_f64()), (Some(false), Some(300.0)));
    assert_eq!(by_name(&overview.body, "CHEAP")["migrations_in"], 1);
    assert_eq!(by_name(&overview.body, "QUIET")["stale"], true, "no signals at all: stale");

    dear.claim(&app).await;
    cheap.claim(&app).await;
    let going = json!({"state": "transferring", "raw_bytes": 0, "wire_bytes": 0});
    assert_eq!(dear.call(&app, id, "progress", going).await.status, 200);
    let report = json!({"state": "cutover", "raw_bytes": 2_000_000_000u64, "wire_bytes": 1_000_000_000u64,
        "saved_bytes": {"zero": 500_000_000u64, "dedup": 400_000_000u64, "disk_cache": 0, "in_place": 0, "compression": 100_000_000u64}});
    assert_eq!(dear.call(&app, id, "progress", report).await.status, 200);
    let migration = app.get(&format!("/v1/migrations/{id}")).await.body;
    assert_eq!(migration["progress"]["saved_bytes"]["zero"], 500_000_000u64, "{migration}");
    assert_eq!(cheap.call(&app, id, "complete", json!({"state": "done"})).await.status, 200);
    // Network steps logged after the move (the state stays done) do not make it count again;
    // the event stream carries each with its report (past the move's own news).
    for (executor, step) in [(&dear, "forward_away"), (&cheap, "route_here"), (&cheap, "announce")] {
        let body = json!({"step": step, "driver": "linux", "duration_ms": 1.5, "ok": true});
        assert_eq!(executor.call(&app, id, "network", body).await.status, 200);
        let (kind, heard) = news.next_past(|news| news["network"].is_null()).await;
        assert_eq!(
            (kind.as_str(), heard["from"].as_str(), heard["to"].as_str()),
            ("state", Some("done"), Some("done"))
        );
        assert_eq!((heard["network"]["step"].as_str(), heard["network"]["ok"].as_bool()), (Some(step), Some(true)));
    }
    let failed = json!({"step": "release", "driver": "linux", "duration_ms": 0.5, "ok": false, "detail": "EPERM"});
    assert_eq!(dear.call(&app, id, "network", failed).await.status, 200);
    let metrics = reqwest::get(app.url("/metrics")).await.unwrap().text().await.unwrap();
    for (step, outcome) in [("forward_away", "ok"), ("route_here", "ok"), ("announce", "ok"), ("release", "failed")] {
        let line = format!(r#"heliotrope_network_steps_total{{step="{step}",driver="linux",outcome="{outcome}"}} 1"#);
        assert!(metrics.contains(&line), "{line}");
    }
    assert!(metrics
        .contains(r#"heliotrope_network_step_duration_seconds_count{step="announce",driver="linux",outcome="ok"} 1"#));
    // The driver is one of three (3,000 made-up drivers once made 60,000 metric lines), and a
    // migration's log takes a bounded number of network steps.
    let made_up = json!({"step": "release", "driver": "driver-2999", "duration_ms": 0.5, "ok": true});
    dear.call(&app, id, "network", made_up).await.assert_error(422, "driver");
    let release = json!({"step": "release", "driver": "none", "duration_ms": 0.5, "ok": true});
    for _ in 4..64 {
        assert_eq!(dear.call(&app, id, "network", release.clone()).await.status, 200);
    }
    dear.call(&app, id, "network", release).await.assert_error(409, "the most it takes");
    let after = app.get("/v1/overview").await.body;
    assert_eq!(
        (by_name(&after, "CHEAP")["vms"].as_u64(), by_name(&after, "CHEAP")["migrations_in"].as_u64()),
        (Some(1), Some(0))
    );

    // Just done: only the move's network energy counts yet (1 GB at 0.01 kWh/GB, 300/MWh and 400 g/kWh at DEAR).
    let now = app.get("/v1/savings?days=2").await;
    assert_eq!(now.status, 200, "{}", now.body);
    assert_eq!((now.body["currency"].as_str(), now.body["days"].as_array().map(Vec::len)), (Some("EUR"), Some(2)));
    assert_eq!(now.body["days"][1]["migrations"], 1);
    assert!((now.body["total_cost_saved"].as_f64().unwrap() + 0.003).abs() < 1e-9, "{}", now.body);
    assert!((now.body["total_kg_saved"].as_f64().unwrap() + 0.004).abs() < 1e-9, "{}", now.body);

    // Five hours on: big (0.89088 kW with PUE) ran at 20 rather than 300/MWh, 50 rather than 400 g/kWh,
    // for each whole hour since (the signals persist; this hour is not over).
    sqlx::query("update migration_event set at = at - interval '5 hours' where to_state = 'done' and network is null")
        .execute(&app.pool)
        .await
        .unwrap();
    // History rewritten by hand: the days kept since are not what happened any more.
    sqlx::query("delete from savings_day").execute(&app.pool).await.unwrap();
    let later = app.get("/v1/savings?days=2").await.body;
    let hours: u64 = later["days"].as_array().unwrap().iter().map(|d| d["vm_hours"].as_u64().unwrap()).sum();
    assert!((4..=5).contains(&hours), "{later}");
    let kw = (10.0 * 64.0 + 0.4 * 256.0) * 1.2 / 1000.0;
    let cost = later["total_cost_saved"].as_f64().unwrap();
    assert!((cost - (hours as f64 * kw * 0.280 - 0.003)).abs() < 1e-6, "{later}");
    let kg = later["total_kg_saved"].as_f64().unwrap();
    assert!((kg - (hours as f64 * kw * 0.350 - 0.004)).abs() < 1e-6, "{later}");

    app.get("/v1/savings?days=0").await.assert_error(422, "days");
    app.get("/v1/savings?days=400").await.assert_error(422, "days");
}

/// The kept days: each with when it was priced.
async fn kept_days(app: &TestApp) -> Vec<(chrono::NaiveDate, chrono::DateTime<chrono::Utc>)> {
    sqlx::query_as("select day, priced_at from savings_day order by day").fetch_all(&app.pool).await.unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn finished_days_are_priced_once_and_again_when_their_signals_change(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (dear, cheap, id) = under_way(&app).await;
    for (site, price, carbon) in [("DEAR", 300.0, 400.0), ("CHEAP", 20.0, 50.0)] {
        signals_over(&app, site_id(&app, site).await, -96..=-25, price, carbon, "EUR").await;
    }
    dear.claim(&app).await;
    cheap.claim(&app).await;
    let going = json!({"state": "transferring", "raw_bytes": 0, "wire_bytes": 0});
    assert_eq!(dear.call(&app, id, "progress", going).await.status, 200);
    let cutover = json!({"state": "cutover", "raw_bytes": 0, "wire_bytes": 0});
    assert_eq!(dear.call(&app, id, "progress", cutover).await.status, 200);
    assert_eq!(cheap.call(&app, id, "complete", json!({"state": "done"})).await.status, 200);
    // The move finished two days ago.
    sqlx::query("update migration_event set at = at - interval '48 hours' where to_state = 'done'")
        .execute(&app.pool)
        .await
        .unwrap();

    let first = app.get("/v1/savings?days=4").await.body;
    let days = first["days"].as_array().unwrap();
    assert_eq!(days.iter().map(|d| d["migrations"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 0, 0], "{first}");
    assert_eq!(days[2]["vm_hours"], 24, "yesterday the VM ran at CHEAP all day: {first}");
    // The three finished days are kept; today is not.
    let kept = kept_days(&app).await;
    let finished: Vec<String> = days[..3].iter().map(|d| d["day"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kept.iter().map(|(day, _)| day.to_string()).collect::<Vec<_>>(), finished);
    // Asked again (a longer range included), they are read, not priced again.
    let again = app.get("/v1/savings?days=4").await.body;
    assert_eq!(again, first);
    assert_eq!(app.get("/v1/savings?days=30").await.body["total_cost_saved"], first["total_cost_saved"]);
    let longer = kept_days(&app).await;
    assert_eq!((longer.len(), &longer[26..]), (29, &kept[..]), "the 26 days before were priced alone");

    // A price for yesterday noon arrives late: CHEAP cost as much as DEAR for that hour.
    let noon = chrono::NaiveDate::parse_from_str(&finished[2], "%Y-%m-%d").unwrap().and_hms_opt(12, 0, 0).unwrap();
    let late = json!([{"timestamp_utc": noon.and_utc(), "price_per_mwh": 300.0, "currency": "EUR"}]);
    let pushed = app.post(&format!("/v1/sites/{}/signals", site_id(&app, "CHEAP").await), late).await;
    assert_eq!(pushed.status, 200, "{}", pushed.body);
    assert_eq!(kept_days(&app).await[..], longer[..28], "only yesterday is forgotten");
    let repriced = app.get("/v1/savings?days=4").await.body;
    let kw = (10.0 * 64.0 + 0.4 * 256.0) * 1.2 / 1000.0;
    let (was, is) =
        (first["days"][2]["cost_saved"].as_f64().unwrap(), repriced["days"][2]["cost_saved"].as_f64().unwrap());
    assert!((was - is - kw * 0.280).abs() < 1e-6, "{was} then {is}");
    assert_eq!(repriced["days"][1], first["days"][1]);
}

async fn site_id(app: &TestApp, name: &str) -> i64 {
    let sites = app.get("/v1/sites").await.body;
    sites["items"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()["id"].as_i64().unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_arrival_waits_until_its_destination_has_room(pool: PgPool) {
    let app = spawn_app(pool).await;
    swap_fleet(&app).await;
    let executors = [
        register(&app, "DEAR", "dear-exec:7070").await,
        register(&app, "CHEAP", "cheap-exec:7070").await,
        register(&app, "MID", "mid-exec:7070").await,
    ];
    // A swap: big can land at CHEAP only once small has left for MID.
    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["moves"].as_array().map(Vec::len), Some(2), "{}", applied.body);
    sqlx::query("update migration_job set start_at = now() - interval '1 second'").execute(&app.pool).await.unwrap();
    let [dear, cheap, mid] = &executors;
    assert_eq!(dear.claim(&app).await.status, 204, "CHEAP has no room for big while small is there");

    let small = cheap.claim(&app).await;
    assert_eq!(small.status, 200, "{}", small.body);
    let id = small.body["migration"]["id"].as_i64().unwrap();
    assert_eq!(small.body["migration"]["vm"], "small");
    assert_eq!(mid.claim(&app).await.status, 200, "MID takes its side");
    for state in ["transferring", "cutover"] {
        let report = cheap.call(&app, id, "progress", json!({"state": state, "raw_bytes": 1, "wire_bytes": 1})).await;
        assert_eq!(report.status, 200, "{}", report.body);
    }
    assert_eq!(dear.claim(&app).await.status, 204, "still there until its destination confirms");
    assert_eq!(mid.call(&app, id, "complete", json!({"state": "done"})).await.status, 200);

    let big = dear.claim(&app).await;
    assert_eq!(big.status, 200, "small has left: {}", big.body);
    assert_eq!(big.body["migration"]["vm"], "big");
}

/// A migration (by its VM) as `GET /v1/migrations` lists it.
async fn migration_of(app: &TestApp, vm: &str) -> Value {
    let all = app.get("/v1/migrations").await.body;
    all["items"].as_array().unwrap().iter().find(|m| m["vm"] == vm).cloned().unwrap()
}

/// Moves migration `id`, claimed by `source` and `destination`, through to `done`.
async fn finish(app: &TestApp, source: &Executor, destination: &Executor, id: i64) {
    for state in ["transferring", "cutover"] {
        let report = json!({"state": state, "raw_bytes": 0, "wire_bytes": 0});
        assert_eq!(source.call(app, id, "progress", report).await.status, 200);
    }
    assert_eq!(destination.call(app, id, "complete", json!({"state": "done"})).await.status, 200);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_late_evacuee_waits_for_its_link_then_moves_when_it_frees(pool: PgPool) {
    let app = spawn_app(pool).await;
    let src = app.create("/v1/sites", with(site("SRC"), "/capacity/vcpus", json!(1000))).await["id"].as_i64().unwrap();
    let a = crate::plans::site_at(&app, "A", "active").await;
    for id in [src, a] {
        crate::plans::flat_signals(&app, id, 100.0, 300.0, "EUR").await;
    }
    app.create("/v1/links", heliotrope_tests::link("SRC", "A")).await;
    // 8 GiB each without disk: about 92 s alone on the link's usable 800 Mbit/s.
    for (name, priority) in [("hi", 90), ("lo", 10)] {
        let evacuee = with(with(heliotrope_tests::vm(name, "SRC"), "/memory_gib", json!(8.0)), "/disk_gib", json!(0.0));
        app.create("/v1/vms", with(evacuee, "/priority", json!(priority))).await;
    }
    let (from_src, at_a) = (register_taking(&app, "SRC", "src:7070", 2).await, register(&app, "A", "a:7070").await);
    let report = app.post(&format!("/v1/sites/{src}/evacuate"), json!({"deadline_s": 100})).await;
    assert_eq!(report.status, 200, "{}", report.body);
    let (hi, lo) = (migration_of(&app, "hi").await, migration_of(&app, "lo").await);
    assert!(hi["admitted_at"].is_string() && hi["expires_at"].is_null(), "an evacuee waits as long as it takes: {hi}");
    assert_eq!(lo["state"], "pending", "the schedule could not start it: {lo}");

    // The link is hi's: lo is not handed out, though the executor has room for it.
    let claimed = from_src.claim(&app).await;
    assert_eq!(claimed.body["migration"]["vm"], "hi", "{}", claimed.body);
    assert_eq!(from_src.claim(&app).await.status, 204, "lo waits for the link");
    at_a.claim(&app).await;
    let caps: Vec<f64> = sqlx::query_scalar("select cap_mbps from migration_cap").fetch_all(&app.pool).await.unwrap();
    assert!((caps.iter().sum::<f64>() - 800.0).abs() < 1e-6, "the link's usable 800 Mbit/s, all hi's: {caps:?}");
    finish(&app, &from_src, &at_a, hi["id"].as_i64().unwrap()).await;

    // hi is done: within a dispatcher's turn lo is admitted, and moves.
    let path = format!("/v1/migrations/{}", lo["id"]);
    let admitted = |m: &Value| m["state"] == "scheduled" && m["admitted_at"].is_string();
    let detail = app.wait_for("lo admitted once the link freed", admitted, &path).await;
    let said =
        detail["events"].as_array().unwrap().iter().any(|e| e["detail"].as_str().unwrap().contains("dispatcher"));
    assert!(said, "{detail}");
    let claimed = from_src.claim(&app).await;
    assert_eq!(claimed.body["migration"]["vm"], "lo", "{}", claimed.body);
    at_a.claim(&app).await;
    finish(&app, &from_src, &at_a, lo["id"].as_i64().unwrap()).await;
    assert_eq!(app.get(&path).await.body["state"], "done");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_move_never_admitted_before_its_bound_expires_and_frees_its_vm(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (_, _, id) = under_way(&app).await;
    let path = format!("/v1/migrations/{id}");
    let m = app.get(&path).await.body;
    let at = |field: &str| DateTime::parse_from_rfc3339(m[field].as_str().unwrap()).unwrap();
    let validity = at("expires_at") - at("created_at") - chrono::Duration::hours(1);
    assert!(validity.abs() < chrono::Duration::seconds(5), "valid an hour past its (immediate) start: {m}");
    // As if its link had been busy all that hour.
    sqlx::query("update migration_job set admitted_at = null, expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let expired = |d: &Value| d["state"] == "expired";
    let detail = app.wait_for("the unadmitted move expired", expired, &path).await;
    assert!(detail["failure"].as_str().unwrap().contains("validity"), "{detail}");
    // Its VM is free to plan again.
    let again = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(again.body["status"], "applied", "{}", again.body);
    assert_eq!(app.get("/v1/migrations?state=scheduled").await.body["items"][0]["vm"], "big");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_measured_dirty_rate_decides_admission_once_a_source_reports_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (dear, cheap, id) = under_way(&app).await;
    // Declared 150 Mbit/s: admitted on the link's usable 800 (it needs 1.5x, 225).
    sqlx::query("update vm set dirty_rate_mbps = 150 where name = 'big'").execute(&app.pool).await.unwrap();
    dear.claim(&app).await;
    cheap.claim(&app).await;
    // The guest dirties 4x that: 600 Mbit/s.
    let report = json!({"state": "transferring", "raw_bytes": 0, "wire_bytes": 0, "dirty_bytes_per_s": 75e6});
    assert_eq!(dear.call(&app, id, "progress", report).await.status, 200);
    let vms = app.get("/v1/vms?site=DEAR").await.body;
    let big = vms["items"].as_array().unwrap().iter().find(|v| v["name"] == "big").unwrap().clone();
    assert_eq!((big["dirty_rate_mbps"].as_f64(), big["measured_dirty_rate_mbps"].as_f64()), (Some(150.0), Some(600.0)));

    // Waiting again (as a retry would), it is admitted by the measured rate: 900 Mbit/s
    // needed, more than the link has; by the declared one it would have been.
    let waiting = |job: i64| {
        sqlx::query(
            "update migration_job set state = 'scheduled', admitted_at = null, lease_holder = null, \
             lease_expires = null, destination_executor = null where job_id = $1",
        )
        .bind(job)
    };
    let admitted = || {
        sqlx::query_scalar::<_, bool>("select admitted_at is not null from migration_job where job_id = $1").bind(id)
    };
    let config = heliotrope::config::PlannerConfig::default();
    waiting(id).execute(&app.pool).await.unwrap();
    heliotrope::dispatcher::dispatch(&app.pool, &config, chrono::Utc::now()).await.unwrap();
    assert!(!admitted().fetch_one(&app.pool).await.unwrap(), "admitted though it cannot converge at 600 Mbit/s");
    sqlx::query("update vm set measured_dirty_rate_mbps = null").execute(&app.pool).await.unwrap();
    heliotrope::dispatcher::dispatch(&app.pool, &config, chrono::Utc::now()).await.unwrap();
    assert!(admitted().fetch_one(&app.pool).await.unwrap(), "by the declared rate it is admitted");
}
