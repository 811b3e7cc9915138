//! `/v1/feeds` and the provider adapters, polled once at a time against
//! local stand-ins that serve each provider's documented format and quirks.

use std::time::Duration;

use heliotrope::db::MIGRATOR;
use heliotrope::feeds::poller::{next_delay, poll_once, PollOutcome};
use heliotrope::feeds::reach::FeedReach;
use heliotrope::feeds::Fetcher;
use heliotrope::metrics::Metrics;
use heliotrope_tests::{site, spawn_app, wait_until, FakeProvider, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

/// The fetcher the tests poll with: the local fakes serve plain http on loopback.
fn fetcher() -> Fetcher {
    let allowed = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    Fetcher::new(FeedReach { allowed, plain_http: true }).unwrap()
}

async fn feed(app: &TestApp, body: Value) -> i64 {
    app.create("/v1/feeds", body).await["id"].as_i64().unwrap()
}

async fn poll(app: &TestApp, fetcher: &Fetcher, metrics: &Metrics, id: i64) -> PollOutcome {
    poll_at(app, fetcher, metrics, id, chrono::Utc::now()).await
}

async fn poll_at(
    app: &TestApp,
    fetcher: &Fetcher,
    metrics: &Metrics,
    id: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> PollOutcome {
    let (feed, site_id) =
        heliotrope::db::feeds::enabled(&app.pool).await.unwrap().into_iter().find(|(f, _)| f.id == id).unwrap();
    poll_once(&app.pool, fetcher, metrics, &feed, site_id, now).await.unwrap()
}

async fn series(app: &TestApp, signal: &str, from: &str, to: &str, resolution: &str) -> Vec<Value> {
    let path = format!("/v1/sites/1/signals?signal={signal}&from={from}&to={to}&resolution={resolution}");
    let answer = app.get(&path).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["points"].as_array().unwrap().clone()
}

const EM_HISTORY: &str = r#"{"zone":"DE","history":[
  {"zone":"DE","carbonIntensity":599,"datetime":"2024-03-05T20:00:00.000Z","updatedAt":"2024-03-06T18:48:27.926Z","createdAt":"2024-03-03T19:47:16.265Z","emissionFactorType":"lifecycle","isEstimated":false,"estimationMethod":null},
  {"zone":"DE","carbonIntensity":588,"datetime":"2024-03-05T21:00:00.000Z","updatedAt":"2024-03-06T18:48:27.926Z","createdAt":"2024-03-03T19:47:16.265Z","emissionFactorType":"lifecycle","isEstimated":true,"estimationMethod":"TIME_SLICER_AVERAGE"}]}"#;
const EM_LATEST: &str = r#"{"zone":"DE","carbonIntensity":588,"datetime":"2024-03-05T21:00:00.000Z","updatedAt":"2024-03-06T18:48:27.926Z","createdAt":"2024-03-03T19:47:16.265Z","emissionFactorType":"lifecycle","isEstimated":true,"estimationMethod":"TIME_SLICER_AVERAGE"}"#;
const EM_FORECAST: &str = r#"{"zone":"DE","forecast":[{"carbonIntensity":420,"datetime":"2024-03-05T21:00:00.000Z"},{"carbonIntensity":410,"datetime":"2024-03-05T22:00:00.000Z"}],"updatedAt":"2024-03-05T20:30:00.000Z"}"#;

/// Serves the Electricity Maps carbon fixtures, requiring `auth-token: key` when given.
fn serve_electricitymaps(em: &FakeProvider, key: Option<&str>) {
    for (path, body) in [
        ("/v3/carbon-intensity/history", EM_HISTORY),
        ("/v3/carbon-intensity/forecast", EM_FORECAST),
        ("/v3/carbon-intensity/latest", EM_LATEST),
    ] {
        em.reply(path, 200, "application/json", body);
        if let Some(key) = key {
            em.require(path, "auth-token", key);
        }
    }
}

