//! ENTSO-E Transparency Platform: day-ahead prices (`documentType=A44`) by
//! bidding-zone EIC, authenticated by `securityToken`.
//!
//! The reply is a `Publication_MarketDocument`: `TimeSeries` (currency,
//! curve type) -> `Period` (interval start, resolution) -> `Point`
//! (position, price). A point's time is start + (position - 1) x
//! resolution. With curve type A03 a missing position repeats the previous
//! price. One reply may mix resolutions (15 and 60 minutes): where both
//! cover an instant the finer one is kept. DST days simply have 23 or 25
//! hourly positions. "No data" is an `Acknowledgement_MarketDocument`,
//! sometimes with HTTP 200.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, NaiveDateTime, TimeDelta, Utc};
use heliotrope_api_spec::{Basis, Signal};
use roxmltree::Node;

use super::{send, FeedError, Span};
use crate::domain::signals::Point;

/// Longest period accepted in one reply (the fetch asks for three days).
const MAX_PERIOD_DAYS: i64 = 7;

fn shape(message: impl std::fmt::Display) -> FeedError {
    FeedError::Shape(format!("entsoe: {message}"))
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.tag_name().name() == name)
}

fn text<'a>(node: Node<'a, '_>, name: &str) -> Result<&'a str, FeedError> {
    child(node, name).and_then(|c| c.text()).map(str::trim).ok_or_else(|| shape(format!("field '{name}' is missing")))
}

fn parse_time(value: &str) -> Result<DateTime<Utc>, FeedError> {
    NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%MZ")
        .map(|t| t.and_utc())
        .or_else(|_| DateTime::parse_from_rfc3339(value).map(|t| t.to_utc()))
        .map_err(|_| shape(format!("field 'timeInterval': '{value}' is not a time")))
}

fn resolution_s(value: &str) -> Result<u32, FeedError> {
    match value {
        "PT15M" => Ok(900),
        "PT30M" => Ok(1800),
        "PT60M" | "PT1H" => Ok(3600),
        other => Err(shape(format!("field 'resolution': '{other}' is not PT15M, PT30M or PT60M"))),
    }
}

/// Prices of a reply, or why it has none.
pub fn parse(xml: &str) -> Result<Vec<Point>, FeedError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| shape(format!("not XML: {e}")))?;
    let root = doc.root_element();
    match root.tag_name().name() {
        "Publication_MarketDocument" => {}
        "Acknowledgement_MarketDocument" => {
            let reason = root.descendants().find(|n| n.tag_name().name() == "text").and_then(|n| n.text());
            return Err(FeedError::NoData(reason.unwrap_or("acknowledgement without a reason").trim().to_owned()));
        }
        other => return Err(shape(format!("unexpected document '{other}'"))),
    }
    let mut prices: BTreeMap<DateTime<Utc>, Point> = BTreeMap::new();
    for series in root.children().filter(|n| n.tag_name().name() == "TimeSeries") {
        let currency = text(series, "currency_Unit.name")?;
        let unit = text(series, "price_Measure_Unit.name")?;
        if unit != "MWH" {
            return Err(shape(format!("field 'price_Measure_Unit.name': '{unit}' is not MWH")));
        }
        let forward_fill = child(series, "curveType").and_then(|c| c.text()).map(str::trim) == Some("A03");
        for period in series.children().filter(|n| n.tag_name().name() == "Period") {
            let interval = child(period, "timeInterval").ok_or_else(|| shape("field 'timeInterval' is missing"))?;
            let (start, end) = (parse_time(text(interval, "start")?)?, parse_time(text(interval, "end")?)?);
            let resolution = resolution_s(text(period, "resolution")?)?;
            let step = TimeDelta::seconds(i64::from(resolution));
            if end <= start || end - start > TimeDelta::days(MAX_PERIOD_DAYS) {
                return Err(shape(format!(
                    "field 'timeInterval': {start} to {end} is not a period of 1 to {MAX_PERIOD_DAYS} days"
                )));
            }
            let slots = (end - start).num_seconds() / i64::from(resolution);
            let mut given = BTreeMap::new();
            for point in period.children().filter(|n| n.tag_name().name() == "Point") {
                let position: i64 =
                    text(point, "position")?.parse().map_err(|_| shape("field 'position' is not a number"))?;
                let amount: f64 =
                    text(point, "price.amount")?.parse().map_err(|_| shape("field 'price.amount' is not a number"))?;
                if !(1..=slots).contains(&position) {
                    return Err(shape(format!("field 'position': {position} lies outside its period of {slots}")));
                }
                given.insert(position, amount);
            }
            let mut previous = None;
            for position in 1..=slots {
                let price = match given.get(&position) {
                    Some(&price) => Some(price),
                    None if forward_fill => previous,
                    None => None,
                };
                previous = price;
                let Some(value) = price else { continue };
                let ts = start + step * (position - 1) as i32;
                let finer = prices.get(&ts).is_none_or(|p| p.resolution_s > resolution);
                if finer {
                    prices.insert(
                        ts,
                        Point {
                            signal: Signal::Price,
                            ts,
                            value,
                            currency: Some(currency.to_owned()),
                            basis: Basis::MarketDayAhead,
                            resolution_s: resolution,
                            forecast: false,
                            issued_at: None,
                            estimated: false,
                        },
                    );
                }
            }
        }
    }
    Ok(prices.into_values().collect())
}

