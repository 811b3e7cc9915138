//! Plans: the lifecycle (propose, supersede, approve, apply with its
//! migration jobs), roles, signal fallbacks, and the refusals: infeasible
//! constraints (422 naming the binding one), missing signals, mixed
//! currencies, and a plan the inventory moved on from.

use chrono::{DateTime, Duration, DurationRound, Utc};
use heliotrope::db::MIGRATOR;
use heliotrope_api_spec::Role;
use heliotrope_tests::{link, site, spawn_app, vm, with, TestApp, ADMIN};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

pub(crate) fn this_hour() -> DateTime<Utc> {
    Utc::now().duration_trunc(Duration::hours(1)).unwrap()
}

/// Creates a site; returns its id.
pub(crate) async fn site_at(app: &TestApp, name: &str, state: &str) -> i64 {
    app.create("/v1/sites", with(site(name), "/state", json!(state))).await["id"].as_i64().unwrap()
}

/// Pushes a flat price and carbon for the day before this hour and this
/// hour itself: the rest of the horizon is filled by persistence.
pub(crate) async fn flat_signals(app: &TestApp, site_id: i64, price: f64, carbon: f64, currency: &str) {
    signals_over(app, site_id, -24..=0, price, carbon, currency).await;
}

/// Pushes flat signals for the hours `hours` from this one.
pub(crate) async fn signals_over(
    app: &TestApp,
    site_id: i64,
    hours: std::ops::RangeInclusive<i64>,
    price: f64,
    carbon: f64,
    currency: &str,
) {
    let rows: Vec<Value> = hours
        .map(|h| {
            json!({"timestamp_utc": this_hour() + Duration::hours(h), "carbon_g_per_kwh": carbon,
                   "price_per_mwh": price, "currency": currency})
        })
        .collect();
    let pushed = app.post(&format!("/v1/sites/{site_id}/signals"), Value::Array(rows)).await;
    assert_eq!(pushed.status, 200, "{}", pushed.body);
}

/// A big VM (64 vCPUs, 256 GiB): moving it from a 300/MWh site to a 20/MWh one saves about 6 a day.
pub(crate) fn big_vm(name: &str, at: &str) -> Value {
    with(with(vm(name, at), "/vcpus", json!(64)), "/memory_gib", json!(256.0))
}

