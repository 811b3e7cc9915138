//! `heliotrope signals backfill` against local stand-ins of the four
//! providers' history endpoints (each in its documented format), then
//! `signals export` and `simulate --database`: the what-if over the
//! backfilled window is the what-if over the same points exported as traces.

use std::process::{Command, Output};

use chrono::{DateTime, Duration, Utc};
use heliotrope::db::MIGRATOR;
use heliotrope_tests::{site, spawn_app, workspace_binary, FakeProvider, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

const FROM: &str = "2024-03-04T00:00:00Z";
const TO: &str = "2024-03-06T00:00:00Z";

fn start() -> DateTime<Utc> {
    FROM.parse().unwrap()
}

/// Each hour of the window (48), with a value that varies by hour of day and by `shift`.
fn hourly(shift: f64) -> impl Iterator<Item = (DateTime<Utc>, f64)> {
    (0..48).map(move |h| {
        (start() + Duration::hours(h), shift + 40.0 * ((h % 24) as f64 / 24.0 * std::f64::consts::TAU).sin().abs())
    })
}

fn em_carbon() -> String {
    let data: Vec<Value> = hourly(300.0)
        .map(|(t, v)| {
            json!({"zone": "DE", "carbonIntensity": v.round(), "datetime": t, "updatedAt": t, "createdAt": t,
                             "emissionFactorType": "lifecycle", "isEstimated": false, "estimationMethod": null})
        })
        .collect();
    json!({"zone": "DE", "data": data}).to_string()
}

fn em_prices() -> String {
    let data: Vec<Value> =
        hourly(60.0).map(|(t, v)| json!({"zone": "GB", "datetime": t, "value": v, "unit": "EUR/MWh"})).collect();
    json!({"zone": "GB", "data": data}).to_string()
}

fn entsoe_prices() -> String {
    let points: String = hourly(80.0)
        .enumerate()
        .map(|(i, (_, v))| format!("<Point><position>{}</position><price.amount>{v:.2}</price.amount></Point>", i + 1))
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<Publication_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3">
  <mRID>1</mRID><revisionNumber>1</revisionNumber><type>A44</type>
  <createdDateTime>2024-03-06T12:00:00Z</createdDateTime>
  <period.timeInterval><start>2024-03-04T00:00Z</start><end>2024-03-06T00:00Z</end></period.timeInterval>
  <TimeSeries><mRID>1</mRID><auction.type>A01</auction.type><businessType>A62</businessType>
    <in_Domain.mRID codingScheme="A01">10Y1001A1001A82H</in_Domain.mRID><out_Domain.mRID codingScheme="A01">10Y1001A1001A82H</out_Domain.mRID>
    <contract_MarketAgreement.type>A01</contract_MarketAgreement.type>
    <currency_Unit.name>EUR</currency_Unit.name><price_Measure_Unit.name>MWH</price_Measure_Unit.name><curveType>A03</curveType>
    <Period><timeInterval><start>2024-03-04T00:00Z</start><end>2024-03-06T00:00Z</end></timeInterval><resolution>PT60M</resolution>
      {points}</Period></TimeSeries>
</Publication_MarketDocument>"#
    )
}

/// Half-hourly national intensity, actuals known.
fn gb_national() -> String {
    let data: Vec<Value> = (0..96)
        .map(|i| {
            let from = start() + Duration::minutes(30 * i);
            let at = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%MZ").to_string();
            json!({"from": at(from), "to": at(from + Duration::minutes(30)),
                   "intensity": {"forecast": 200 + i, "actual": 190 + i, "index": "moderate"}})
        })
        .collect();
    json!({"data": data}).to_string()
}

/// Five-minute marginal emissions, lbs/MWh.
fn watttime_history() -> String {
    let data: Vec<Value> = (0..48 * 12)
        .map(|i| {
            json!({"point_time": start() + Duration::minutes(5 * i), "value": 700.0 + (i % 24) as f64,
                        "last_updated": start(), "imputed_data_used": false})
        })
        .collect();
    json!({"data": data, "meta": {"region": "CAISO_NORTH", "signal_type": "co2_moer", "data_point_period_seconds": 300,
        "model": {"type": "binned_regression", "date": "2023-03-01"}, "units": "lbs_co2_per_mwh", "warnings": []}})
    .to_string()
}

