//! The dispatcher at run time, with real executor processes (sim driver,
//! scaled down): migrations of two plans and an evacuation share one link;
//! the recorded caps on it never sum above its usable bandwidth, the
//! evacuees go first, and what a finished migration frees goes to the next
//! within a few seconds.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use heliotrope::db::MIGRATOR;
use heliotrope_tests::{link, site, spawn_app, with, Processes, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::plans::{big_vm, flat_signals};
use crate::whole_loop::{executor, start};

/// The link's usable bandwidth: 200 Mbit/s less its 20% reserve. A migration needs 75
/// (1.5 x its 50 Mbit/s dirty rate), and the first admitted takes all there is.
const USABLE_MBPS: f64 = 160.0;

/// A VM at `at` worth moving (64 vCPUs) whose sim images are small: 16 GiB of memory and 1 of
/// disk, at 1 MiB per GiB.
async fn movable_vm(app: &TestApp, name: &str, at: &str) {
    let body = with(with(big_vm(name, at), "/memory_gib", json!(16.0)), "/disk_gib", json!(1.0));
    app.create("/v1/vms", body).await;
}

async fn ended(app: &TestApp, count: usize) -> Value {
    let all_ended = move |page: &Value| {
        page["items"].as_array().is_some_and(|m| {
            m.len() == count
                && m.iter().all(|m| {
                    ["done", "failed", "cancelled", "rolled_back", "expired"].contains(&m["state"].as_str().unwrap())
                })
        })
    };
    app.wait_for("every migration ended", all_ended, "/v1/migrations?limit=100").await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn plans_and_an_evacuation_share_a_link_within_its_bandwidth_evacuees_first(pool: PgPool) {
    let app = spawn_app(pool).await;
    let big = |name: &str| with(site(name), "/capacity/vcpus", json!(1000));
    let a = app.create("/v1/sites", big("A")).await["id"].as_i64().unwrap();
    let b = app.create("/v1/sites", big("B")).await["id"].as_i64().unwrap();
    flat_signals(&app, a, 300.0, 400.0, "EUR").await;
    flat_signals(&app, b, 20.0, 50.0, "EUR").await;
    app.create("/v1/links", with(link("A", "B"), "/bandwidth_mbps", json!(200.0))).await;

    let data = tempfile::tempdir().unwrap();
    let mut at_a = executor(&app, "A", "1").await;
    at_a.flags = vec!["--capacity".into(), "8".into()];
    let at_b = executor(&app, "B", "1").await;
    let _fleet = Processes(vec![start(&app, &at_a, data.path()), start(&app, &at_b, data.path())]);
    let online = |page: &Value| {
        page["items"].as_array().is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["state"] == "online"))
    };
    app.wait_for("both executors online", online, "/v1/executors").await;

    // Two plans, one after the other, then an evacuation of what is left at A.
    for names in [["p1", "p2"], ["p3", "p4"]] {
        for name in names {
            movable_vm(&app, name, "A").await;
        }
        let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
        assert_eq!(applied.body["status"], "applied", "{}", applied.body);
    }
    for name in ["e1", "e2"] {
        movable_vm(&app, name, "A").await;
    }
    let evacuated = app.post(&format!("/v1/sites/{a}/evacuate"), json!({"deadline_s": 3600})).await;
    assert_eq!(evacuated.status, 200, "{}", evacuated.body);
    let evacuated_at = Utc::now();

    let migrations = ended(&app, 6).await;
    let items = migrations["items"].as_array().unwrap();
    assert!(items.iter().all(|m| m["state"] == "done"), "{migrations}");

    // Admissions and ends, from the log.
    // Per migration: its job id, VM, when it was admitted, when it was done.
    type Row = (i64, String, Option<DateTime<Utc>>, DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(
        "select j.job_id, v.name, j.admitted_at, (select max(e.at) from migration_event e where e.job_id = j.job_id \
           and e.to_state = 'done') from migration_job j join vm v on v.vm_id = j.vm_id order by j.job_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let admitted: HashMap<&str, DateTime<Utc>> = rows.iter().map(|(_, vm, at, _)| (vm.as_str(), at.unwrap())).collect();
    // The evacuees went before every plan migration still waiting when the evacuation came.
    let waiting: Vec<&str> = admitted.iter().filter(|(_, &at)| at > evacuated_at).map(|(&vm, _)| vm).collect();
    for evacuee in ["e1", "e2"] {
        for other in waiting.iter().filter(|vm| vm.starts_with('p')) {
            assert!(admitted[evacuee] < admitted[other], "{evacuee} before {other}: {admitted:?}");
        }
    }
    // What each migration freed went to the next within a few seconds.
    let mut ends: Vec<DateTime<Utc>> = rows.iter().map(|r| r.3).collect();
    ends.sort();
    let mut starts: Vec<DateTime<Utc>> = admitted.values().copied().collect();
    starts.sort();
    for (end, next) in ends.iter().zip(starts.iter().skip(1)) {
        let gap = (*next - *end).num_milliseconds();
        assert!(gap < 3000, "{gap} ms from a migration's end to the next admission: {starts:?} {ends:?}");
    }

    // Every cap recorded, replayed: at each change the caps of the migrations holding the link sum within it.
    let caps: Vec<(i64, DateTime<Utc>, f64)> =
        sqlx::query_as("select job_id, at, cap_mbps from migration_cap order by at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(caps.len() >= 6, "{caps:?}");
    let ended_at: HashMap<i64, DateTime<Utc>> = rows.iter().map(|r| (r.0, r.3)).collect();
    let mut holding: HashMap<i64, f64> = HashMap::new();
    for (job, at, cap) in &caps {
        holding.retain(|other, _| ended_at[other] > *at);
        holding.insert(*job, *cap);
        let sum: f64 = holding.values().sum();
        assert!(sum <= USABLE_MBPS * (1.0 + 1e-9), "{sum} Mbit/s on a link of {USABLE_MBPS} at {at}: {holding:?}");
    }
}