pub async fn fetch(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    eic: &str,
    span: Span,
) -> Result<Vec<Point>, FeedError> {
    let (start, end) = match span {
        Span::Now(now) => {
            let day = now.duration_trunc(TimeDelta::days(1)).unwrap_or(now);
            (day - TimeDelta::days(1), day + TimeDelta::days(2))
        }
        Span::Past { from, to } => (from, to),
    };
    let (start, end) = (start.format("%Y%m%d%H%M").to_string(), end.format("%Y%m%d%H%M").to_string());
    let request = client.get(format!("{base}/api")).query(&[
        ("securityToken", token),
        ("documentType", "A44"),
        ("in_Domain", eic),
        ("out_Domain", eic),
        ("periodStart", &start),
        ("periodEnd", &end),
    ]);
    match send(request).await {
        Ok(body) => parse(&body),
        // Errors also come as acknowledgements; say what they say.
        Err(FeedError::Status { status, message }) if status.as_u16() == 401 => {
            Err(FeedError::Credentials(format!("ENTSO-E refused the securityToken (HTTP 401): {message}")))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(series: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Publication_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3">
  <mRID>f86583463b2b4fa68fe1a5e5d1d0c5cf</mRID><revisionNumber>1</revisionNumber><type>A44</type>
  <createdDateTime>2025-08-23T16:09:32Z</createdDateTime>
  <period.timeInterval><start>2025-08-21T22:00Z</start><end>2025-08-23T22:00Z</end></period.timeInterval>
  {series}
</Publication_MarketDocument>"#
        )
    }

    fn series(curve: &str, start: &str, end: &str, resolution: &str, points: &[(u32, f64)]) -> String {
        let points: String = points
            .iter()
            .map(|(p, v)| format!("<Point><position>{p}</position><price.amount>{v}</price.amount></Point>"))
            .collect();
        format!(
            "<TimeSeries><mRID>1</mRID><auction.type>A01</auction.type><businessType>A62</businessType>\
             <in_Domain.mRID codingScheme=\"A01\">10YCZ-CEPS-----N</in_Domain.mRID>\
             <currency_Unit.name>EUR</currency_Unit.name><price_Measure_Unit.name>MWH</price_Measure_Unit.name>\
             <curveType>{curve}</curveType><Period><timeInterval><start>{start}</start><end>{end}</end></timeInterval>\
             <resolution>{resolution}</resolution>{points}</Period></TimeSeries>"
        )
    }

    #[test]
    fn positions_become_times() {
        let xml =
            document(&series("A01", "2025-08-21T22:00Z", "2025-08-22T00:00Z", "PT60M", &[(1, 88.33), (2, 80.75)]));
        let points = parse(&xml).unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[1].ts, "2025-08-21T23:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(
            (points[1].value, points[1].currency.as_deref(), points[1].resolution_s),
            (80.75, Some("EUR"), 3600)
        );
    }

    #[test]
    fn a03_repeats_the_previous_price_over_gaps() {
        let xml = document(&series("A03", "2025-08-21T22:00Z", "2025-08-22T02:00Z", "PT60M", &[(1, 50.0), (3, 70.0)]));
        let values: Vec<f64> = parse(&xml).unwrap().iter().map(|p| p.value).collect();
        assert_eq!(values, [50.0, 50.0, 70.0, 70.0]);
        let a01 = document(&series("A01", "2025-08-21T22:00Z", "2025-08-22T02:00Z", "PT60M", &[(1, 50.0), (3, 70.0)]));
        assert_eq!(parse(&a01).unwrap().len(), 2, "A01 gaps stay gaps");
    }

    #[test]
    fn quarter_hours_and_mixed_resolutions() {
        let quarter = series(
            "A03",
            "2025-10-01T22:00Z",
            "2025-10-01T23:00Z",
            "PT15M",
            &[(1, 10.0), (2, 11.0), (3, 12.0), (4, 13.0)],
        );
        let hourly = series("A03", "2025-10-01T22:00Z", "2025-10-02T00:00Z", "PT60M", &[(1, 99.0), (2, 20.0)]);
        let points = parse(&document(&format!("{hourly}{quarter}"))).unwrap();
        let got: Vec<(String, f64, u32)> =
            points.iter().map(|p| (p.ts.format("%H:%M").to_string(), p.value, p.resolution_s)).collect();
        assert_eq!(got[0], ("22:00".into(), 10.0, 900), "the finer series wins where both cover");
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], ("23:00".into(), 20.0, 3600));
    }

    #[test]
    fn dst_days_have_23_or_25_hours() {
        // Spring forward in Central Europe: 2025-03-30, delivery day 2025-03-29T23:00Z to 2025-03-30T22:00Z.
        let spring: Vec<(u32, f64)> = (1..=23).map(|p| (p, f64::from(p))).collect();
        let xml = document(&series("A03", "2025-03-29T23:00Z", "2025-03-30T22:00Z", "PT60M", &spring));
        assert_eq!(parse(&xml).unwrap().len(), 23);
        let autumn: Vec<(u32, f64)> = (1..=25).map(|p| (p, f64::from(p))).collect();
        let xml = document(&series("A03", "2025-10-25T22:00Z", "2025-10-26T23:00Z", "PT60M", &autumn));
        let points = parse(&xml).unwrap();
        assert_eq!(points.len(), 25);
        assert_eq!(points[24].ts, "2025-10-26T22:00:00Z".parse::<DateTime<Utc>>().unwrap());
    }

    #[test]
    fn no_data_acknowledgement() {
        let xml = r#"<Acknowledgement_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-1:acknowledgementdocument:7:0">
            <mRID>abc</mRID><createdDateTime>2025-08-23T16:09:32Z</createdDateTime>
            <Reason><code>999</code><text>No matching data found for Data item ENERGY_PRICES [12.1.D] (10YGB----------A, 10YGB----------A)</text></Reason>
            </Acknowledgement_MarketDocument>"#;
        match parse(xml) {
            Err(FeedError::NoData(reason)) => assert!(reason.starts_with("No matching data"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shape_changes_name_the_field() {
        let xml = document(&series("A01", "2025-08-21T22:00Z", "2025-08-22T00:00Z", "P1Y", &[(1, 1.0)]));
        assert!(parse(&xml).unwrap_err().to_string().contains("resolution"));
        let xml = document(&series("A01", "2025-08-21T22:00Z", "2025-08-22T00:00Z", "PT60M", &[(3, 1.0)]));
        assert!(parse(&xml).unwrap_err().to_string().contains("position"));
        assert!(parse("<html>oops</html>").unwrap_err().to_string().contains("unexpected document"));
        let forever = document(&series("A03", "0001-01-01T00:00Z", "9999-01-01T00:00Z", "PT15M", &[(1, 1.0)]));
        assert!(parse(&forever).unwrap_err().to_string().contains("timeInterval"), "refused, not looped over");
    }
}