fn em_feed(base: &str, env: &str) -> Value {
    json!({"site": "DE-LU", "provider": "electricitymaps", "signal": "carbon", "area": "DE", "base_url": base,
           "credential_env": env, "poll_interval_s": 300})
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn feed_resource_and_health(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("DE-LU")).await;
    let body = json!({"site": "DE-LU", "provider": "entsoe", "signal": "price", "area": "10Y1001A1001A82H",
                      "credential_env": "HELIOTROPE_FEED_ENTSOE_TOKEN"});
    let created = app.create("/v1/feeds", body.clone()).await;
    assert_eq!(created["base_url"], "https://web-api.tp.entsoe.eu", "the real API by default");
    assert_eq!(created["poll_interval_s"], 900);
    assert_eq!(created["health"]["points_ingested"], 0);
    assert_eq!(created["health"]["stale"], false);
    app.post("/v1/feeds", body.clone()).await.assert_error(409, "already has");

    let bad = |field: &str, value: Value| {
        let mut b = body.clone();
        b[field] = value;
        b
    };
    for (b, needle) in [
        (bad("signal", json!("carbon")), "signal"),
        (bad("area", json!("DE-LU")), "area"),
        (bad("credential_env", json!("my secret key")), "credential_env"),
        (bad("credential_env", json!("HELIOTROPE_DATABASE_URL")), "HELIOTROPE_FEED_"),
        (bad("poll_interval_s", json!(5)), "poll_interval_s"),
        (bad("base_url", json!("not a url")), "base_url"),
        (bad("base_url", json!("https://user:password@web-api.tp.entsoe.eu")), "base_url"),
        (bad("base_url", json!("https://web-api.tp.entsoe.eu/#")), "base_url"),
        (bad("base_url", json!("https://169.254.169.254")), "base_url"),
        (bad("base_url", json!("http://web-api.tp.entsoe.eu")), "https"),
        (bad("site", json!("Nowhere")), "site"),
        (bad("provider", json!("carbonbrief")), "provider"),
        (bad("token", json!("x")), "token"),
    ] {
        app.post("/v1/feeds", b).await.assert_error(422, needle);
    }
    let path = format!("/v1/feeds/{}", created["id"]);
    let replaced = app.put(&path, bad("enabled", json!(false))).await;
    assert_eq!(replaced.body["enabled"], false, "{}", replaced.body);
    assert_eq!(app.get("/v1/feeds?provider=entsoe").await.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/v1/feeds?signal=carbon").await.body["items"].as_array().unwrap().len(), 0);
    assert_eq!(app.delete(&path).await.status, 204);
    app.get(&path).await.assert_error(404, "feed");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn electricitymaps_history_and_forecast(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("DE-LU")).await;
    let (em, base) = FakeProvider::start().await;
    serve_electricitymaps(&em, Some("em-key"));
    std::env::set_var("HELIOTROPE_FEED_EM_KEY", "em-key");
    let id = feed(&app, em_feed(&base, "HELIOTROPE_FEED_EM_KEY")).await;
    let (fetcher, metrics) = (fetcher(), Metrics::default());
    assert_eq!(poll(&app, &fetcher, &metrics, id).await, PollOutcome::Stored(4));
    assert!(em.requests().iter().all(|r| r.contains("zone=DE")), "{:?}", em.requests());

    let points = series(&app, "carbon", "2024-03-05T20:00:00Z", "2024-03-05T23:00:00Z", "hourly").await;
    let got: Vec<(f64, &str)> =
        points.iter().map(|p| (p["value"].as_f64().unwrap(), p["kind"].as_str().unwrap())).collect();
    assert_eq!(got, [(599.0, "actual"), (588.0, "actual"), (410.0, "forecast")], "actuals win over the forecast");
    assert_eq!(points[1]["estimated"], true);
    assert_eq!(points[0]["source"], format!("feed:{id}"));
    let health = app.get(&format!("/v1/feeds/{id}")).await.body["health"].clone();
    assert_eq!(health["points_ingested"], 4);
    assert!(health["last_success_at"].is_string());
    assert_eq!(health["last_error"], Value::Null);

    // The same data again is idempotent.
    assert_eq!(poll(&app, &fetcher, &metrics, id).await, PollOutcome::Stored(4));
    assert_eq!(app.count("signal_point").await, 4);

    // A wrong key is a credentials error, recorded, with the data kept.
    std::env::set_var("HELIOTROPE_FEED_EM_KEY", "wrong");
    let PollOutcome::Failed { message, transient, .. } = poll(&app, &fetcher, &metrics, id).await else { panic!() };
    assert!(message.contains("auth-token") && !transient, "{message}");
    assert!(app.get(&format!("/v1/feeds/{id}")).await.body["health"]["last_error"]
        .as_str()
        .unwrap()
        .contains("auth-token"));
    std::env::remove_var("HELIOTROPE_FEED_EM_KEY");
    let PollOutcome::Failed { message, .. } = poll(&app, &fetcher, &metrics, id).await else { panic!() };
    assert!(message.contains("HELIOTROPE_FEED_EM_KEY is not set"), "{message}");
    assert_eq!(app.count("signal_point").await, 4);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_bad_payload_is_rejected_and_counted(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("DE-LU")).await;
    let (em, base) = FakeProvider::start().await;
    serve_electricitymaps(&em, None);
    std::env::set_var("HELIOTROPE_FEED_EM_KEY2", "k");
    let id = feed(&app, em_feed(&base, "HELIOTROPE_FEED_EM_KEY2")).await;
    let (fetcher, metrics) = (fetcher(), Metrics::default());
    assert_eq!(poll(&app, &fetcher, &metrics, id).await, PollOutcome::Stored(4));
    let before = series(&app, "carbon", "2024-03-05T20:00:00Z", "2024-03-05T23:00:00Z", "raw").await;

    // Wrong units (kg/MWh x 1000?) in one point: the whole payload is refused.
    em.reply("/v3/carbon-intensity/forecast", 200, "application/json", &EM_FORECAST.replace("410", "4100"));
    assert_eq!(poll(&app, &fetcher, &metrics, id).await, PollOutcome::Rejected { reason: "carbon_above_max" });
    // A provider changing shape: the error names the field.
    em.reply("/v3/carbon-intensity/forecast", 200, "application/json", EM_FORECAST);
    em.reply("/v3/carbon-intensity/history", 200, "application/json", &EM_HISTORY.replace("\"history\"", "\"data\""));
    let PollOutcome::Failed { message, .. } = poll(&app, &fetcher, &metrics, id).await else { panic!() };
    assert!(message.contains("history"), "{message}");

    assert_eq!(series(&app, "carbon", "2024-03-05T20:00:00Z", "2024-03-05T23:00:00Z", "raw").await, before);
    assert!(metrics
        .render()
        .contains(&format!(r#"heliotrope_signal_rejections_total{{source="feed:{id}",reason="carbon_above_max"}} 1"#)));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn watttime_logs_in_converts_and_renews_its_token(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("US-CAL-CISO")).await;
    let (wt, base) = FakeProvider::start().await;
    let history = r#"{"data":[{"point_time":"2024-06-18T18:00:00+00:00","value":881.85,"last_updated":"2024-06-18T18:06:00+00:00","imputed_data_used":false},{"point_time":"2024-06-18T18:05:00+00:00","value":870.0}],
        "meta":{"region":"CAISO_NORTH","signal_type":"co2_moer","data_point_period_seconds":300,"model":{"type":"binned_regression","date":"2023-03-01"},"units":"lbs_co2_per_mwh","warnings":[]}}"#;
    let forecast = r#"{"data":[{"point_time":"2024-06-18T18:40:00+00:00","value":870.0}],
        "meta":{"data_point_period_seconds":300,"region":"CAISO_NORTH","signal_type":"co2_moer","model":{"date":"2023-03-01"},"units":"lbs_co2_per_mwh","generated_at_period_seconds":300,"generated_at":"2024-06-18T18:40:00+00:00","warnings":[]}}"#;
    // Basic auth of "user:pass".
    wt.reply("/login", 200, "application/json", r#"{"token":"jwt-1"}"#).require(
        "/login",
        "authorization",
        "Basic dXNlcjpwYXNz",
    );
    wt.reply("/v3/historical", 200, "application/json", history).require(
        "/v3/historical",
        "authorization",
        "Bearer jwt-1",
    );
    wt.reply("/v3/forecast", 200, "application/json", forecast).require(
        "/v3/forecast",
        "authorization",
        "Bearer jwt-1",
    );
    std::env::set_var("HELIOTROPE_FEED_WT_LOGIN", "user:pass");
    let id = feed(
        &app,
        json!({"site": "US-CAL-CISO", "provider": "watttime", "signal": "carbon", "area": "CAISO_NORTH",
                              "base_url": base, "credential_env": "HELIOTROPE_FEED_WT_LOGIN"}),
    )
    .await;
    let (fetcher, metrics) = (fetcher(), Metrics::default());
    assert_eq!(poll(&app, &fetcher, &metrics, id).await, PollOutcome::Stored(3));
    let raw = series(&app, "carbon", "2024-06-18T18:00:00Z", "2024-06-18T19:00:00Z", "raw").await;
    assert!((raw[0]["value"].as_f64().unwrap() - 881.85 / 2.20462).abs() < 1e-9, "lbs/MWh / 2.20462 = g/kWh");
    assert_eq!((raw[0]["basis"].clone(), raw[0]["resolution_s"].clone()), (json!("marginal"), json!(300)));

    // The token is cached: a second poll does not log in again.
    poll(&app, &fetcher, &metrics, id).await;
    assert_eq!(wt.requests().iter().filter(|r| r.starts_with("/login")).count(), 1);
    // The provider expires it: the next poll logs in afresh and goes on.
    wt.reply("/login", 200, "application/json", r#"{"token":"jwt-2"}"#);
    wt.require("/v3/historical", "authorization", "Bearer jwt-2").require(
        "/v3/forecast",
        "authorization",
        "Bearer jwt-2",
    );
    assert_eq!(poll(&app, &fetcher, &metrics, id).await, PollOutcome::Stored(3));
    assert_eq!(wt.requests().iter().filter(|r| r.starts_with("/login")).count(), 2);

    // Bad credentials come back as nginx's HTML 403 page.
    let html = "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
    wt.reply("/login", 403, "text/html", html);
    let fresh = self::fetcher();
    let PollOutcome::Failed { message, transient, .. } = poll(&app, &fresh, &metrics, id).await else { panic!() };
    assert!(message.contains("login refused") && message.contains("HTML page"), "{message}");
    assert!(!transient);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn rate_limits_are_honoured(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("DE-LU")).await;
    let (em, base) = FakeProvider::start().await;
    em.reply("/v3/carbon-intensity/history", 429, "application/json", r#"{"error":"Too many requests"}"#).header(
        "/v3/carbon-intensity/history",
        "retry-after",
        "120",
    );
    std::env::set_var("HELIOTROPE_FEED_EM_KEY3", "k");
    let id = feed(&app, em_feed(&base, "HELIOTROPE_FEED_EM_KEY3")).await;
    let outcome = poll(&app, &fetcher(), &Metrics::default(), id).await;
    let PollOutcome::Failed { retry_in, transient, .. } = &outcome else { panic!("{outcome:?}") };
    assert_eq!((*retry_in, *transient), (Some(Duration::from_secs(120)), true));
    assert_eq!(next_delay(&outcome, Duration::from_secs(300), 0), Duration::from_secs(120));
    let health = app.get(&format!("/v1/feeds/{id}")).await.body["health"].clone();
    assert!(health["last_error"].as_str().unwrap().contains("429"), "{health}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn gb_national_and_regional(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("GB")).await;
    let (gb, base) = FakeProvider::start().await;
    let now = chrono::Utc::now();
    let slot = |h: i64| (now + chrono::Duration::hours(h)).format("%Y-%m-%dT%H:00Z").to_string();
    let national = json!({"data": [
        {"from": slot(-2), "to": slot(-2), "intensity": {"forecast": 266, "actual": 263, "index": "moderate"}},
        {"from": slot(3), "to": slot(3), "intensity": {"forecast": 180, "actual": null, "index": "low"}}]});
    let regional = json!({"data": {"regionid": 13, "dnoregion": "UKPN London", "shortname": "London", "data": [
        {"from": slot(4), "to": slot(4), "intensity": {"forecast": 150, "index": "low"},
         "generationmix": [{"fuel": "gas", "perc": 43.6}, {"fuel": "wind", "perc": 6.8}]}]}});
    let from = (now - chrono::Duration::hours(24)).format("%Y-%m-%dT%H:%MZ").to_string();
    gb.reply(&format!("/intensity/{from}/fw48h"), 200, "application/json", &national.to_string());
    gb.reply(&format!("/regional/intensity/{from}/fw48h/regionid/13"), 200, "application/json", &regional.to_string());
    let national_id = feed(&app, json!({"site": "GB", "provider": "gb_carbon_intensity", "signal": "carbon", "area": "national", "base_url": base})).await;
    let regional_id = feed(
        &app,
        json!({"site": "GB", "provider": "gb_carbon_intensity", "signal": "carbon", "area": "13", "base_url": base}),
    )
    .await;
    let (fetcher, metrics) = (fetcher(), Metrics::default());
    // The path holds the minute of the poll: poll as of the `now` the paths were made for.
    assert_eq!(
        poll_at(&app, &fetcher, &metrics, national_id, now).await,
        PollOutcome::Stored(2),
        "{:?}",
        gb.requests()
    );
    assert_eq!(
        poll_at(&app, &fetcher, &metrics, regional_id, now).await,
        PollOutcome::Stored(1),
        "{:?}",
        gb.requests()
    );
    let points = series(&app, "carbon", &slot(-3).replace('Z', ":00Z"), &slot(6).replace('Z', ":00Z"), "raw").await;
    let got: Vec<(f64, &str)> =
        points.iter().map(|p| (p["value"].as_f64().unwrap(), p["kind"].as_str().unwrap())).collect();
    assert_eq!(got, [(263.0, "actual"), (180.0, "forecast"), (150.0, "forecast")]);
    assert_eq!(points[1]["resolution_s"], 1800);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn entsoe_day_ahead_prices_and_no_data(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("DE-LU")).await;
    let (entsoe, base) = FakeProvider::start().await;
    let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<Publication_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3">
  <mRID>f86583463b2b4fa68fe1a5e5d1d0c5cf</mRID><revisionNumber>1</revisionNumber><type>A44</type>
  <sender_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450</sender_MarketParticipant.mRID>
  <sender_MarketParticipant.marketRole.type>A32</sender_MarketParticipant.marketRole.type>
  <receiver_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450</receiver_MarketParticipant.mRID>
  <receiver_MarketParticipant.marketRole.type>A33</receiver_MarketParticipant.marketRole.type>
  <createdDateTime>2025-08-23T16:09:32Z</createdDateTime>
  <period.timeInterval><start>2025-08-21T22:00Z</start><end>2025-08-22T02:00Z</end></period.timeInterval>
  <TimeSeries><mRID>1</mRID><auction.type>A01</auction.type><businessType>A62</businessType>
    <in_Domain.mRID codingScheme="A01">10Y1001A1001A82H</in_Domain.mRID><out_Domain.mRID codingScheme="A01">10Y1001A1001A82H</out_Domain.mRID>
    <contract_MarketAgreement.type>A01</contract_MarketAgreement.type>
    <currency_Unit.name>EUR</currency_Unit.name><price_Measure_Unit.name>MWH</price_Measure_Unit.name><curveType>A03</curveType>
    <Period><timeInterval><start>2025-08-21T22:00Z</start><end>2025-08-22T02:00Z</end></timeInterval><resolution>PT60M</resolution>
      <Point><position>1</position><price.amount>88.33</price.amount></Point>
      <Point><position>2</position><price.amount>80.75</price.amount></Point>
      <Point><position>4</position><price.amount>75.10</price.amount></Point></Period></TimeSeries>
</Publication_MarketDocument>"#;
    entsoe.reply("/api", 200, "text/xml", xml);
    std::env::set_var("HELIOTROPE_FEED_ENTSOE", "entsoe-token");
    let id = feed(
        &app,
        json!({"site": "DE-LU", "provider": "entsoe", "signal": "price", "area": "10Y1001A1001A82H",
                              "base_url": base, "credential_env": "HELIOTROPE_FEED_ENTSOE"}),
    )
    .await;
    let (fetcher, metrics) = (fetcher(), Metrics::default());
    assert_eq!(poll(&app, &fetcher, &metrics, id).await, PollOutcome::Stored(4));
    let request = entsoe.requests().pop().unwrap();
    for part in [
        "securityToken=entsoe-token",
        "documentType=A44",
        "in_Domain=10Y1001A1001A82H",
        "out_Domain=10Y1001A1001A82H",
        "periodStart=",
    ] {
        assert!(request.contains(part), "{request}");
    }
    let prices = series(&app, "price", "2025-08-21T22:00:00Z", "2025-08-22T02:00:00Z", "hourly").await;
    let values: Vec<f64> = prices.iter().map(|p| p["value"].as_f64().unwrap()).collect();
    assert_eq!(values, [88.33, 80.75, 80.75, 75.10], "A03: the missing third hour repeats the second");
    assert_eq!(prices[0]["unit"], "EUR/MWh");
    assert_eq!(prices[0]["basis"], "market-day-ahead");

    let ack = r#"<?xml version="1.0" encoding="utf-8"?>
<Acknowledgement_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-1:acknowledgementdocument:7:0">
  <mRID>0f6c8bd3-0f8a-4</mRID><createdDateTime>2025-08-23T16:09:32Z</createdDateTime>
  <sender_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450</sender_MarketParticipant.mRID>
  <Reason><code>999</code><text>No matching data found for Data item ENERGY_PRICES [12.1.D] (10Y1001A1001A82H, 10Y1001A1001A82H) and interval 2025-08-21T22:00:00.000Z/2025-08-22T02:00:00.000Z.</text></Reason>
</Acknowledgement_MarketDocument>"#;
    entsoe.reply("/api", 200, "text/xml", ack);
    let PollOutcome::Failed { message, .. } = poll(&app, &fetcher, &metrics, id).await else { panic!() };
    assert!(message.starts_with("no data: No matching data"), "{message}");
    assert_eq!(app.count("signal_point").await, 4, "the earlier prices stay");
}

/// A quarter-hourly and an hourly series in one reply, on the spring DST day, served over HTTP.
#[sqlx::test(migrator = "MIGRATOR")]
async fn entsoe_mixed_resolutions_on_a_dst_day(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("DE-LU")).await;
    let (entsoe, base) = FakeProvider::start().await;
    let points = |n: u32, price: f64| -> String {
        (1..=n)
            .map(|p| {
                format!("<Point><position>{p}</position><price.amount>{}</price.amount></Point>", price + f64::from(p))
            })
            .collect()
    };
    let series = |resolution: &str, start: &str, end: &str, body: String| {
        format!(
            "<TimeSeries><mRID>1</mRID><businessType>A62</businessType><currency_Unit.name>EUR</currency_Unit.name>\
             <price_Measure_Unit.name>MWH</price_Measure_Unit.name><curveType>A03</curveType><Period><timeInterval>\
             <start>{start}</start><end>{end}</end></timeInterval><resolution>{resolution}</resolution>{body}</Period></TimeSeries>"
        )
    };
    // 2025-03-30 in Central Europe has 23 hours: 92 quarter hours.
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Publication_MarketDocument xmlns=\"urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3\">\
         <mRID>x</mRID><type>A44</type>{}{}</Publication_MarketDocument>",
        series("PT60M", "2025-03-29T23:00Z", "2025-03-30T22:00Z", points(23, 100.0)),
        series("PT15M", "2025-03-29T23:00Z", "2025-03-30T22:00Z", points(92, 0.0)),
    );
    entsoe.reply("/api", 200, "application/xml", &xml);
    std::env::set_var("HELIOTROPE_FEED_ENTSOE_DST", "t");
    let id = feed(
        &app,
        json!({"site": "DE-LU", "provider": "entsoe", "signal": "price", "area": "10Y1001A1001A82H",
                              "base_url": base, "credential_env": "HELIOTROPE_FEED_ENTSOE_DST"}),
    )
    .await;
    assert_eq!(poll(&app, &fetcher(), &Metrics::default(), id).await, PollOutcome::Stored(92));
    let raw = series_of(&app, "2025-03-29T23:00:00Z", "2025-03-30T22:00:00Z", "raw").await;
    assert_eq!(raw.len(), 92, "quarter hours win where both series cover");
    assert!(raw.iter().all(|p| p["resolution_s"] == 900));
    let hourly = series_of(&app, "2025-03-29T23:00:00Z", "2025-03-30T22:00:00Z", "hourly").await;
    assert_eq!(hourly.len(), 23);
    assert_eq!(hourly[0]["value"], 2.5, "the mean of 1, 2, 3 and 4");
    assert_eq!(hourly[0]["samples"], 4);
}

async fn series_of(app: &TestApp, from: &str, to: &str, resolution: &str) -> Vec<Value> {
    series(app, "price", from, to, resolution).await
}

/// The poller itself: takes the lead, polls a due feed, records its health, and stops when told.
#[sqlx::test(migrator = "MIGRATOR")]
async fn the_poller_polls_due_feeds_until_stopped(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("GB")).await;
    let (gb, base) = FakeProvider::start().await;
    let id = feed(
        &app,
        json!({"site": "GB", "provider": "gb_carbon_intensity", "signal": "carbon", "area": "13", "base_url": base}),
    )
    .await;
    // Whatever minute the poll happens in, answer with one forecast slot.
    let now = chrono::Utc::now();
    let slot = (now + chrono::Duration::hours(2)).format("%Y-%m-%dT%H:00Z").to_string();
    let body = json!({"data": {"regionid": 13, "shortname": "London", "data": [
        {"from": slot, "to": slot, "intensity": {"forecast": 150, "index": "low"}, "generationmix": []}]}});
    for minutes in 0..3 {
        let from = (now - chrono::Duration::hours(24) + chrono::Duration::minutes(minutes)).format("%Y-%m-%dT%H:%MZ");
        gb.reply(&format!("/regional/intensity/{from}/fw48h/regionid/13"), 200, "application/json", &body.to_string());
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let poller = tokio::spawn(heliotrope::feeds::poller::run(
        app.pool.clone(),
        std::sync::Arc::new(Metrics::default()),
        FeedReach { allowed: vec!["127.0.0.0/8".parse().unwrap()], plain_http: true },
        stop.clone(),
    ));
    // The first poll comes within a tick (5 s) plus up to 3 s of spreading.
    let started = std::time::Instant::now();
    let ask = async || app.get(&format!("/v1/feeds/{id}")).await.body["health"].clone();
    let ingested = |health: &Value| health["points_ingested"] == 1;
    let (Ok(health) | Err(health)) =
        wait_until(Duration::from_secs(30), Duration::from_millis(200), ask, ingested).await;
    assert_eq!(health["points_ingested"], 1, "{health} after {:?}; requests: {:?}", started.elapsed(), gb.requests());
    assert!(health["last_success_at"].is_string());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), poller).await.expect("the poller stops when told").unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_feed_reaches_no_private_address_follows_no_redirect_and_quotes_no_reply(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("DE-LU")).await;
    let (em, base) = FakeProvider::start().await;
    serve_electricitymaps(&em, Some("em-key"));
    std::env::set_var("HELIOTROPE_FEED_EM_REACH", "em-key");
    let id = feed(&app, em_feed(&base, "HELIOTROPE_FEED_EM_REACH")).await;
    let metrics = Metrics::default();
    let failure = |outcome: PollOutcome| match outcome {
        PollOutcome::Failed { message, .. } => message,
        other => panic!("{other:?}"),
    };

    // As a server runs by default: https only, and no loopback address, by literal or by name.
    let strict = Fetcher::new(FeedReach::default()).unwrap();
    assert!(failure(poll(&app, &strict, &metrics, id).await).contains("http:// is refused"));
    let http = Fetcher::new(FeedReach { allowed: vec![], plain_http: true }).unwrap();
    assert!(failure(poll(&app, &http, &metrics, id).await).contains("127.0.0.1 is not an address feeds may reach"));
    let path = format!("/v1/feeds/{id}");
    let by_name = base.replace("http://127.0.0.1", "https://localhost");
    assert_eq!(app.put(&path, em_feed(&by_name, "HELIOTROPE_FEED_EM_REACH")).await.status, 200);
    let message = failure(poll(&app, &strict, &metrics, id).await);
    assert!(message.contains("resolves only to addresses feeds may not reach"), "{message}");
    assert!(em.requests().is_empty(), "nothing reached the loopback service: {:?}", em.requests());

    // A redirect elsewhere is not followed, so the auth-token goes nowhere else.
    assert_eq!(app.put(&path, em_feed(&base, "HELIOTROPE_FEED_EM_REACH")).await.status, 200);
    let (elsewhere, other) = FakeProvider::start().await;
    serve_electricitymaps(&elsewhere, None);
    let history = "/v3/carbon-intensity/history";
    let moved = other.replace("127.0.0.1", "localhost") + history;
    em.reply(history, 302, "text/plain", "").header(history, "location", &moved);
    let message = failure(poll(&app, &fetcher(), &metrics, id).await);
    assert!(message.contains("HTTP 302") && message.contains("redirects are not followed"), "{message}");
    assert!(elsewhere.requests().is_empty(), "{:?}", elsewhere.requests());

    // What an error reply says stays out of the feed's health, which viewers of the API read.
    em.reply(history, 500, "text/plain", "root:hunter2");
    let message = failure(poll(&app, &fetcher(), &metrics, id).await);
    assert!(message.contains("HTTP 500") && !message.contains("hunter2"), "{message}");
    let health = app.get(&path).await.body["health"].clone();
    assert!(!health.to_string().contains("hunter2"), "{health}");
}
