//! Electricity Maps API v3: `carbon-intensity/history` (the past day's
//! actuals, hourly), `carbon-intensity/latest` (the newest, which may be
//! newer than the history), `carbon-intensity/forecast`, and
//! `price-day-ahead/latest`; for a backfill, the `past-range` of both; header
//! `auth-token`. Keeps `isEstimated` and `emissionFactorType`.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Basis, Signal};
use serde::Deserialize;

use super::{parse_json, send, FeedError, Span};
use crate::domain::signals::Point;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CarbonEntry {
    /// Null where the provider has no value for the hour.
    carbon_intensity: Option<f64>,
    datetime: DateTime<Utc>,
    #[serde(default)]
    emission_factor_type: Option<String>,
    #[serde(default)]
    is_estimated: Option<bool>,
}

#[derive(Deserialize)]
struct History {
    history: Vec<CarbonEntry>,
}

/// A `past-range` reply.
#[derive(Deserialize)]
struct Range<T> {
    data: Vec<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Forecast {
    forecast: Vec<CarbonEntry>,
    updated_at: DateTime<Utc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Price {
    datetime: DateTime<Utc>,
    value: f64,
    /// For example `EUR/MWh`.
    unit: String,
}

fn basis(factor: Option<&str>) -> Result<Basis, FeedError> {
    match factor {
        None | Some("lifecycle") => Ok(Basis::AverageLifecycle),
        Some("direct") => Ok(Basis::AverageDirect),
        Some(other) => Err(FeedError::Shape(format!("electricitymaps: field 'emissionFactorType': unknown '{other}'"))),
    }
}

fn carbon_points(entries: Vec<CarbonEntry>, issued_at: Option<DateTime<Utc>>) -> Result<Vec<Point>, FeedError> {
    entries
        .into_iter()
        .filter_map(|e| e.carbon_intensity.map(|value| (e, value)))
        .map(|(e, value)| {
            Ok(Point {
                signal: Signal::Carbon,
                ts: e.datetime,
                value,
                currency: None,
                basis: basis(e.emission_factor_type.as_deref())?,
                resolution_s: 3600,
                forecast: issued_at.is_some(),
                issued_at,
                estimated: e.is_estimated.unwrap_or(false),
            })
        })
        .collect()
}

pub fn parse_latest(body: &str) -> Result<Vec<Point>, FeedError> {
    carbon_points(vec![parse_json::<CarbonEntry>("electricitymaps", body)?], None)
}

pub fn parse_history(body: &str) -> Result<Vec<Point>, FeedError> {
    carbon_points(parse_json::<History>("electricitymaps", body)?.history, None)
}

pub fn parse_forecast(body: &str) -> Result<Vec<Point>, FeedError> {
    let forecast: Forecast = parse_json("electricitymaps", body)?;
    carbon_points(forecast.forecast, Some(forecast.updated_at))
}

/// Carbon actuals of a `carbon-intensity/past-range` reply.
pub fn parse_past_carbon(body: &str) -> Result<Vec<Point>, FeedError> {
    carbon_points(parse_json::<Range<CarbonEntry>>("electricitymaps", body)?.data, None)
}

/// Prices of a `price-day-ahead/past-range` reply.
pub fn parse_past_prices(body: &str) -> Result<Vec<Point>, FeedError> {
    parse_json::<Range<Price>>("electricitymaps", body)?.data.into_iter().map(price_point).collect()
}

pub fn parse_price(body: &str) -> Result<Vec<Point>, FeedError> {
    Ok(vec![price_point(parse_json("electricitymaps", body)?)?])
}

fn price_point(price: Price) -> Result<Point, FeedError> {
    let (currency, per) = price.unit.split_once('/').unwrap_or((&price.unit, ""));
    let value = match per.to_ascii_lowercase().as_str() {
        "mwh" => price.value,
        "kwh" => price.value * 1000.0,
        _ => {
            return Err(FeedError::Shape(format!(
                "electricitymaps: field 'unit': '{}' is not per MWh or kWh",
                price.unit
            )))
        }
    };
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(FeedError::Shape(format!("electricitymaps: field 'unit': no currency in '{}'", price.unit)));
    }
    Ok(Point {
        signal: Signal::Price,
        ts: price.datetime,
        value,
        currency: Some(currency.to_ascii_uppercase()),
        basis: Basis::MarketDayAhead,
        resolution_s: 3600,
        forecast: false,
        issued_at: None,
        estimated: false,
    })
}

pub async fn fetch(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    zone: &str,
    signal: Signal,
    span: Span,
) -> Result<Vec<Point>, FeedError> {
    let get = |path: &str| client.get(format!("{base}/v3/{path}")).query(&[("zone", zone)]).header("auth-token", token);
    let refused = |e: FeedError| match e {
        FeedError::Status { status, message } if status.as_u16() == 401 || status.as_u16() == 403 => {
            FeedError::Credentials(format!("Electricity Maps refused the auth-token (HTTP {status}): {message}"))
        }
        e => e,
    };
    if let Span::Past { from, to } = span {
        let range = |path: &str| get(path).query(&[("start", from.to_rfc3339()), ("end", to.to_rfc3339())]);
        return match signal {
            Signal::Carbon => parse_past_carbon(&send(range("carbon-intensity/past-range")).await.map_err(refused)?),
            Signal::Price => parse_past_prices(&send(range("price-day-ahead/past-range")).await.map_err(refused)?),
        };
    }
    match signal {
        Signal::Carbon => {
            let mut points = parse_history(&send(get("carbon-intensity/history")).await.map_err(refused)?)?;
            points.extend(parse_latest(&send(get("carbon-intensity/latest")).await.map_err(refused)?)?);
            points.extend(parse_forecast(&send(get("carbon-intensity/forecast")).await.map_err(refused)?)?);
            Ok(points)
        }
        Signal::Price => parse_price(&send(get("price-day-ahead/latest")).await.map_err(refused)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_estimation_and_factor_type() {
        let body = r#"{"zone":"DE","history":[
            {"zone":"DE","carbonIntensity":599,"datetime":"2024-03-05T20:00:00.000Z","updatedAt":"2024-03-06T18:48:27.926Z",
             "createdAt":"2024-03-03T19:47:16.265Z","emissionFactorType":"lifecycle","isEstimated":false,"estimationMethod":null},
            {"zone":"DE","carbonIntensity":216,"datetime":"2024-03-05T21:00:00.000Z","updatedAt":"2024-03-06T18:48:27.926Z",
             "createdAt":"2024-03-03T19:47:16.265Z","emissionFactorType":"direct","isEstimated":true,"estimationMethod":"TIME_SLICER_AVERAGE"},
            {"zone":"DE","carbonIntensity":null,"datetime":"2024-03-05T22:00:00.000Z","emissionFactorType":"lifecycle","isEstimated":true}]}"#;
        let points = parse_history(body).unwrap();
        assert_eq!(points.len(), 2, "the null hour is skipped");
        assert_eq!((points[0].value, points[0].basis, points[0].estimated), (599.0, Basis::AverageLifecycle, false));
        assert_eq!((points[1].basis, points[1].estimated), (Basis::AverageDirect, true));
        assert!(!points[0].forecast);
    }

    #[test]
    fn latest() {
        let body = r#"{"zone":"US-CAR-DUK","carbonIntensity":216,"datetime":"2024-03-06T19:00:00.000Z","updatedAt":"2024-03-06T18:48:27.926Z",
            "createdAt":"2024-03-03T19:47:16.265Z","emissionFactorType":"lifecycle","isEstimated":true,"estimationMethod":"TIME_SLICER_AVERAGE"}"#;
        let points = parse_latest(body).unwrap();
        assert_eq!((points[0].value, points[0].estimated, points[0].forecast), (216.0, true, false));
    }

