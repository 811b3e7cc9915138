//! Signals: pushes (JSON and CSV), validation that changes nothing, the
//! best-known series on the hour grid, and the current value per site.

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{prerequisite, site, spawn_app, with, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

/// A site named and labelled `region`; returns its id.
async fn site_in(app: &TestApp, region: &str) -> i64 {
    app.create("/v1/sites", with(site(region), "/region", json!(region))).await["id"].as_i64().unwrap()
}

fn series_path(id: i64, signal: &str, from: &str, to: &str, resolution: &str) -> String {
    format!("/v1/sites/{id}/signals?signal={signal}&from={from}&to={to}&resolution={resolution}")
}

async fn push_csv(app: &TestApp, id: i64, query: &str, body: &str) -> heliotrope_tests::Answer {
    app.send_raw(Method::POST, &format!("/v1/sites/{id}/signals{query}"), "text/csv", body.as_bytes().to_vec()).await
}

fn values(answer: &heliotrope_tests::Answer) -> Vec<f64> {
    answer.body["points"].as_array().unwrap().iter().map(|p| p["value"].as_f64().unwrap()).collect()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn json_push_then_series(pool: PgPool) {
    let app = spawn_app(pool).await;
    let id = site_in(&app, "DE-LU").await;
    let rows = json!([
        {"timestamp_utc": "2026-01-01T00:00:00Z", "carbon_g_per_kwh": 300.5, "price_per_mwh": 80.25, "currency": "EUR"},
        {"timestamp_utc": "2026-01-01T01:00:00Z", "carbon_g_per_kwh": 280.0, "estimated": true}
    ]);
    let report = app.post(&format!("/v1/sites/{id}/signals"), rows.clone()).await;
    assert_eq!(report.status, 200, "{}", report.body);
    assert_eq!(report.body, json!({"rows": 2, "points": 3, "skipped_other_region": 0}));

    let carbon = app.get(&series_path(id, "carbon", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "hourly")).await;
    assert_eq!(carbon.status, 200, "{}", carbon.body);
    assert_eq!(values(&carbon), [300.5, 280.0]);
    let first = &carbon.body["points"][0];
    assert_eq!(first["kind"], "actual");
    assert_eq!(first["unit"], "gCO2eq/kWh");
    assert_eq!(first["basis"], "average-lifecycle");
    assert_eq!(first["source"], "push");
    assert_eq!(carbon.body["points"][1]["estimated"], true);
    let price = app.get(&series_path(id, "price", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "raw")).await;
    assert_eq!(price.body["points"][0]["unit"], "EUR/MWh");
    assert_eq!(values(&price), [80.25]);

    // The same push again stores nothing new.
    assert_eq!(app.post(&format!("/v1/sites/{id}/signals"), rows).await.status, 200);
    assert_eq!(app.count("signal_point").await, 3);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn actuals_beat_forecasts_and_newer_forecasts_beat_older(pool: PgPool) {
    let app = spawn_app(pool).await;
    let id = site_in(&app, "GB").await;
    let body = "timestamp_utc,carbon_g_per_kwh,forecast,issued_at\n\
        2026-01-01T00:00:00Z,200,true,2025-12-31T00:00:00Z\n\
        2026-01-01T00:00:00Z,210,true,2025-12-31T12:00:00Z\n\
        2026-01-01T01:00:00Z,220,true,2025-12-31T12:00:00Z\n\
        2026-01-01T00:00:00Z,190,,\n";
    assert_eq!(push_csv(&app, id, "", body).await.status, 200);
    let series = app.get(&series_path(id, "carbon", "2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z", "hourly")).await;
    assert_eq!(values(&series), [190.0, 220.0], "the actual, then the newest forecast");
    assert_eq!(series.body["points"][0]["kind"], "actual");
    assert_eq!(series.body["points"][1]["kind"], "forecast");
    assert_eq!(series.body["points"][1]["issued_at"], "2025-12-31T12:00:00Z");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sub_hourly_points_average_on_the_hour_grid(pool: PgPool) {
    let app = spawn_app(pool).await;
    let id = site_in(&app, "US-CAL-CISO").await;
    let mut body = String::from("timestamp_utc,carbon_g_per_kwh\n");
    for minute in (0..60).step_by(5) {
        body.push_str(&format!("2026-01-01T00:{minute:02}:00Z,{}\n", 100 + minute));
    }
    let report = push_csv(&app, id, "?carbon_basis=marginal&resolution_s=300", &body).await;
    assert_eq!(report.body["points"], 12, "{}", report.body);
    let hourly = app.get(&series_path(id, "carbon", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "hourly")).await;
    assert_eq!(values(&hourly), [127.5]);
    assert_eq!(hourly.body["points"][0]["samples"], 12);
    assert_eq!(hourly.body["points"][0]["basis"], "marginal");
    let raw = app.get(&series_path(id, "carbon", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "raw")).await;
    assert_eq!(values(&raw).len(), 12);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_rejection_leaves_stored_data_unchanged(pool: PgPool) {
    let app = spawn_app(pool).await;
    let id = site_in(&app, "DE-LU").await;
    let good = "timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency\n2026-01-01T00:00:00Z,300,80,EUR\n";
    assert_eq!(push_csv(&app, id, "", good).await.status, 200);
    let path = series_path(id, "carbon", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "raw");
    let before = app.get(&path).await.body;

    let header = "timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency\n";
    // Each bad push also overwrites the good point on line 2, which must not stick.
    let overwrite = "2026-01-01T00:00:00Z,999,99,EUR\n";
    let far_ahead = (chrono::Utc::now() + chrono::Duration::days(8)).format("%Y-%m-%dT%H:00:00Z").to_string();
    let cases = [
        ("2026-01-01T01:00:00Z,NaN,,\n".to_owned(), "line 3", "not a number"),
        ("2026-01-01T01:00:00Z,-3,,\n".to_owned(), "line 3", "negative"),
        ("2026-01-01T01:00:00Z,2500,,\n".to_owned(), "line 3", "above 2000"),
        ("2026-01-01T01:00:00Z,,25000,EUR\n".to_owned(), "line 3", "outside"),
        ("2026-01-01T01:00:00Z,,-5000,EUR\n".to_owned(), "line 3", "outside"),
        (format!("{far_ahead},100,,\n"), "line 3", "7 days"),
        ("2026-01-01T01:00:00Z,abc,,\n".to_owned(), "line 3", "not a number"),
        ("not-a-time,100,,\n".to_owned(), "line 3", "RFC 3339"),
        ("2026-01-01T01:00:00Z,,50,\n".to_owned(), "line 3", "currency"),
    ];
    for (line, location, needle) in &cases {
        let answer = push_csv(&app, id, "", &format!("{header}{overwrite}{line}")).await;
        answer.assert_error(422, location);
        assert!(answer.message().contains(needle), "{line}: {}", answer.message());
    }
    let bad_json = json!([{"timestamp_utc": "2026-01-01T00:00:00Z", "carbon_g_per_kwh": 999},
                          {"timestamp_utc": "2026-01-01T01:00:00Z", "carbon_g_per_kwh": -1}]);
    app.post(&format!("/v1/sites/{id}/signals"), bad_json).await.assert_error(422, "[1]");
    app.post(&format!("/v1/sites/{id}/signals"), json!([{"timestamp_utc": "x"}]))
        .await
        .assert_error(422, "timestamp_utc");
    app.post(&format!("/v1/sites/{id}/signals"), json!({"not": "an array"})).await.assert_error(422, "");
    push_csv(&app, id, "", "when,carbon\n1,2\n").await.assert_error(422, "unknown column");
    push_csv(&app, id, "?carbon_basis=tariff", good).await.assert_error(422, "carbon_basis");
    app.send_raw(Method::POST, &format!("/v1/sites/{id}/signals"), "text/plain", good.as_bytes().to_vec())
        .await
        .assert_error(415, "");
    push_csv(&app, 4242, "", good).await.assert_error(404, "site 4242");

    assert_eq!(app.get(&path).await.body, before, "stored data unchanged");
    assert_eq!(app.count("signal_point").await, 2);
    let metrics = reqwest::get(app.url("/metrics")).await.unwrap().text().await.unwrap();
    for reason in
        ["not_a_number", "negative_carbon", "carbon_above_max", "price_out_of_range", "too_far_ahead", "bad_currency"]
    {
        assert!(
            metrics.contains(&format!(r#"heliotrope_signal_rejections_total{{source="push",reason="{reason}"}}"#)),
            "{reason}"
        );
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_hour_takes_one_source(pool: PgPool) {
    let app = spawn_app(pool).await;
    let id = site_in(&app, "US-CAL-CISO").await;
    // The push is hourly; a second source (as a feed would be) has 5-minute marginal points in the same hour.
    let hourly = "timestamp_utc,carbon_g_per_kwh\n2026-01-01T00:00:00Z,300\n";
    assert_eq!(push_csv(&app, id, "", hourly).await.status, 200);
    sqlx::query(
        "insert into signal_point (site_id, signal, ts, value, basis, resolution_s, source, forecast) \
         select $1, 'carbon', timestamptz '2026-01-01 00:05:00+00' + make_interval(mins => 5 * g), 900, 'marginal', 300, \
         'feed:7', false from generate_series(0, 10) g",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
    let hour = app.get(&series_path(id, "carbon", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "hourly")).await;
    let point = &hour.body["points"][0];
    assert_eq!(
        (point["value"].as_f64(), point["source"].as_str(), point["samples"].as_i64()),
        (Some(900.0), Some("feed:7"), Some(11)),
        "one source per hour, not a blend of 300 and 900: {point}"
    );
    assert_eq!(point["basis"], "marginal");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn series_parameters_are_checked(pool: PgPool) {
    let app = spawn_app(pool).await;
    let id = site_in(&app, "DE-LU").await;
    app.get(&format!("/v1/sites/{id}/signals")).await.assert_error(400, "signal");
    app.get(&series_path(id, "carbon", "2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z", "hourly"))
        .await
        .assert_error(422, "to");
    app.get(&series_path(id, "carbon", "2024-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "hourly"))
        .await
        .assert_error(422, "366");
    app.get(&series_path(id, "wind", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "hourly"))
        .await
        .assert_error(400, "signal");
    app.get(&series_path(999, "carbon", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "hourly"))
        .await
        .assert_error(404, "site");
    let empty = app.get(&format!("/v1/sites/{id}/signals?signal=price")).await;
    assert_eq!(empty.body["points"], json!([]));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn current_signals_for_every_site(pool: PgPool) {
    let app = spawn_app(pool).await;
    let de = site_in(&app, "DE-LU").await;
    site_in(&app, "GB").await;
    let now = chrono::Utc::now();
    let hour = |h: i64| (now + chrono::Duration::hours(h)).format("%Y-%m-%dT%H:00:00Z").to_string();
    let issued = (now - chrono::Duration::hours(1)).to_rfc3339();
    let body = format!(
        "timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency,forecast,issued_at\n\
         {},300,70,EUR,,\n{},310,75,EUR,,\n{},999,99,EUR,true,{issued}\n",
        hour(-2),
        hour(-1),
        hour(2)
    );
    assert_eq!(push_csv(&app, de, "", &body).await.status, 200);
    let current = app.get("/v1/signals/current").await;
    assert_eq!(current.status, 200, "{}", current.body);
    let items = current.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!((items[0]["site"].clone(), items[0]["carbon"]["value"].clone()), (json!("DE-LU"), json!(310.0)));
    assert_eq!(items[0]["price"]["value"], 75.0);
    assert_eq!(items[1]["carbon"], Value::Null, "GB has no data yet");
}

/// The real 8-week trace of one region, pushed as the file comes, reads back exactly.
#[sqlx::test(migrator = "MIGRATOR")]
async fn a_real_trace_round_trips(pool: PgPool) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/carbon_price_2023-06-05_2023-07-30.csv");
    let Some(trace) = prerequisite(&format!("the real traces at {path}"), std::fs::read_to_string(path)) else {
        return;
    };
    let app = spawn_app(pool).await;
    let id = site_in(&app, "DE-LU").await;
    let report = push_csv(&app, id, "", &trace).await;
    assert_eq!(report.status, 200, "{}", report.body);
    let expected: Vec<(String, f64, f64, bool)> = trace
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[0] == "DE-LU")
        .map(|f| (f[1].to_owned(), f[2].parse().unwrap(), f[3].parse().unwrap(), f[6] == "1"))
        .collect();
    assert_eq!(expected.len(), 8 * 7 * 24);
    assert_eq!(report.body["rows"], expected.len());
    assert_eq!(report.body["skipped_other_region"], 15 * expected.len());

    let (from, to) = ("2023-06-05T00:00:00Z", "2023-07-31T00:00:00Z");
    let carbon = app.get(&series_path(id, "carbon", from, to, "hourly")).await;
    let price = app.get(&series_path(id, "price", from, to, "hourly")).await;
    let (carbon, price) = (carbon.body["points"].as_array().unwrap(), price.body["points"].as_array().unwrap());
    assert_eq!((carbon.len(), price.len()), (expected.len(), expected.len()));
    for (i, (ts, c, p, estimated)) in expected.iter().enumerate() {
        let at: chrono::DateTime<chrono::Utc> = ts.parse().unwrap();
        let got: chrono::DateTime<chrono::Utc> = carbon[i]["timestamp"].as_str().unwrap().parse().unwrap();
        assert_eq!(got, at, "row {i}");
        assert_eq!(carbon[i]["value"].as_f64().unwrap(), *c, "carbon at {ts}");
        assert_eq!(price[i]["value"].as_f64().unwrap(), *p, "price at {ts}");
        assert_eq!(carbon[i]["estimated"].as_bool().unwrap(), *estimated, "estimated at {ts}");
        assert_eq!(price[i]["unit"], "USD/MWh");
    }
}
