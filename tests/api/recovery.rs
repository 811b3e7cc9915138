//! Disaster recovery with real executor processes (sim driver): a site's
//! executor is killed with its VMs, the site is failed, and every VM runs
//! again at its standby, once, from the replica the executors kept (no
//! test code touches a replica), holding every write made before its
//! recovery point. The lost site's executor, back, starts none of them:
//! it quarantines their stale copies until an operator discards them.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use heliotrope::config::PlannerConfig;
use heliotrope::db::MIGRATOR;
use heliotrope::startup::Services;
use heliotrope_executor::content::PAGE;
use heliotrope_executor::sim::{write_stamp, BLOCK_PAGES};
use heliotrope_tests::{link, spawn_with, vm, with, Processes, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::plans::{flat_signals, site_at};
use crate::whole_loop::{executor, start};

/// A scheduler whose executors sync replicas every second.
async fn app(pool: PgPool) -> TestApp {
    let planner = PlannerConfig { replication_interval_s: 1.0, ..PlannerConfig::default() };
    spawn_with(pool, Services { planner, ..Services::driven() }).await
}

/// Sites A, B and C, A linked both ways to the others, and `n` busy VMs
/// at A, each with one standby (B for even ones, C for odd) and an
/// address. Their executors run them at `SCALE` MiB per GiB.
const SCALE: &str = "4";

async fn fleet(app: &TestApp, n: usize) -> (i64, Vec<(i64, String, &'static str)>) {
    let a = site_at(app, "A", "active").await;
    for name in ["B", "C"] {
        site_at(app, name, "active").await;
        app.create("/v1/links", with(link("A", name), "/symmetric", json!(true))).await;
    }
    let mut vms = Vec::new();
    for k in 0..n {
        let (name, standby) = (format!("v{k}"), if k % 2 == 0 { "B" } else { "C" });
        // 4 MiB of memory and an 8 MiB disk as sim VMs (4 MiB per GiB), the disk written at about 100 KB/s.
        let busy = with(with(vm(&name, "A"), "/memory_gib", json!(1.0)), "/disk_gib", json!(2.0));
        let spec = with(with(busy, "/dirty_rate_mbps", json!(4000.0)), "/standby_sites", json!([standby]));
        let spec = with(spec, "/addresses", json!([format!("10.7.0.{}", k + 10)]));
        let spec = with(spec, "/priority", json!(10 + k));
        vms.push((app.create("/v1/vms", spec).await["id"].as_i64().unwrap(), name, standby));
    }
    (a, vms)
}

/// The one executor of `site`, as the API shows it.
async fn executor_at(app: &TestApp, site: &str) -> Value {
    app.get(&format!("/v1/executors?site={site}")).await.body["items"][0].clone()
}

fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> =
        list.as_array().into_iter().flatten().filter_map(|n| n.as_str().map(str::to_owned)).collect();
    names.sort();
    names
}

/// Every block of `lost` (the disk the lost site was left with) that was
/// last written before `point`, or never, is in `recovered` as it is in
/// `lost`, unless the recovered VM wrote it again since it restarted at
/// `restarted`: the replica held every write made before its recovery point.
fn holds_every_write_before(lost: &Path, recovered: &Path, point: SystemTime, restarted: SystemTime) {
    let block = BLOCK_PAGES as usize * PAGE;
    let (lost, recovered) = (std::fs::File::open(lost).unwrap(), std::fs::File::open(recovered).unwrap());
    let size = lost.metadata().unwrap().len() as usize;
    assert_eq!(recovered.metadata().unwrap().len() as usize, size);
    let (mut was, mut is) = (vec![0u8; block], vec![0u8; block]);
    let (mut checked, mut written) = (0, 0);
    for at in (0..size).step_by(block) {
        lost.read_exact_at(&mut was, at as u64).unwrap();
        recovered.read_exact_at(&mut is, at as u64).unwrap();
        written += usize::from(write_stamp(&was).is_some_and(|t| t + Duration::from_millis(1) < point));
        let before_point = write_stamp(&was).is_none_or(|t| t + Duration::from_millis(1) < point);
        let written_since_restart = write_stamp(&is).is_some_and(|t| t >= restarted);
        if before_point && !written_since_restart {
            assert!(was == is, "block at {at}: a write from before the recovery point is missing");
            checked += 1;
        }
    }
    assert!(checked > 0);
    assert!(written > 0, "the guest wrote nothing before its recovery point: nothing was checked");
}

/// An SDN controller that acknowledges every move it is told, and keeps what it was told.
async fn sdn_controller() -> (String, Arc<Mutex<Vec<Value>>>) {
    let told: Arc<Mutex<Vec<Value>>> = Arc::default();
    let keep = told.clone();
    let router = axum::Router::new().route(
        "/moves",
        axum::routing::post(move |axum::Json(notice): axum::Json<Value>| async move {
            keep.lock().unwrap().push(notice);
            axum::http::StatusCode::NO_CONTENT
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/moves", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, told)
}

fn time(v: &Value) -> SystemTime {
    let at: chrono::DateTime<chrono::Utc> = serde_json::from_value(v.clone()).unwrap();
    at.into()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_lost_sites_vms_run_at_their_standbys_once_and_its_executor_back_starts_none(pool: PgPool) {
    let app = app(pool.clone()).await;
    let (a, vms) = fleet(&app, 10).await;
    let data = tempfile::tempdir().unwrap();
    let mut executors = Processes::default();
    let (controller, notices) = sdn_controller().await;
    let mut how = HashMap::new();
    for site in ["A", "B", "C"] {
        let mut h = executor(&app, site, SCALE).await;
        h.flags = ["--network", "webhook", "--network-webhook", &controller].map(String::from).to_vec();
        executors.0.push(start(&app, &h, data.path()));
        how.insert(site, h);
    }
    // The executors replicate by themselves; A's runs all ten.
    let synced = |page: &Value| {
        page["items"]
            .as_array()
            .is_some_and(|vms| vms.len() == 10 && vms.iter().all(|v| v["standbys"][0]["synced_at"].is_string()))
    };
    app.wait_for("every replica synced", synced, "/v1/vms?site=A").await;
    let all: Vec<String> = {
        let mut all: Vec<String> = vms.iter().map(|(_, n, _)| n.clone()).collect();
        all.sort();
        all
    };
    let runs_all = |page: &Value| names(&page["items"][0]["running"]) == all;
    app.wait_for("A's executor runs the ten", runs_all, "/v1/executors?site=A").await;

    // The site is lost with its executor.
    let mut news = app.events("/v1/events").await;
    executors.0[0].kill().unwrap();
    executors.0[0].wait().unwrap();
    let failed_at = Instant::now();
    let failed = app.post(&format!("/v1/sites/{a}/fail"), json!({"reason": "earthquake"})).await;
    assert_eq!(failed.status, 200, "{}", failed.body);
    let report = &failed.body;
    assert_eq!(report["site"], "A");
    assert_eq!(report["reason"], "earthquake");
    assert_eq!(report["vms"].as_array().unwrap().len(), 10, "{report}");
    // Highest priority first, each to its standby from a replica of known freshness.
    assert_eq!(report["vms"][0]["vm"], "v9", "{report}");
    for v in report["vms"].as_array().unwrap() {
        assert!(["waiting", "starting", "running"].contains(&v["state"].as_str().unwrap()), "{v}");
        let standby = vms.iter().find(|(_, n, _)| v["vm"] == *n.as_str()).unwrap().2;
        assert_eq!(v["to"], standby, "{v}");
        assert!(v["recovery_point"].is_string() && v["rpo_s"].as_f64().unwrap() >= 0.0, "{v}");
        assert!(v["lost_bytes"].is_u64(), "{v}");
    }
    assert_eq!(app.get(&format!("/v1/sites/{a}")).await.body["state"], "down");
    // Failing it again changes nothing: the same recoveries.
    let again = app.post(&format!("/v1/sites/{a}/fail"), json!({})).await;
    assert_eq!(again.body["failed_at"], report["failed_at"]);
    assert_eq!(app.count("recovery").await, 10);

    let running = |r: &Value| r["vms"].as_array().is_some_and(|v| v.iter().all(|v| v["state"] == "running"));
    let recovered = app.wait_for("all ten run at their standbys", running, &format!("/v1/sites/{a}/recovery")).await;
    assert!(failed_at.elapsed() < Duration::from_secs(60), "{:?}", failed_at.elapsed());
    // Exactly once: each VM's record is at its standby, and runs there and nowhere else.
    let (mut at_b, mut at_c) = (Vec::new(), Vec::new());
    for (id, name, standby) in &vms {
        assert_eq!(app.get(&format!("/v1/vms/{id}")).await.body["site"], *standby);
        if *standby == "B" {
            at_b.push(name.clone())
        } else {
            at_c.push(name.clone())
        }
    }
    at_b.sort();
    at_c.sort();
    for (site, expected) in [("B", &at_b), ("C", &at_c)] {
        let runs = |page: &Value| names(&page["items"][0]["running"]) == *expected;
        app.wait_for("the standby reports what it restarted", runs, &format!("/v1/executors?site={site}")).await;
    }
    // The event stream told each VM's move to its standby, then that it runs there.
    let mut told: HashMap<String, Vec<String>> = HashMap::new();
    while told.values().filter(|states| states.ends_with(&["running".to_owned()])).count() < 10 {
        let (kind, event) = news.next().await;
        if kind == "recovered" {
            assert!(event["recovery_point"].is_string() && event["lost_bytes"].is_u64(), "{event}");
            told.entry(event["vm"].as_str().unwrap().to_owned())
                .or_default()
                .push(event["state"].as_str().unwrap().into());
        }
    }
    assert!(told.values().all(|states| states == &["starting", "running"]), "{told:?}");
    // Each VM's address was taken over at its standby: the SDN controller was told.
    let notices = notices.lock().unwrap().clone();
    assert_eq!(notices.len(), 10, "{notices:?}");
    for (id, name, standby) in &vms {
        let notice = notices.iter().find(|n| n["vm"] == *name.as_str()).unwrap();
        let recovery = recovered["vms"].as_array().unwrap().iter().find(|v| v["vm"] == *name.as_str()).unwrap();
        assert_eq!(
            (&notice["from"], &notice["to"], &notice["recovery"]),
            (&json!("A"), &json!(standby), &recovery["id"])
        );
        let address = app.get(&format!("/v1/vms/{id}")).await.body["addresses"].clone();
        assert_eq!(notice["addresses"], address, "{notice}");
        assert!(notice.get("migration").is_none(), "{notice}");
        assert!(recovery["detail"].as_str().unwrap().contains("the SDN controller acknowledged"), "{recovery}");
    }
    // Each from its replica, holding every write made before its recovery point.
    for v in recovered["vms"].as_array().unwrap() {
        let name = v["vm"].as_str().unwrap();
        let site = v["to"].as_str().unwrap();
        assert!(v["detail"].as_str().unwrap().contains("restarted from its replica"), "{v}");
        holds_every_write_before(
            &data.path().join(format!("A/vms/{name}/disk.img")),
            &data.path().join(format!("{site}/vms/{name}/disk.img")),
            time(&v["recovery_point"]),
            time(&v["started_at"]),
        );
    }

    // A's executor comes back while A is down: it holds every copy aside, stopped.
    executors.0[0] = start(&app, &how["A"], data.path());
    let held = |r: &Value| r["vms"].as_array().is_some_and(|v| v.iter().all(|v| v["quarantine"] == "held"));
    app.wait_for("the stale copies are quarantined", held, &format!("/v1/sites/{a}/recovery")).await;
    let back = executor_at(&app, "A").await;
    assert!(back["fenced_since"].is_string(), "{back}");
    assert_eq!(names(&back["running"]), Vec::<String>::new(), "{back}");
    for (_, name, _) in &vms {
        assert!(!data.path().join(format!("A/vms/{name}")).exists());
    }
    // A is up again: its executor lifts its fence and still starts none of them.
    let site = app.get(&format!("/v1/sites/{a}")).await.body;
    let spec = json!({
        "name": "A", "region": site["region"], "latitude": site["latitude"], "longitude": site["longitude"],
        "timezone": site["timezone"], "capacity": site["capacity"], "pue": site["pue"],
        "power_model": site["power_model"], "state": "active"
    });
    assert_eq!(app.put(&format!("/v1/sites/{a}"), spec).await.status, 200);
    let unfenced = |page: &Value| page["items"][0]["fenced_since"].is_null();
    let back = app.wait_for("A's fence lifted", unfenced, "/v1/executors?site=A").await;
    assert_eq!(names(&back["items"][0]["running"]), Vec::<String>::new(), "{back}");
    for (site, expected) in [("B", &at_b), ("C", &at_c)] {
        assert_eq!(names(&executor_at(&app, site).await["running"]), *expected);
    }
    // An operator discards one copy: it goes.
    let first = &recovered["vms"][0];
    let discarded = app.post(&format!("/v1/recoveries/{}/discard", first["id"]), json!({})).await;
    assert_eq!(discarded.status, 200, "{}", discarded.body);
    let gone = |r: &Value| r["quarantine"] == "discarded";
    app.wait_for("the copy discarded", gone, &format!("/v1/recoveries/{}", first["id"])).await;
    let aside = data.path().join(format!("A/quarantine/{}-{}", first["vm"].as_str().unwrap(), first["id"]));
    assert!(!aside.exists());
    drop(executors);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_evacuation_too_short_to_move_all_live_syncs_the_rest_and_they_recover_from_that_sync(pool: PgPool) {
    // Replicas sync every 10 minutes: after the first, only a final sync freshens one.
    let planner = PlannerConfig { replication_interval_s: 600.0, ..PlannerConfig::default() };
    let app = spawn_with(pool, Services { planner, ..Services::driven() }).await;
    let a = site_at(&app, "A", "active").await;
    let b = site_at(&app, "B", "active").await;
    for id in [a, b] {
        flat_signals(&app, id, 100.0, 300.0, "EUR").await;
    }
    app.create("/v1/links", with(link("A", "B"), "/symmetric", json!(true))).await;
    // 1.5 GiB crosses the 800 Mbit/s link in about 16 s; 44 GiB in minutes.
    let quick = with(with(vm("quick", "A"), "/memory_gib", json!(0.5)), "/disk_gib", json!(1.0));
    app.create("/v1/vms", with(quick, "/priority", json!(90))).await;
    let mut synced_names = Vec::new();
    for k in 0..4 {
        let name = format!("s{k}");
        // Busy guests: their disks are written at about 12 KB/s as sim VMs.
        let busy = with(vm(&name, "A"), "/dirty_rate_mbps", json!(8000.0));
        let spec = with(with(busy, "/standby_sites", json!(["B"])), "/priority", json!(10 + k));
        app.create("/v1/vms", spec).await;
        synced_names.push(name);
    }
    app.create("/v1/vms", with(vm("pinned", "A"), "/pinned", json!(true))).await;
    let data = tempfile::tempdir().unwrap();
    let mut executors = Processes::default();
    for site in ["A", "B"] {
        executors.0.push(start(&app, &executor(&app, site, "0.25").await, data.path()));
    }
    let synced = |page: &Value| {
        let vms = page["items"].as_array().unwrap();
        vms.iter().filter(|v| v["standbys"][0]["synced_at"].is_string()).count() == 4
    };
    app.wait_for("the first syncs", synced, "/v1/vms?site=A").await;
    // The guests write on after their first sync.
    tokio::time::sleep(Duration::from_secs(10)).await;

    let ordered_at = SystemTime::now();
    let report = app.post(&format!("/v1/sites/{a}/evacuate"), json!({"deadline_s": 30})).await;
    assert_eq!(report.status, 200, "{}", report.body);
    let r = &report.body;
    let listed = |list: &str| -> Vec<String> {
        let mut names: Vec<String> =
            r[list].as_array().unwrap().iter().map(|e| e["vm"].as_str().unwrap().to_owned()).collect();
        names.sort();
        names
    };
    assert_eq!(listed("out_in_time"), ["quick"], "{r}");
    assert_eq!(listed("synced"), synced_names, "{r}");
    assert_eq!(listed("late"), Vec::<String>::new(), "{r}");
    assert_eq!(listed("staying"), ["pinned"], "{r}");
    for e in r["synced"].as_array().unwrap() {
        assert_eq!(e["to"], "B");
        assert!(e["predicted_finish_s"].as_f64().unwrap() <= 30.0, "{e}");
        assert!(time(&e["recovery_point"]) >= ordered_at, "{e}");
    }
    // The synced VMs' live moves, which would not have made it, are not run.
    let migrations = app.get("/v1/migrations").await.body;
    for m in migrations["items"].as_array().unwrap() {
        let expected = if m["vm"] == "quick" { m["state"].as_str().unwrap() } else { "cancelled" };
        assert_eq!(m["state"], expected, "{m}");
    }
    // Each final sync begins after the order and ends within the deadline.
    let fresh = |page: &Value| {
        let vms = page["items"].as_array().unwrap();
        let fresh = vms.iter().filter(|v| v["standbys"][0]["synced_at"].is_string());
        fresh.filter(|v| time(&v["standbys"][0]["synced_at"]) >= ordered_at).count() == 4
    };
    app.wait_for("the final syncs", fresh, "/v1/vms?site=A").await;
    assert!(ordered_at.elapsed().unwrap() < Duration::from_secs(30));
    let done =
        |page: &Value| page["items"].as_array().unwrap().iter().any(|m| m["vm"] == "quick" && m["state"] == "done");
    app.wait_for("the live move", done, "/v1/migrations").await;

    // The site is lost: the synced VMs restart at B from their final syncs; the pinned one is lost.
    executors.0[0].kill().unwrap();
    executors.0[0].wait().unwrap();
    let failed = app.post(&format!("/v1/sites/{a}/fail"), json!({})).await;
    assert_eq!(failed.status, 200, "{}", failed.body);
    let lost: Vec<&Value> = failed.body["vms"].as_array().unwrap().iter().filter(|v| v["state"] == "lost").collect();
    assert_eq!(lost.len(), 1, "{}", failed.body);
    assert_eq!(lost[0]["vm"], "pinned");
    assert!(lost[0]["detail"].as_str().unwrap().starts_with("no replica"), "{}", lost[0]);
    let running = |r: &Value| r["vms"].as_array().unwrap().iter().filter(|v| v["state"] == "running").count() == 4;
    let recovered = app.wait_for("the synced VMs run at B", running, &format!("/v1/sites/{a}/recovery")).await;
    for v in recovered["vms"].as_array().unwrap().iter().filter(|v| v["state"] == "running") {
        let point = time(&v["recovery_point"]);
        assert!(point >= ordered_at && point <= ordered_at + Duration::from_secs(30), "{v}");
        let name = v["vm"].as_str().unwrap();
        holds_every_write_before(
            &data.path().join(format!("A/vms/{name}/disk.img")),
            &data.path().join(format!("B/vms/{name}/disk.img")),
            point,
            time(&v["started_at"]),
        );
    }
    drop(executors);
}

/// A TCP proxy to the scheduler that can cut every connection and refuse
/// new ones (a site cut off by a partition), and heal.
struct Partition {
    url: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Partition {
    async fn to(app: &TestApp) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (cut, open) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (target, accepting, tasks) = (app.addr, cut.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if accepting.load(Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        Partition { url, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.open.lock().unwrap().drain(..).for_each(|task| task.abort());
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The latest write stamped in the disk image at `path`.
fn last_write(path: &Path) -> Option<SystemTime> {
    let disk = std::fs::read(path).unwrap();
    disk.chunks(BLOCK_PAGES as usize * PAGE).filter_map(write_stamp).max()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_partitioned_site_stops_its_vms_before_they_restart_elsewhere_and_never_resumes_them(pool: PgPool) {
    let app = app(pool.clone()).await;
    let (a, vms) = fleet(&app, 4).await;
    let data = tempfile::tempdir().unwrap();
    let partition = Partition::to(&app).await;
    let mut at_a = executor(&app, "A", SCALE).await;
    at_a.scheduler = Some(partition.url.clone());
    let mut executors = Processes::default();
    executors.0.push(start(&app, &at_a, data.path()));
    for site in ["B", "C"] {
        executors.0.push(start(&app, &executor(&app, site, SCALE).await, data.path()));
    }
    let synced = |page: &Value| {
        page["items"].as_array().is_some_and(|vms| vms.iter().all(|v| v["standbys"][0]["synced_at"].is_string()))
    };
    app.wait_for("every replica synced", synced, "/v1/vms?site=A").await;
    let runs_all = |page: &Value| names(&page["items"][0]["running"]).len() == 4;
    app.wait_for("A's executor runs the four", runs_all, "/v1/executors?site=A").await;

    // A is cut off with its VMs running; the operator declares it lost at once.
    partition.cut();
    let failed = app.post(&format!("/v1/sites/{a}/fail"), json!({"reason": "partitioned"})).await;
    assert_eq!(failed.status, 200, "{}", failed.body);
    assert!(failed.body["fenced_by"].is_string(), "restarts wait for A's lease: {}", failed.body);
    let running = |r: &Value| r["vms"].as_array().is_some_and(|v| v.iter().all(|v| v["state"] == "running"));
    let recovered = app.wait_for("all four run at their standbys", running, &format!("/v1/sites/{a}/recovery")).await;
    // A's executor paused its guests before any was handed to a standby: no two ever wrote at once.
    for v in recovered["vms"].as_array().unwrap() {
        let last = last_write(&data.path().join(format!("A/vms/{}/disk.img", v["vm"].as_str().unwrap())));
        assert!(last.is_some_and(|last| last < time(&v["started_at"])), "{v}: A wrote on at {last:?}");
    }

    // The partition heals: A's executor hears its site is down and its VMs restarted elsewhere.
    partition.heal();
    let held = |r: &Value| r["vms"].as_array().is_some_and(|v| v.iter().all(|v| v["quarantine"] == "held"));
    app.wait_for("A quarantines its copies", held, &format!("/v1/sites/{a}/recovery")).await;
    let back = executor_at(&app, "A").await;
    assert_eq!(names(&back["running"]), Vec::<String>::new(), "{back}");
    for v in recovered["vms"].as_array().unwrap() {
        let aside = data.path().join(format!("A/quarantine/{}-{}/disk.img", v["vm"].as_str().unwrap(), v["id"]));
        assert!(last_write(&aside).is_some_and(|last| last < time(&v["started_at"])), "{v}: never resumed");
    }
    assert_eq!(vms.len(), 4);
    drop(executors);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_site_whose_executors_fall_silent_is_shown_silent_until_it_is_failed(pool: PgPool) {
    let planner = PlannerConfig { site_silent_after_s: 1.0, ..PlannerConfig::default() };
    let app = spawn_with(pool, Services { planner, ..Services::driven() }).await;
    let a = site_at(&app, "A", "active").await;
    site_at(&app, "B", "active").await;
    let token = app.token(heliotrope_api_spec::Role::Executor).await;
    let body = json!({"site": "A", "address": "127.0.0.1:7071", "driver": "sim", "capacity": 1});
    let registered = app.send(reqwest::Method::POST, "/v1/executors/register", Some(&token), Some(&body)).await;
    assert_eq!(registered.status, 200, "{}", registered.body);
    let silent = |name: &str, overview: &Value| {
        overview["sites"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()["silent_since"].clone()
    };
    let now = app.get("/v1/overview").await.body;
    assert!(silent("A", &now).is_null() && silent("B", &now).is_null(), "{now}");
    // Not heard for longer than a second: A may be lost. B has no executor: nothing to tell.
    let quiet = |overview: &Value| silent("A", overview).is_string();
    let overview = app.wait_for("A shown silent", quiet, "/v1/overview").await;
    assert_eq!(silent("A", &overview), registered.body["last_heartbeat"], "{overview}");
    assert!(silent("B", &overview).is_null());
    // The operator confirms: A is down, no longer merely silent.
    assert_eq!(app.post(&format!("/v1/sites/{a}/fail"), json!({})).await.status, 200);
    assert!(silent("A", &app.get("/v1/overview").await.body).is_null());
}