    #[test]
    fn forecasts_carry_their_issue_time() {
        let body = r#"{"zone":"DE","forecast":[{"carbonIntensity":420,"datetime":"2024-03-06T20:00:00.000Z"}],"updatedAt":"2024-03-06T18:00:00.000Z"}"#;
        let points = parse_forecast(body).unwrap();
        assert!(points[0].forecast);
        assert_eq!(points[0].issued_at, Some("2024-03-06T18:00:00Z".parse().unwrap()));
    }

    #[test]
    fn a_changed_shape_names_the_field() {
        let err =
            parse_history(r#"{"zone":"DE","history":[{"carbonIntensity":"high","datetime":"2024-03-05T20:00:00Z"}]}"#)
                .unwrap_err();
        assert!(err.to_string().contains("history[0].carbonIntensity"), "{err}");
        let err = parse_history(r#"{"zone":"DE","data":[]}"#).unwrap_err();
        assert!(err.to_string().contains("history"), "{err}");
    }

    #[test]
    fn prices_in_mwh_or_kwh() {
        let mwh =
            parse_price(r#"{"zone":"DE","datetime":"2024-03-06T20:00:00Z","value":87.5,"unit":"EUR/MWh"}"#).unwrap();
        assert_eq!((mwh[0].value, mwh[0].currency.as_deref()), (87.5, Some("EUR")));
        let kwh =
            parse_price(r#"{"zone":"DE","datetime":"2024-03-06T20:00:00Z","value":0.0875,"unit":"eur/kWh"}"#).unwrap();
        assert_eq!((kwh[0].value, kwh[0].currency.as_deref()), (87.5, Some("EUR")));
        assert!(
            parse_price(r#"{"zone":"DE","datetime":"2024-03-06T20:00:00Z","value":1,"unit":"gCO2eq/kWh"}"#).is_err()
        );
    }
}