/// `heliotrope ARGS` against the test's database, reaching the fakes on loopback (they
/// answer on this test's runtime, which the wait must leave free).
async fn heliotrope(app: &TestApp, args: &[&str]) -> Output {
    let mut command = Command::new(workspace_binary("heliotrope"));
    command
        .args(args)
        .env("HELIOTROPE_DATABASE_URL", app.database_url())
        .env("HELIOTROPE_FEED_ALLOW_ADDRESSES", "127.0.0.0/8")
        .env("HELIOTROPE_FEED_PLAIN_HTTP", "true")
        .env("HELIOTROPE_FEED_BACKFILL_EM", "em-key")
        .env("HELIOTROPE_FEED_BACKFILL_ENTSOE", "entsoe-token")
        .env("HELIOTROPE_FEED_BACKFILL_WT", "user:pass")
        .env("RUST_LOG", "warn");
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

async fn points(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from signal_point").fetch_one(&app.pool).await.unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn backfill_from_four_providers_resumes_and_replays_as_its_export(pool: PgPool) {
    let app = spawn_app(pool).await;
    for name in ["DE-LU", "GB", "US-CAL-CISO"] {
        app.create("/v1/sites", site(name)).await;
    }
    let (em, em_base) = FakeProvider::start().await;
    em.reply("/v3/carbon-intensity/past-range", 200, "application/json", &em_carbon()).require(
        "/v3/carbon-intensity/past-range",
        "auth-token",
        "em-key",
    );
    em.reply("/v3/price-day-ahead/past-range", 200, "application/json", &em_prices()).require(
        "/v3/price-day-ahead/past-range",
        "auth-token",
        "em-key",
    );
    let (gb, gb_base) = FakeProvider::start().await;
    gb.reply("/intensity/2024-03-04T00:00Z/2024-03-06T00:00Z", 200, "application/json", &gb_national());
    let (wt, wt_base) = FakeProvider::start().await;
    wt.reply("/login", 200, "application/json", r#"{"token":"jwt-1"}"#);
    wt.reply("/v3/historical", 200, "application/json", &watttime_history()).require(
        "/v3/historical",
        "authorization",
        "Bearer jwt-1",
    );
    let (entsoe, entsoe_base) = FakeProvider::start().await;
    // ENTSO-E refuses at first (a token not yet activated): the backfill stops there.
    entsoe.reply("/api", 401, "text/xml", "<html>Unauthorized</html>");

    let feeds = [
        json!({"site": "DE-LU", "provider": "electricitymaps", "signal": "carbon", "area": "DE", "base_url": em_base,
               "credential_env": "HELIOTROPE_FEED_BACKFILL_EM"}),
        json!({"site": "GB", "provider": "gb_carbon_intensity", "signal": "carbon", "area": "national", "base_url": gb_base}),
        json!({"site": "GB", "provider": "electricitymaps", "signal": "price", "area": "GB", "base_url": em_base,
               "credential_env": "HELIOTROPE_FEED_BACKFILL_EM"}),
        json!({"site": "US-CAL-CISO", "provider": "watttime", "signal": "carbon", "area": "CAISO_NORTH",
               "base_url": wt_base, "credential_env": "HELIOTROPE_FEED_BACKFILL_WT"}),
        json!({"site": "US-CAL-CISO", "provider": "electricitymaps", "signal": "price", "area": "US-CAL-CISO",
               "base_url": em_base, "credential_env": "HELIOTROPE_FEED_BACKFILL_EM"}),
        json!({"site": "DE-LU", "provider": "entsoe", "signal": "price", "area": "10Y1001A1001A82H",
               "base_url": entsoe_base, "credential_env": "HELIOTROPE_FEED_BACKFILL_ENTSOE"}),
    ];
    for feed in feeds {
        app.create("/v1/feeds", feed).await;
    }

    let refused = heliotrope(&app, &["signals", "backfill", "--from", FROM, "--to", TO]).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("ENTSO-E refused the securityToken"), "{}", text(&refused));
    let before = points(&app).await;
    // 48 hourly EM carbon, 96 GB half-hours, 48 x 2 EM prices, 576 WattTime five-minute points.
    assert_eq!(before, 48 + 96 + 96 + 576, "the five feeds before ENTSO-E are stored");
    let requests = em.requests().len() + gb.requests().len() + wt.requests().len();
    let past_range = em.requests();
    assert!(past_range.iter().all(|r| r.contains("start=2024-03-04T00%3A00%3A00%2B00%3A00")), "{past_range:?}");

    // Started again once ENTSO-E answers: the feeds done are not asked again, ENTSO-E's prices come in.
    entsoe.reply("/api", 200, "text/xml", &entsoe_prices());
    let resumed = heliotrope(&app, &["signals", "backfill", "--from", FROM, "--to", TO]).await;
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(text(&resumed).contains("0 points stored in 0 requests, resumed at 2024-03-06"), "{}", text(&resumed));
    assert_eq!(em.requests().len() + gb.requests().len() + wt.requests().len(), requests, "nothing asked twice");
    let query = entsoe.requests().pop().unwrap();
    assert!(query.contains("periodStart=202403040000") && query.contains("periodEnd=202403060000"), "{query}");
    assert_eq!(points(&app).await, before + 48);
    // Another range over the same hours stores nothing new: the same points, replaced.
    gb.reply("/intensity/2024-03-04T12:00Z/2024-03-06T00:00Z", 200, "application/json", &gb_national());
    let again =
        heliotrope(&app, &["signals", "backfill", "--from", "2024-03-04T12:00:00Z", "--to", TO, "--site", "GB"]).await;
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(points(&app).await, before + 48);

    // The what-if over the stored window is the what-if over its export.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("traces.csv");
    let exported = heliotrope(&app, &["signals", "export", "--format", "csv", "--out", csv.to_str().unwrap()]).await;
    assert!(exported.status.success(), "{}", text(&exported));
    let body = std::fs::read_to_string(&csv).unwrap();
    assert!(body.starts_with("region,timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency\n"), "{body}");
    assert_eq!(body.lines().count(), 1 + 3 * 48, "a row per site and hour");
    let from_database = simulate(&app, &dir.path().join("database"), &["--database"]).await;
    assert_eq!(from_database["hours"], 24, "{from_database}");
    assert_eq!(from_database, simulate(&app, &dir.path().join("traces"), &["--traces", csv.to_str().unwrap()]).await);
}

/// `simulate SOURCE` of a small fleet, its report without the timings.
async fn simulate(app: &TestApp, out: &std::path::Path, source: &[&str]) -> Value {
    let mut args = vec!["simulate", "--vms", "30", "--policy", "static", "--out", out.to_str().unwrap()];
    args.extend_from_slice(source);
    let ran = heliotrope(app, &args).await;
    assert!(ran.status.success(), "{}", text(&ran));
    let mut report: Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    report.as_object_mut().unwrap().remove("runtime_s");
    for policy in report["policies"].as_object_mut().unwrap().values_mut() {
        policy.as_object_mut().unwrap().remove("decide_s");
    }
    report
}
