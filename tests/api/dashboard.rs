//! The dashboard in a real browser: `heliotrope demo --no-rebalance`
//! serves it with a seeded fleet, sim executors and synthetic signals;
//! tests/browser/dashboard.mjs (playwright-core driving Debian's Chromium)
//! signs in as a planner and as a viewer and clicks through every view.
//! Screenshots land in tests/browser/artifacts/.

use std::path::Path;
use std::process::Command;

use chrono::{DurationRound, Utc};
use heliotrope::db::MIGRATOR;
use heliotrope_api_spec::Role;
use heliotrope_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::demo::{start_demo, stop_demo};

#[sqlx::test(migrator = "MIGRATOR")]
async fn planners_and_viewers_use_the_dashboard_in_chromium(pool: PgPool) {
    let browser_tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        browser_tests.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: scripts/test installs it (npm ci --prefix tests/browser) with Chromium"
    );
    let (mut demo, app) =
        start_demo(&pool, &["--vms", "48", "--sites", "GB,DE-LU,US-CAL-CISO,JP-TK", "--no-rebalance"]).await;
    let rebalancer = app.get("/v1/rebalancer").await.body;
    assert_eq!(rebalancer["replica_rebalances"], false, "--no-rebalance leaves plans to the planners: {rebalancer}");
    cheap_power_at_the_roomiest_site(&app).await;

    let status = Command::new("node")
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg(browser_tests.join("dashboard.mjs"))
        .current_dir(&browser_tests)
        .env("HELIOTROPE_URL", app.url(""))
        .env("PLANNER_TOKEN", app.token(Role::Planner).await)
        .env("VIEWER_TOKEN", app.token(Role::Viewer).await)
        .env("ARTIFACTS", browser_tests.join("artifacts"))
        .status()
        .expect("node runs (scripts/test installs Node.js)");
    assert!(status.success(), "the browser tests failed (their output is above): {status}");
    stop_demo(&mut demo);
}

/// Makes the site with the most free vCPUs far cheaper and cleaner than
/// the rest, measured and forecast (pushed over the synthetic signals),
/// so that the planner's plan moves VMs whatever the demo's random draw.
async fn cheap_power_at_the_roomiest_site(app: &TestApp) {
    let overview = app.get("/v1/overview").await.body;
    let sites = overview["sites"].as_array().expect("sites");
    let free = |s: &Value| s["vcpus"].as_i64().unwrap() - s["vcpus_used"].as_i64().unwrap();
    let roomiest = sites.iter().max_by_key(|s| free(s)).expect("a site");
    let now = Utc::now().duration_trunc(chrono::Duration::hours(1)).unwrap();
    let rows: Vec<Value> = (-6..60)
        .map(|h| {
            let at = now + chrono::Duration::hours(h);
            let forecast = at > Utc::now();
            json!({"timestamp_utc": at, "carbon_g_per_kwh": 15.0, "price_per_mwh": 4.0, "currency": "USD",
                   "forecast": forecast, "issued_at": forecast.then(Utc::now)})
        })
        .collect();
    let pushed = app.post(&format!("/v1/sites/{}/signals", roomiest["id"]), json!(rows)).await;
    assert_eq!(pushed.status, 200, "{}", pushed.body);
}
