//! Simulations: `POST /v1/simulations` replays the stored signals of a past
//! window through the policies on the server's own inventory, in the
//! background, and serves the report and its plots; `heliotrope simulate`
//! does the same from a trace file (a synthetic one here, and the real
//! June-July 2023 traces from ../shared/data: skipped where they are
//! absent, failed under CI).

use std::process::Command;

use chrono::{DateTime, Duration, DurationRound, Utc};
use heliotrope::db::MIGRATOR;
use heliotrope_api_spec::Role;
use heliotrope_tests::{prerequisite, spawn_app, with, workspace_binary, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::plans::{big_vm, site_at};

fn this_hour() -> DateTime<Utc> {
    Utc::now().duration_trunc(Duration::hours(1)).unwrap()
}

/// Two days of flat signals up to the hour before this one.
async fn two_days(app: &TestApp, site_id: i64, price: f64, carbon: f64) {
    let rows: Vec<Value> = (-48..0)
        .map(|h| {
            json!({"timestamp_utc": this_hour() + Duration::hours(h), "carbon_g_per_kwh": carbon,
                   "price_per_mwh": price, "currency": "EUR"})
        })
        .collect();
    let pushed = app.post(&format!("/v1/sites/{site_id}/signals"), Value::Array(rows)).await;
    assert_eq!(pushed.status, 200, "{}", pushed.body);
}

async fn finished(app: &TestApp, id: i64) -> Value {
    let done = |simulation: &Value| simulation["status"] != "running";
    app.wait_for(&format!("simulation {id} finished"), done, &format!("/v1/simulations/{id}")).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_simulation_replays_stored_signals_in_the_background(pool: PgPool) {
    let app = spawn_app(pool).await;
    let dear = site_at(&app, "DEAR", "active").await;
    let cheap = site_at(&app, "CHEAP", "active").await;
    app.create("/v1/links", with(heliotrope_tests::link("DEAR", "CHEAP"), "/symmetric", json!(true))).await;
    two_days(&app, dear, 300.0, 400.0).await;
    two_days(&app, cheap, 20.0, 50.0).await;
    app.create("/v1/vms", big_vm("big", "DEAR")).await;
    app.create("/v1/vms", with(heliotrope_tests::vm("fixed", "DEAR"), "/pinned", json!(true))).await;

    let (from, to) = (this_hour() - Duration::hours(12), this_hour());
    let request = json!({"from": from, "to": to, "policies": ["planner", "greedy"]});
    let viewer = app.token(Role::Viewer).await;
    let planner = app.token(Role::Planner).await;
    app.send(Method::POST, "/v1/simulations", Some(&viewer), Some(&request)).await.assert_error(403, "planner");
    let started = app.send(Method::POST, "/v1/simulations", Some(&planner), Some(&request)).await;
    assert_eq!(started.status, 202, "{}", started.body);
    assert_eq!(started.body["status"], "running");
    let id = started.body["id"].as_i64().unwrap();

    let done = finished(&app, id).await;
    assert_eq!(done["status"], "done", "{done}");
    let report = &done["report"];
    assert_eq!((report["hours"].as_u64(), report["vms"].as_u64()), (Some(12), Some(2)), "{report}");
    assert_eq!(report["sites"], json!(["DEAR", "CHEAP"]));
    assert_eq!((report["synthetic"].as_bool(), report["currency"].as_str()), (Some(false), Some("EUR")));
    assert_eq!(done["progress_hours"], 12 * 4, "four policies ran, static and the oracle besides those asked for");
    let policy = |name: &str| report["policies"][name].clone();
    assert_eq!(policy("static")["migrations"], 0);
    for name in ["planner", "oracle"] {
        let p = policy(name);
        assert_eq!((p["migrations"].as_u64(), p["capacity_violations"].as_u64()), (Some(1), Some(0)), "{name}: {p}");
        assert!(p["objective"].as_f64() < policy("static")["objective"].as_f64(), "{name}: {p}");
        assert!(p["emissions_kg"].as_f64() < policy("static")["emissions_kg"].as_f64());
        assert!(p["migrated_bytes"].as_f64().unwrap() > 256.0 * 1.07e9, "memory and disk travel: {p}");
    }
    let share = policy("planner")["oracle_share"].as_f64().unwrap();
    assert!((0.95..=1.05).contains(&share), "flat signals: the planner does what the oracle does ({share})");
    assert_eq!(report["series"]["vcpus_at"]["planner"][1][11], 64.0, "big runs at CHEAP by the end");

    let plot = app.get(&format!("/v1/simulations/{id}/plots/placement.svg")).await;
    assert_eq!(plot.status, 200);
    app.get(&format!("/v1/simulations/{id}/plots/pie.svg")).await.assert_error(404, "no plot 'pie.svg'");
    app.get("/v1/simulations/999999").await.assert_error(404, "simulation 999999");
    let listed = app.get("/v1/simulations").await.body;
    assert_eq!(listed["items"][0]["id"], id);
    assert!(listed["items"][0]["report"].is_null(), "lists leave the reports out: {listed}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_plot_is_svg(pool: PgPool) {
    let app = spawn_app(pool).await;
    let dear = site_at(&app, "DEAR", "active").await;
    two_days(&app, dear, 300.0, 400.0).await;
    app.create("/v1/vms", heliotrope_tests::vm("one", "DEAR")).await;
    let request = json!({"from": this_hour() - Duration::hours(3), "to": this_hour(), "forecast": "perfect"});
    let id = app.post("/v1/simulations", request).await.body["id"].as_i64().unwrap();
    assert_eq!(finished(&app, id).await["status"], "done");
    let plot = reqwest::get(app.url(&format!("/v1/simulations/{id}/plots/emissions.svg"))).await.unwrap();
    assert_eq!(plot.status(), 401, "plots need a token like the rest");
    let plot = reqwest::Client::new()
        .get(app.url(&format!("/v1/simulations/{id}/plots/emissions.svg")))
        .bearer_auth(heliotrope_tests::ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(plot.headers()["content-type"], "image/svg+xml");
    let svg = plot.text().await.unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Emissions per hour by policy"), "{}", &svg[..200.min(svg.len())]);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_simulation_requests_are_refused_and_nothing_runs(pool: PgPool) {
    let app = spawn_app(pool).await;
    let dear = site_at(&app, "DEAR", "active").await;
    two_days(&app, dear, 300.0, 400.0).await;
    let window = |from: i64, to: i64| json!({"from": this_hour() + Duration::hours(from), "to": this_hour() + Duration::hours(to)});
    app.post("/v1/simulations", window(-3, 0)).await.assert_error(422, "no VMs");
    app.create("/v1/vms", heliotrope_tests::vm("one", "DEAR")).await;
    app.post("/v1/simulations", window(-3, 2)).await.assert_error(422, "to: must lie in the past");
    app.post("/v1/simulations", window(-3, -5)).await.assert_error(422, "to: must come after from");
    app.post("/v1/simulations", window(-24 * 70, 0)).await.assert_error(422, "at most 62 days");
    // The persistence forecast needs the day before the window: there is none before -48 h.
    app.post("/v1/simulations", window(-40, -30)).await.assert_error(422, "signals: no carbon for site DEAR");
    let mut odd = window(-3, 0);
    odd["policies"] = json!(["static", "psychic"]);
    app.post("/v1/simulations", odd).await.assert_error(422, "policies[1]");
    let mut odd = window(-3, 0);
    odd["policies"] = json!(["planner", "planner"]);
    app.post("/v1/simulations", odd).await.assert_error(422, "policies[1]: is named twice");
    let mut odd = window(-3, 0);
    odd["policies"] = json!(vec!["static"; 10_000]);
    app.post("/v1/simulations", odd).await.assert_error(422, "one to four");
    let mut odd = window(-3, 0);
    odd["forecast"] = json!("noisy:9");
    app.post("/v1/simulations", odd).await.assert_error(422, "SIGMA must be between 0 and 2");
    let mut odd = window(-3, 0);
    odd["budget"] = json!(1);
    app.post("/v1/simulations", odd).await.assert_error(422, "budget");
    assert_eq!(app.count("simulation").await, 0);
}

/// Writes a trace file of `days` days for two regions: GB always four
/// times cleaner and cheaper than DE-LU.
fn synthetic_traces(dir: &std::path::Path, days: i64) -> std::path::PathBuf {
    let mut csv = String::from("region,timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency\n");
    let start: DateTime<Utc> = "2023-06-05T00:00:00Z".parse().unwrap();
    for h in 0..days * 24 {
        let t = (start + Duration::hours(h)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        csv.push_str(&format!("GB,{t},100,40,USD\nDE-LU,{t},400,160,USD\n"));
    }
    let path = dir.join("traces.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

#[test]
fn the_simulate_command_reports_a_table_plots_and_a_json_summary() {
    let dir = tempfile::tempdir().unwrap();
    let traces = synthetic_traces(dir.path(), 4);
    let fleet = dir.path().join("fleet.json");
    std::fs::write(&fleet, r#"{"vms": 40, "groups": false, "pinned_share": 0, "disk_gib": [20]}"#).unwrap();
    let out = dir.path().join("out");
    let ran = Command::new(workspace_binary("heliotrope"))
        .args(["--min-net-saving", "0.01", "simulate", "--traces"])
        .arg(&traces)
        .arg("--fleet")
        .arg(&fleet)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&ran.stderr));
    assert!(stdout.contains("40 VMs on 2 sites, 72 hours from 2023-06-06 00:00 UTC"), "{stdout}");
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for name in ["static", "greedy", "planner", "oracle"] {
        let p = &summary["policies"][name];
        for field in
            ["emissions_kg", "energy_cost", "migrated_bytes", "migrations", "downtime_s", "capacity_violations"]
        {
            assert!(p[field].is_number(), "{name}.{field}: {summary}");
        }
        assert_eq!(p["capacity_violations"], 0, "{name}");
    }
    assert!(summary.get("series").is_none(), "the hourly series are in report.json only");
    let planner = &summary["policies"]["planner"];
    assert!(planner["migrations"].as_u64().unwrap() > 0, "GB is always better: {summary}");
    assert!(planner["oracle_share"].as_f64().unwrap() > 0.9, "{summary}");
    for file in ["report.json", "emissions.svg", "placement.svg", "savings.svg"] {
        let body = std::fs::read_to_string(out.join(file)).unwrap();
        assert!(body.len() > 500, "{file}");
    }

    // A missing file, bad traces and an unknown fleet field each say what is wrong.
    let refused = |args: &[&str], needle: &str| {
        let ran = Command::new(workspace_binary("heliotrope")).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&ran.stderr);
        assert!(!ran.status.success() && stderr.contains(needle), "{args:?}: {stderr}");
    };
    let traces = traces.to_str().unwrap();
    refused(&["simulate", "--traces", "/nonexistent.csv"], "reading /nonexistent.csv");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "region,timestamp_utc,carbon_g_per_kwh\nGB,2023-06-05T00:00:00Z,NaN\n").unwrap();
    refused(&["simulate", "--traces", bad.to_str().unwrap()], "line 2");
    std::fs::write(&fleet, r#"{"vm_count": 4}"#).unwrap();
    refused(&["simulate", "--traces", traces, "--fleet", fleet.to_str().unwrap()], "unknown field `vm_count`");
    refused(&["simulate", "--traces", traces, "--from", "2023-06-05"], "persistence forecast needs 24 hours");
    refused(&["simulate", "--traces", traces, "--policy", "psychic"], "not a policy");
}

/// The README's run, cut to fit a debug build: the real June 2023 traces
/// of all 16 regions (through ERCOT's 2,490 USD/MWh hour on June 20), a
/// seeded fleet of the default mix. The planner keeps every capacity,
/// beats greedy and captures most of what the oracle saves.
#[test]
fn three_weeks_of_real_traces() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/carbon_price_2023-06-05_2023-07-30.csv");
    if prerequisite(&format!("the real traces at {path}"), std::fs::metadata(path)).is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let ran = Command::new(workspace_binary("heliotrope"))
        .args(["simulate", "--traces", path, "--vms", "200", "--to", "2023-06-26", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&ran.stderr));
    eprintln!("{stdout}");
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!((summary["hours"].as_u64(), summary["sites"].as_array().map(Vec::len)), (Some(20 * 24), Some(16)));
    let p = |name: &str| summary["policies"][name].clone();
    for name in ["static", "greedy", "planner", "oracle"] {
        assert_eq!(p(name)["capacity_violations"], 0, "{name}");
    }
    assert_eq!(p("static")["migrations"], 0);
    let objective = |name: &str| p(name)["objective"].as_f64().unwrap();
    assert!(objective("planner") < objective("greedy"), "the planner beats greedy: {summary}");
    assert!(objective("oracle") < objective("static"), "{summary}");
    let share = p("planner")["oracle_share"].as_f64().unwrap();
    assert!(share >= 0.8, "the planner's share of the oracle's saving: {share}");
}