/// DEAR (300/MWh) and CHEAP (20/MWh), linked both ways, a big VM at DEAR and a pinned one beside it.
pub(crate) async fn two_sites(app: &TestApp) -> (i64, i64) {
    let dear = site_at(app, "DEAR", "active").await;
    let cheap = site_at(app, "CHEAP", "active").await;
    app.create("/v1/links", with(link("DEAR", "CHEAP"), "/symmetric", json!(true))).await;
    flat_signals(app, dear, 300.0, 400.0, "EUR").await;
    flat_signals(app, cheap, 20.0, 50.0, "EUR").await;
    app.create("/v1/vms", big_vm("big", "DEAR")).await;
    app.create("/v1/vms", with(vm("fixed", "DEAR"), "/pinned", json!(true))).await;
    (dear, cheap)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn propose_supersede_approve_apply(pool: PgPool) {
    let app = spawn_app(pool).await;
    two_sites(&app).await;
    let viewer = app.token(Role::Viewer).await;
    let planner = app.token(Role::Planner).await;
    let refused = app.send(Method::POST, "/v1/plans", Some(&viewer), Some(&json!({}))).await;
    refused.assert_error(403, "planner");

    let first = app.send(Method::POST, "/v1/plans", Some(&planner), Some(&json!({}))).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let plan = &first.body;
    assert_eq!(plan["status"], "proposed");
    assert_eq!(
        plan["request"],
        json!({"horizon_h": 24, "mode": "blend", "carbon_price_per_tonne": 100.0, "dry_run": true,
               "schedule_goal": "mean_completion"})
    );
    assert_eq!(plan["currency"], "EUR");
    let moves = plan["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 1, "{plan}");
    let m = &moves[0];
    assert_eq!((m["vm"].as_str(), m["from"].as_str(), m["to"].as_str()), (Some("big"), Some("DEAR"), Some("CHEAP")));
    assert_eq!(m["slot"], 0);
    assert!(m["reason"].as_str().unwrap().starts_with("cheaper at CHEAP"), "{m}");
    assert!(m["saving_cost"].as_f64().unwrap() > 5.0, "{m}");
    assert!(m["predicted_bytes"].as_f64().unwrap() > 256.0 * 1.07e9, "memory and disk travel: {m}");
    assert!(plan["objective"]["objective"].as_f64() < plan["baseline"]["objective"].as_f64());
    assert_eq!(plan["baseline"]["migration_bytes"], 0.0);
    assert_eq!(plan["solver"]["status"], "optimal");
    assert_eq!(plan["inputs"]["vms"], 2);
    // This hour is measured; the 23 after it repeat yesterday (carbon and price each).
    let dear = plan["signals"].as_array().unwrap().iter().find(|c| c["site"] == "DEAR").unwrap();
    assert_eq!((dear["actual_slots"].as_u64(), dear["persisted_slots"].as_u64()), (Some(2), Some(46)), "{dear}");
    assert_eq!(dear["synthetic"], false);
    let first_id = plan["id"].as_i64().unwrap();

    let listed = app.send(Method::GET, "/v1/plans", Some(&viewer), None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["items"][0]["move_count"], 1);
    assert!(listed.body["items"][0].get("moves").is_none(), "lists leave the moves out");
    app.send(Method::POST, &format!("/v1/plans/{first_id}/apply"), Some(&planner), None)
        .await
        .assert_error(409, "only an approved plan can be applied");

    // A newer proposal supersedes the first, which can then not be approved.
    let second = app.send(Method::POST, "/v1/plans", Some(&planner), Some(&json!({"mode": "cost"}))).await;
    assert_eq!(second.status, 201, "{}", second.body);
    let second_id = second.body["id"].as_i64().unwrap();
    let old = app.get(&format!("/v1/plans/{first_id}")).await;
    assert_eq!(old.body["status"], "superseded");
    app.send(Method::POST, &format!("/v1/plans/{first_id}/approve"), Some(&planner), None)
        .await
        .assert_error(409, "only a proposed plan can be approved");

    let approved = app.send(Method::POST, &format!("/v1/plans/{second_id}/approve"), Some(&planner), None).await;
    assert_eq!((approved.status.as_u16(), approved.body["status"].as_str()), (200, Some("approved")));
    let applied = app.send(Method::POST, &format!("/v1/plans/{second_id}/apply"), Some(&planner), None).await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    assert_eq!((applied.body["jobs"].as_u64(), applied.body["plan"]["status"].as_str()), (Some(1), Some("applied")));
    assert_eq!(app.count("migration_job").await, 1);
    app.send(Method::POST, &format!("/v1/plans/{second_id}/apply"), Some(&planner), None)
        .await
        .assert_error(409, "is applied");

    // With its migration queued, the VM is not planned again.
    let third = app.post("/v1/plans", json!({})).await;
    assert_eq!(third.status, 201, "{}", third.body);
    assert_eq!(third.body["moves"], json!([]));
    let filtered = app.get("/v1/plans?status=applied").await;
    assert_eq!(filtered.body["items"].as_array().unwrap().len(), 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_migration_under_way_holds_its_room_at_the_destination(pool: PgPool) {
    let app = spawn_app(pool).await;
    let dear = site_at(&app, "DEAR", "active").await;
    let cheap =
        app.create("/v1/sites", with(site("CHEAP"), "/capacity/vcpus", json!(64))).await["id"].as_i64().unwrap();
    app.create("/v1/links", with(link("DEAR", "CHEAP"), "/symmetric", json!(true))).await;
    flat_signals(&app, dear, 300.0, 400.0, "EUR").await;
    flat_signals(&app, cheap, 20.0, 50.0, "EUR").await;
    app.create("/v1/vms", big_vm("big-1", "DEAR")).await;
    app.create("/v1/vms", big_vm("big-2", "DEAR")).await;
    // CHEAP has room for one of them: the first plan moves one, and its migration is recorded.
    let first = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(first.body["moves"].as_array().map(Vec::len), Some(1), "{}", first.body);
    // While it is under way the VM still runs at DEAR, yet its room at CHEAP is taken:
    // the next plan does not send the other one there too.
    let second = app.post("/v1/plans", json!({})).await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(second.body["moves"], json!([]), "{}", second.body);
}

/// DEAR (300/MWh), MID (100) and CHEAP (20, only 64 vCPUs), linked DEAR-CHEAP-MID;
/// big (64 vCPUs) at DEAR, small at CHEAP: big can go to CHEAP only if small makes room.
pub(crate) async fn swap_fleet(app: &TestApp) {
    let dear = site_at(app, "DEAR", "active").await;
    let mid = site_at(app, "MID", "active").await;
    let cheap =
        app.create("/v1/sites", with(site("CHEAP"), "/capacity/vcpus", json!(64))).await["id"].as_i64().unwrap();
    for (id, price, carbon) in [(dear, 300.0, 400.0), (mid, 100.0, 200.0), (cheap, 20.0, 50.0)] {
        flat_signals(app, id, price, carbon, "EUR").await;
    }
    for (a, b) in [("DEAR", "CHEAP"), ("CHEAP", "MID")] {
        app.create("/v1/links", with(link(a, b), "/symmetric", json!(true))).await;
    }
    app.create("/v1/vms", big_vm("big", "DEAR")).await;
    app.create("/v1/vms", vm("small", "CHEAP")).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_swap_under_way_counts_each_vm_once_in_the_next_plan(pool: PgPool) {
    let app = spawn_app(pool).await;
    swap_fleet(&app).await;
    // CHEAP holds big only if small makes room: the plan moves both.
    let first = app.post("/v1/plans", json!({"dry_run": false})).await;
    let mut moved: Vec<&str> =
        first.body["moves"].as_array().unwrap().iter().map(|m| m["vm"].as_str().unwrap()).collect();
    moved.sort();
    assert_eq!(moved, ["big", "small"], "{}", first.body);
    // Both under way: small still runs at CHEAP and big's room there is held. Counted at
    // both ends, CHEAP would be 2 vCPUs over and no plan possible; each counts once, at its destination.
    let second = app.post("/v1/plans", json!({})).await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(second.body["moves"], json!([]), "{}", second.body);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn applying_at_once_and_a_plan_the_inventory_moved_on_from(pool: PgPool) {
    let app = spawn_app(pool).await;
    two_sites(&app).await;
    let at_once = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(at_once.status, 201, "{}", at_once.body);
    assert_eq!(at_once.body["status"], "applied");
    assert_eq!(app.count("migration_job").await, 1);

    // A plan whose VM has since been moved by hand fails on apply, and says why.
    sqlx::query("delete from migration_job").execute(&app.pool).await.unwrap();
    let plan = app.post("/v1/plans", json!({})).await;
    let id = plan.body["id"].as_i64().unwrap();
    assert_eq!(plan.body["moves"].as_array().unwrap().len(), 1, "{}", plan.body);
    let big = app.get("/v1/vms?site=DEAR").await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "big")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(app.put(&format!("/v1/vms/{big}"), big_vm("big", "CHEAP")).await.status, 200);
    assert_eq!(app.send(Method::POST, &format!("/v1/plans/{id}/approve"), Some(ADMIN), None).await.status, 200);
    app.send(Method::POST, &format!("/v1/plans/{id}/apply"), Some(ADMIN), None)
        .await
        .assert_error(409, "VM big is at CHEAP, not DEAR");
    let failed = app.get(&format!("/v1/plans/{id}")).await;
    assert_eq!(failed.body["status"], "failed");
    assert!(failed.body["failure"].as_str().unwrap().contains("VM big is at CHEAP"), "{}", failed.body);
    assert_eq!(app.count("migration_job").await, 0, "a failed plan records no job");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn infeasible_plans_name_the_binding_constraint(pool: PgPool) {
    let app = spawn_app(pool).await;
    let small = site_at(&app, "DE-LU", "active").await;
    flat_signals(&app, small, 80.0, 300.0, "EUR").await;
    // 1024 GiB of memory; two pinned VMs of 600 GiB want 1200.
    for name in ["a", "b"] {
        app.create("/v1/vms", with(with(vm(name, "DE-LU"), "/memory_gib", json!(600.0)), "/pinned", json!(true))).await;
    }
    let answer = app.post("/v1/plans", json!({})).await;
    answer.assert_error(422, "capacity: memory at site DE-LU is short by 176 GiB");
    assert_eq!(answer.code(), "infeasible");

    // A down site whose pinned VM has nowhere to go.
    let down = site_at(&app, "PL", "down").await;
    flat_signals(&app, down, 80.0, 300.0, "EUR").await;
    app.create("/v1/vms", with(vm("stuck", "PL"), "/pinned", json!(true))).await;
    let answer = app.post("/v1/plans", json!({})).await;
    assert_eq!(answer.code(), "infeasible");
    assert_eq!(app.count("plan").await, 0, "nothing stored for an infeasible plan");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn missing_signals_mixed_currencies_and_bad_requests(pool: PgPool) {
    let app = spawn_app(pool).await;
    let gb = site_at(&app, "GB", "active").await;
    app.create("/v1/vms", vm("v", "GB")).await;
    app.post("/v1/plans", json!({})).await.assert_error(422, "signals: no carbon for site GB");
    flat_signals(&app, gb, 70.0, 200.0, "GBP").await;
    let fr = site_at(&app, "FR", "active").await;
    flat_signals(&app, fr, 60.0, 40.0, "EUR").await;
    app.post("/v1/plans", json!({})).await.assert_error(422, "more than one currency");
    for bad in [json!({"horizon_h": 0}), json!({"horizon_h": 169}), json!({"carbon_price_per_tonne": -1.0})] {
        app.post("/v1/plans", bad).await.assert_error(422, "");
    }
    app.post("/v1/plans", json!({"mode": "greenest"})).await.assert_error(422, "mode");
    assert_eq!(app.count("plan").await, 0);
    app.get("/v1/plans/999").await.assert_error(404, "plan 999");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_empty_fleet_plans_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let empty = app.post("/v1/plans", json!({})).await;
    assert_eq!(empty.status, 201, "{}", empty.body);
    assert_eq!((empty.body["moves"].clone(), empty.body["objective"]["objective"].as_f64()), (json!([]), Some(0.0)));
    // Sites with signals but no VMs: the same.
    let id = site_at(&app, "GB", "active").await;
    flat_signals(&app, id, 70.0, 200.0, "GBP").await;
    let idle = app.post("/v1/plans", json!({"horizon_h": 168})).await;
    assert_eq!(idle.status, 201, "{}", idle.body);
    assert_eq!(idle.body["currency"], "GBP");
    assert_eq!(idle.body["signals"][0]["persisted_slots"], 2 * (168 - 1));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_plan_has_a_schedule_with_its_baselines(pool: PgPool) {
    let app = spawn_app(pool).await;
    two_sites(&app).await;
    // Two more movers (64 vCPUs, 4 GiB, no disk): all three fit the DEAR -> CHEAP link in the hour.
    for name in ["m1", "m2"] {
        app.create("/v1/vms", with(with(vm(name, "DEAR"), "/vcpus", json!(64)), "/disk_gib", json!(0.0))).await;
    }
    let plan = app.post("/v1/plans", json!({})).await;
    assert_eq!(plan.status, 201, "{}", plan.body);
    let id = plan.body["id"].as_i64().unwrap();
    let moves = plan.body["moves"].as_array().unwrap().len();
    assert_eq!(moves, 3, "{}", plan.body);

    let schedule = app.get(&format!("/v1/plans/{id}/schedule")).await;
    assert_eq!(schedule.status, 200, "{}", schedule.body);
    let s = &schedule.body;
    let migrations = s["migrations"].as_array().unwrap();
    assert_eq!(migrations.len(), 3);
    // One link, each migration alone on it at its full 800 Mbit/s, shortest first.
    let mut starts: Vec<f64> = migrations.iter().map(|m| m["start_s"].as_f64().unwrap()).collect();
    starts.sort_by(f64::total_cmp);
    assert_eq!(starts[0], 0.0);
    assert!(starts[1] > 0.0 && starts[2] > starts[1], "{starts:?}");
    assert!(migrations.iter().all(|m| (m["cap_mbps"].as_f64().unwrap() - 800.0).abs() < 1e-6), "{s}");
    let (makespan, bound) = (s["makespan_s"].as_f64().unwrap(), s["lower_bound_s"].as_f64().unwrap());
    assert!(bound > 0.0 && bound <= makespan * (1.0 + 1e-9), "{bound} vs {makespan}");
    let policies: Vec<&str> =
        s["baselines"].as_array().unwrap().iter().map(|b| b["policy"].as_str().unwrap()).collect();
    assert_eq!(policies, ["all_at_once", "one_at_a_time", "two_per_link"]);
    let all_at_once = s["baselines"][0]["mean_completion_s"].as_f64().unwrap();
    assert!(s["mean_completion_s"].as_f64().unwrap() < all_at_once, "{s}");
    assert_eq!(s["cannot_converge"], json!([]));
    app.get("/v1/plans/999/schedule").await.assert_error(404, "plan 999");

    // Packed for makespan instead: longest first.
    let packed = app.post("/v1/plans", json!({"schedule_goal": "makespan"})).await;
    let packed = app.get(&format!("/v1/plans/{}/schedule", packed.body["id"])).await.body;
    let first = packed["migrations"].as_array().unwrap().iter().find(|m| m["start_s"] == 0.0).unwrap().clone();
    assert_eq!(first["vm"], "big", "{packed}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_plan_made_while_a_migration_runs_starts_its_moves_when_the_link_frees(pool: PgPool) {
    let app = spawn_app(pool).await;
    two_sites(&app).await;
    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["status"], "applied", "{}", applied.body);
    let running = app.get("/v1/migrations").await.body["items"][0].clone();
    assert!(running["admitted_at"].is_string(), "big runs on the link: {running}");
    // Another mover at DEAR; the link is big's for its predicted bytes at 800 Mbit/s.
    app.create("/v1/vms", with(with(vm("m1", "DEAR"), "/vcpus", json!(64)), "/disk_gib", json!(0.0))).await;
    let plan = app.post("/v1/plans", json!({})).await;
    assert_eq!(plan.body["moves"].as_array().map(Vec::len), Some(1), "{}", plan.body);
    let schedule = app.get(&format!("/v1/plans/{}/schedule", plan.body["id"])).await.body;
    let start = schedule["migrations"][0]["start_s"].as_f64().unwrap();
    let big_left_s = running["predicted_bytes"].as_f64().unwrap() / 100e6;
    assert!((start - big_left_s).abs() < 0.01 * big_left_s, "m1 starts once big is through: {start} vs {big_left_s}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn evacuation_reports_who_makes_the_deadline(pool: PgPool) {
    let app = spawn_app(pool).await;
    let big_site = with(site("SRC"), "/capacity/vcpus", json!(1000));
    let src = app.create("/v1/sites", big_site).await["id"].as_i64().unwrap();
    let a = site_at(&app, "A", "active").await;
    let b = site_at(&app, "B", "active").await;
    for (id, price) in [(src, 100.0), (a, 100.0), (b, 100.0)] {
        flat_signals(&app, id, price, 300.0, "EUR").await;
    }
    app.create("/v1/links", link("SRC", "A")).await;
    app.create("/v1/links", link("SRC", "B")).await;
    // 8 GiB each without disk: about 92 s alone on an 800 Mbit/s link.
    let evacuee = |name: &str, priority: u8| {
        with(
            with(with(vm(name, "SRC"), "/memory_gib", json!(8.0)), "/disk_gib", json!(0.0)),
            "/priority",
            json!(priority),
        )
    };
    app.create("/v1/vms", evacuee("hi", 90)).await;
    app.create("/v1/vms", evacuee("lo", 10)).await;
    app.create("/v1/vms", with(vm("p", "SRC"), "/pinned", json!(true))).await;
    app.create("/v1/vms", with(vm("huge", "SRC"), "/vcpus", json!(300))).await;

    let path = format!("/v1/sites/{src}/evacuate");
    let viewer = app.token(Role::Viewer).await;
    app.send(Method::POST, &path, Some(&viewer), Some(&json!({"deadline_s": 100}))).await.assert_error(403, "planner");
    // A dry run predicts the same outcome and changes nothing but a proposed plan.
    let preview = app.post(&path, json!({"deadline_s": 100, "target_sites": ["A"], "dry_run": true})).await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert_eq!(app.get(&format!("/v1/sites/{src}")).await.body["state"], "active", "a dry run drains nothing");
    assert_eq!(app.get(&format!("/v1/plans/{}", preview.body["plan_id"])).await.body["status"], "proposed");
    assert_eq!(app.count("migration_job").await, 0);
    // Only A may receive, and 100 s holds one of the two movers: the higher priority goes.
    let report = app.post(&path, json!({"deadline_s": 100, "target_sites": ["A"]})).await;
    assert_eq!(report.status, 200, "{}", report.body);
    let r = &report.body;
    let names = |list: &str| -> Vec<String> {
        r[list].as_array().unwrap().iter().map(|e| e["vm"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names("out_in_time"), ["hi"], "{r}");
    assert_eq!(r["out_in_time"][0]["to"], "A");
    assert!(r["out_in_time"][0]["predicted_finish_s"].as_f64().unwrap() <= 100.0);
    assert_eq!(names("late"), ["lo"]);
    assert!(r["late"][0]["why"].as_str().unwrap().contains("deadline is too short"), "{r}");
    let mut staying = names("staying");
    staying.sort();
    assert_eq!(staying, ["huge", "p"]);
    let why_huge = r["staying"].as_array().unwrap().iter().find(|e| e["vm"] == "huge").unwrap()["why"].clone();
    assert!(why_huge.as_str().unwrap().starts_with("no room"), "{why_huge}");
    for list in ["out_in_time", "late", "staying"] {
        assert_eq!(preview.body[list].as_array().map(Vec::len), r[list].as_array().map(Vec::len), "{list}");
    }

    assert_eq!(app.get(&format!("/v1/sites/{src}")).await.body["state"], "draining");
    let plan = app.get(&format!("/v1/plans/{}", r["plan_id"])).await;
    assert_eq!(plan.body["status"], "applied");
    assert_eq!(app.count("migration_job").await, 2, "both movers are recorded, the late one too");
    assert!(plan.body["objective"]["evacuation_penalty"].as_f64().unwrap() > 0.0, "two VMs stay");

    // Refusals change nothing.
    app.post(&path, json!({"deadline_s": 0})).await.assert_error(422, "deadline_s");
    app.post(&path, json!({"deadline_s": 60, "target_sites": ["nowhere"]})).await.assert_error(422, "no site named");
    app.post(&path, json!({"deadline_s": 60, "target_sites": ["SRC"]})).await.assert_error(422, "being evacuated");
    // A long list is refused at once (750 KB of names once took seconds and gigabytes: copied into every VM).
    let many: Vec<String> = (0..20_000).map(|i| format!("site-{i}")).collect();
    app.post(&path, json!({"deadline_s": 60, "target_sites": many})).await.assert_error(422, "at most 256");
    app.post("/v1/sites/999/evacuate", json!({"deadline_s": 60})).await.assert_error(404, "site 999");
    assert_eq!(app.count("plan").await, 2, "the dry run's and the evacuation's");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_qemu_vm_is_predicted_cheap_to_bring_back_where_its_memory_was_kept(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut ids = Vec::new();
    for name in ["DEAR", "BACK", "OTHER"] {
        ids.push(site_at(&app, name, "active").await);
    }
    for to in ["BACK", "OTHER"] {
        app.create("/v1/links", with(link("DEAR", to), "/symmetric", json!(true))).await;
    }
    for (id, price) in ids.iter().zip([20.0, 300.0, 300.0]) {
        flat_signals(&app, *id, price, 50.0, "EUR").await;
    }
    // It runs at BACK and moves to DEAR; the move is recorded done as a qemu VM's.
    app.create("/v1/vms", big_vm("big", "BACK")).await;
    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["moves"][0]["to"], "DEAR", "{}", applied.body);
    for statement in [
        "update migration_job set state = 'done'",
        "update vm set site_id = (select site_id from site where name = 'DEAR'), driver = 'qemu', \
         driver_spec = '{\"memory_mib\": 262144}'",
    ] {
        sqlx::query(statement).execute(&app.pool).await.unwrap();
    }
    // The prices turn: BACK and OTHER are alike, but BACK kept its 256 GiB of memory.
    for (id, price) in ids.iter().zip([300.0, 20.0, 20.0]) {
        flat_signals(&app, *id, price, 50.0, "EUR").await;
    }
    let plan = app.post("/v1/plans", json!({})).await.body;
    let back = &plan["moves"][0];
    assert_eq!(back["to"], "BACK", "{plan}");
    // Its 40 GiB disk travels whole; of its memory, only what the model says BACK lost.
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let (disk, memory) = (40.0 * GIB, 256.0 * GIB);
    assert!(back["predicted_bytes"].as_f64().unwrap() < disk + 0.01 * memory, "{back}");
}
