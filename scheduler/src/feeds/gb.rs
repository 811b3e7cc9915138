//! The GB Carbon Intensity API (no auth): national
//! `/intensity/{from}/fw48h` and regional
//! `/regional/intensity/{from}/fw48h/regionid/{id}`, in half-hour slots.
//! `actual` is null for future slots and regional data has none, so those
//! slots are stored as forecasts; the API does not say when a forecast was
//! made, so the issue time is the half hour it was fetched in.

use chrono::{DateTime, DurationRound, NaiveDateTime, TimeDelta, Utc};
use heliotrope_api_spec::{Basis, Signal};
use serde::Deserialize;

use super::{parse_json, send, FeedError, Span};
use crate::domain::signals::Point;

#[derive(Deserialize)]
struct Intensity {
    forecast: Option<f64>,
    #[serde(default)]
    actual: Option<f64>,
}

#[derive(Deserialize)]
struct Slot {
    /// `YYYY-MM-DDThh:mmZ`.
    from: String,
    intensity: Intensity,
}

#[derive(Deserialize)]
struct National {
    data: Vec<Slot>,
}

#[derive(Deserialize)]
struct Region {
    data: Vec<Slot>,
}

/// The regional reply nests the slots in one region object (some routes
/// wrap that object in an array).
#[derive(Deserialize)]
#[serde(untagged)]
enum RegionalData {
    One(Region),
    Many(Vec<Region>),
}

#[derive(Deserialize)]
struct Regional {
    data: RegionalData,
}

fn parse_time(from: &str) -> Result<DateTime<Utc>, FeedError> {
    NaiveDateTime::parse_from_str(from, "%Y-%m-%dT%H:%MZ")
        .map(|t| t.and_utc())
        .map_err(|_| FeedError::Shape(format!("gb_carbon_intensity: field 'from': '{from}' is not YYYY-MM-DDThh:mmZ")))
}

fn points(slots: Vec<Slot>, issued_at: DateTime<Utc>) -> Result<Vec<Point>, FeedError> {
    let mut points = Vec::new();
    for slot in slots {
        let ts = parse_time(&slot.from)?;
        let (value, forecast) = match (slot.intensity.actual, slot.intensity.forecast) {
            (Some(actual), _) => (actual, false),
            (None, Some(forecast)) => (forecast, true),
            (None, None) => continue,
        };
        points.push(Point {
            signal: Signal::Carbon,
            ts,
            value,
            currency: None,
            // National Grid ESO's intensity counts direct (operational) emissions.
            basis: Basis::AverageDirect,
            resolution_s: 1800,
            forecast,
            issued_at: forecast.then_some(issued_at),
            estimated: false,
        });
    }
    Ok(points)
}

pub fn parse_national(body: &str, issued_at: DateTime<Utc>) -> Result<Vec<Point>, FeedError> {
    points(parse_json::<National>("gb_carbon_intensity", body)?.data, issued_at)
}

pub fn parse_regional(body: &str, issued_at: DateTime<Utc>) -> Result<Vec<Point>, FeedError> {
    let slots = match parse_json::<Regional>("gb_carbon_intensity", body)?.data {
        RegionalData::One(region) => region.data,
        RegionalData::Many(regions) => regions.into_iter().flat_map(|r| r.data).collect(),
    };
    points(slots, issued_at)
}

pub async fn fetch(client: &reqwest::Client, base: &str, area: &str, span: Span) -> Result<Vec<Point>, FeedError> {
    let at = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%MZ").to_string();
    // A poll asks from a day back to two days ahead; a backfill, its span (of which only national has actuals).
    let (range, issued_at) = match span {
        Span::Now(now) => (format!("{}/fw48h", at(now - TimeDelta::hours(24))), now),
        Span::Past { from, to } => (format!("{}/{}", at(from), at(to)), to),
    };
    let issued_at = issued_at.duration_trunc(TimeDelta::minutes(30)).unwrap_or(issued_at);
    if area == "national" {
        parse_national(&send(client.get(format!("{base}/intensity/{range}"))).await?, issued_at)
    } else {
        parse_regional(
            &send(client.get(format!("{base}/regional/intensity/{range}/regionid/{area}"))).await?,
            issued_at,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued() -> DateTime<Utc> {
        "2018-01-20T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn national_actuals_and_null_future_actuals() {
        let body = r#"{"data":[
            {"from":"2018-01-20T12:00Z","to":"2018-01-20T12:30Z","intensity":{"forecast":266,"actual":263,"index":"moderate"}},
            {"from":"2018-01-20T12:30Z","to":"2018-01-20T13:00Z","intensity":{"forecast":270,"actual":null,"index":"moderate"}}]}"#;
        let points = parse_national(body, issued()).unwrap();
        assert_eq!((points[0].value, points[0].forecast), (263.0, false));
        assert_eq!((points[1].value, points[1].forecast, points[1].issued_at), (270.0, true, Some(issued())));
        assert_eq!(points[1].ts, "2018-01-20T12:30:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(points[0].resolution_s, 1800);
    }

    #[test]
    fn regional_data_has_no_actuals() {
        let body = r#"{"data":{"regionid":13,"dnoregion":"UKPN London","shortname":"London","data":[
            {"from":"2018-01-20T12:00Z","to":"2018-01-20T12:30Z","intensity":{"forecast":266,"index":"moderate"},
             "generationmix":[{"fuel":"gas","perc":43.6},{"fuel":"wind","perc":6.8}]}]}}"#;
        let points = parse_regional(body, issued()).unwrap();
        assert_eq!((points.len(), points[0].forecast), (1, true));
        let wrapped = r#"{"data":[{"regionid":3,"shortname":"North West England","data":[
            {"from":"2018-01-20T12:00Z","to":"2018-01-20T12:30Z","intensity":{"forecast":100,"index":"low"},"generationmix":[]}]}]}"#;
        assert_eq!(parse_regional(wrapped, issued()).unwrap()[0].value, 100.0);
    }

    #[test]
    fn a_bad_time_names_the_field() {
        let body = r#"{"data":[{"from":"20/01/2018 12:00","intensity":{"forecast":1,"actual":1}}]}"#;
        assert!(parse_national(body, issued()).unwrap_err().to_string().contains("'from'"));
    }
}
