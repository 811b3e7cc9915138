//! Signal points: what makes one acceptable, and how pushed rows (JSON or
//! the CSV format of the real traces) become points.
//!
//! Bad points are refused, never stored: NaN, negative or absurd carbon,
//! prices outside any market's range, timestamps too far ahead. A push is
//! all or nothing, and the error names the first bad row.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Datelike, Duration, DurationRound, TimeDelta, Utc};
use heliotrope_api_spec::{Basis, IngestParams, Signal, SignalPoint, SignalRow};

use super::ValidationError;

/// Highest carbon intensity accepted, gCO2eq/kWh (lignite is about 1,100).
pub const MAX_CARBON_G_PER_KWH: f64 = 2000.0;
/// Prices accepted, per MWh (market caps lie within).
pub const PRICE_RANGE: (f64, f64) = (-1000.0, 20000.0);
/// How far ahead a point may lie.
pub const MAX_AHEAD: Duration = Duration::days(7);
/// Most points one push may carry.
pub const MAX_POINTS_PER_PUSH: usize = 500_000;

/// One value of one signal at one site, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub signal: Signal,
    pub ts: DateTime<Utc>,
    pub value: f64,
    /// ISO 4217 code, for prices.
    pub currency: Option<String>,
    pub basis: Basis,
    pub resolution_s: u32,
    pub forecast: bool,
    pub issued_at: Option<DateTime<Utc>>,
    pub estimated: bool,
}

/// Why points were refused. `reason` is short and fixed (a metric label);
/// `location` says where (`line 7`, `[3]`, `header`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: &'static str,
    pub location: String,
    pub message: String,
}

impl Rejection {
    fn new(reason: &'static str, location: impl Into<String>, message: impl Into<String>) -> Self {
        Rejection { reason, location: location.into(), message: message.into() }
    }
}

impl From<Rejection> for ValidationError {
    fn from(r: Rejection) -> Self {
        ValidationError::new(r.location, r.message)
    }
}

/// How pushed rows are to be read, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IngestOptions {
    pub carbon_basis: Basis,
    pub price_basis: Basis,
    pub resolution_s: u32,
}

impl IngestOptions {
    pub fn parse(params: &IngestParams) -> Result<Self, ValidationError> {
        let carbon_basis = params.carbon_basis.unwrap_or(Basis::AverageLifecycle);
        let price_basis = params.price_basis.unwrap_or(Basis::MarketDayAhead);
        if !is_carbon_basis(carbon_basis) {
            return Err(ValidationError::new("carbon_basis", "must be marginal, average-lifecycle or average-direct"));
        }
        if is_carbon_basis(price_basis) && price_basis != Basis::Synthetic {
            return Err(ValidationError::new("price_basis", "must be market-day-ahead, market-real-time or tariff"));
        }
        let resolution_s = params.resolution_s.unwrap_or(3600);
        if !(60..=86_400).contains(&resolution_s) {
            return Err(ValidationError::new("resolution_s", "must be between 60 and 86400"));
        }
        Ok(IngestOptions { carbon_basis, price_basis, resolution_s })
    }
}

fn is_carbon_basis(basis: Basis) -> bool {
    matches!(basis, Basis::Marginal | Basis::AverageLifecycle | Basis::AverageDirect | Basis::Synthetic)
}

/// Checks one value; `Err` carries the reason label and a message.
pub fn check_value(signal: Signal, value: f64) -> Result<(), (&'static str, String)> {
    if !value.is_finite() {
        return Err(("not_a_number", format!("{value} is not a number")));
    }
    match signal {
        Signal::Carbon if value < 0.0 => Err(("negative_carbon", format!("carbon {value} g/kWh is negative"))),
        Signal::Carbon if value > MAX_CARBON_G_PER_KWH => {
            Err(("carbon_above_max", format!("carbon {value} g/kWh is above {MAX_CARBON_G_PER_KWH} (wrong units?)")))
        }
        Signal::Price if !(PRICE_RANGE.0..=PRICE_RANGE.1).contains(&value) => Err((
            "price_out_of_range",
            format!("price {value} per MWh is outside {} to {} (wrong units?)", PRICE_RANGE.0, PRICE_RANGE.1),
        )),
        _ => Ok(()),
    }
}

/// Longest span one series query may ask for.
pub const MAX_SERIES_SPAN: Duration = Duration::days(366);

/// The window a series query reads: `from` and `to` as asked, by default a
/// day back and two days ahead of `now`; refused if it is empty, reaches
/// too far or spans more than [`MAX_SERIES_SPAN`].
pub fn series_window(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ValidationError> {
    let from = from.unwrap_or(now - Duration::hours(24));
    let to = to.unwrap_or(now + Duration::hours(48));
    for (field, time) in [("from", from), ("to", to)] {
        check_time(time, now + MAX_SERIES_SPAN).map_err(|(_, message)| ValidationError::new(field, message))?;
    }
    if to <= from {
        return Err(ValidationError::new("to", "must be after from"));
    }
    if to - from > MAX_SERIES_SPAN {
        return Err(ValidationError::new("to", "a query spans at most 366 days"));
    }
    Ok((from, to))
}

/// Checks a timestamp against `now` (and against what Postgres can hold).
pub fn check_time(ts: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), (&'static str, String)> {
    if !(1970..=9999).contains(&ts.year()) {
        return Err(("out_of_range", format!("{ts} is not between 1970 and 9999")));
    }
    if ts > now + MAX_AHEAD {
        return Err(("too_far_ahead", format!("{ts} is more than 7 days ahead")));
    }
    Ok(())
}

/// Checks a point from a provider with the rules a push follows.
pub fn check_point(point: &Point, now: DateTime<Utc>) -> Result<(), (&'static str, String)> {
    check_value(point.signal, point.value)?;
    check_time(point.ts, now)?;
    if let Some(issued) = point.issued_at {
        check_time(issued, now)?;
    }
    if !(60..=86_400).contains(&point.resolution_s) {
        return Err((
            "bad_resolution",
            format!("a resolution of {} s is not between 60 and 86400", point.resolution_s),
        ));
    }
    Ok(())
}

/// Times as Postgres keeps them (microseconds), so that two instants that
/// differ by less are one instant everywhere.
pub fn to_micros(ts: DateTime<Utc>) -> DateTime<Utc> {
    ts.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(ts)
}

/// The hours of a site's hourly `carbon` and `price` series that both
/// hold, in the price series' order, each with its two points.
pub fn hourly_pairs<'a>(
    carbon: &'a [SignalPoint],
    price: &'a [SignalPoint],
) -> impl Iterator<Item = (&'a SignalPoint, &'a SignalPoint)> {
    let carbon: HashMap<DateTime<Utc>, &SignalPoint> = carbon.iter().map(|c| (c.timestamp, c)).collect();
    price.iter().filter_map(move |p| Some((*carbon.get(&p.timestamp)?, p)))
}

/// Keeps the last of points that share signal, time and issue time (a
/// provider repeating itself must not make one upsert touch a row twice).
pub fn dedupe(points: Vec<Point>) -> Vec<Point> {
    let mut seen = HashSet::new();
    let mut kept: Vec<Point> = points
        .into_iter()
        .map(|p| Point { ts: to_micros(p.ts), issued_at: p.issued_at.map(to_micros), ..p })
        .rev()
        .filter(|p| seen.insert((p.signal, p.ts, p.issued_at)))
        .collect();
    kept.reverse();
    kept
}

/// Collects points, refusing duplicates (the same signal, time and issue
/// time twice in one push would be ambiguous).
struct Collector {
    points: Vec<Point>,
    seen: HashSet<(Signal, DateTime<Utc>, Option<DateTime<Utc>>)>,
}

impl Collector {
    fn new() -> Self {
        Collector { points: Vec::new(), seen: HashSet::new() }
    }

    /// Turns one row into its points.
    fn add_row(
        &mut self,
        row: &SignalRow,
        options: &IngestOptions,
        now: DateTime<Utc>,
        location: &str,
    ) -> Result<(), Rejection> {
        let reject = |(reason, message): (&'static str, String)| Rejection::new(reason, location, message);
        let row = &SignalRow {
            timestamp_utc: to_micros(row.timestamp_utc),
            issued_at: row.issued_at.map(to_micros),
            ..row.clone()
        };
        check_time(row.timestamp_utc, now).map_err(reject)?;
        if let Some(issued) = row.issued_at {
            check_time(issued, now).map_err(reject)?;
        }
        match (row.forecast, row.issued_at) {
            (true, None) => {
                return Err(Rejection::new("forecast_without_issue_time", location, "a forecast needs issued_at"))
            }
            (false, Some(_)) => {
                return Err(Rejection::new("issue_time_without_forecast", location, "issued_at is only for forecasts"))
            }
            (true, Some(issued)) if issued > now + Duration::minutes(5) => {
                return Err(Rejection::new(
                    "issued_in_future",
                    location,
                    format!("issued_at {issued} is in the future"),
                ))
            }
            _ => {}
        }
        if row.carbon_g_per_kwh.is_none() && row.price_per_mwh.is_none() {
            return Err(Rejection::new("empty_row", location, "has neither carbon_g_per_kwh nor price_per_mwh"));
        }
        let mut point = |signal: Signal, value: f64, basis: Basis, currency: Option<String>| -> Result<(), Rejection> {
            check_value(signal, value).map_err(reject)?;
            if !self.seen.insert((signal, row.timestamp_utc, row.issued_at)) {
                return Err(Rejection::new(
                    "duplicate",
                    location,
                    format!("{} at {} appears twice", signal_name(signal), row.timestamp_utc),
                ));
            }
            self.points.push(Point {
                signal,
                ts: row.timestamp_utc,
                value,
                currency,
                basis,
                resolution_s: options.resolution_s,
                forecast: row.forecast,
                issued_at: row.issued_at,
                estimated: row.estimated,
            });
            Ok(())
        };
        if let Some(carbon) = row.carbon_g_per_kwh {
            point(Signal::Carbon, carbon, options.carbon_basis, None)?;
        }
        if let Some(price) = row.price_per_mwh {
            let currency = row.currency.as_deref().unwrap_or_default();
            if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(Rejection::new(
                    "bad_currency",
                    location,
                    "a price needs currency, an ISO 4217 code such as EUR or USD",
                ));
            }
            point(Signal::Price, price, options.price_basis, Some(currency.to_owned()))?;
        }
        if self.points.len() > MAX_POINTS_PER_PUSH {
            return Err(Rejection::new(
                "too_many_points",
                location,
                format!("a push holds at most {MAX_POINTS_PER_PUSH} points"),
            ));
        }
        Ok(())
    }
}

fn signal_name(signal: Signal) -> &'static str {
    match signal {
        Signal::Carbon => "carbon",
        Signal::Price => "price",
    }
}

/// Points from a JSON array of rows; errors are located as `[index]`.
pub fn points_from_rows(
    rows: &[SignalRow],
    options: &IngestOptions,
    now: DateTime<Utc>,
) -> Result<Vec<Point>, Rejection> {
    let mut collector = Collector::new();
    for (i, row) in rows.iter().enumerate() {
        collector.add_row(row, options, now, &format!("[{i}]"))?;
    }
    Ok(collector.points)
}

/// What a CSV push holds.
#[derive(Debug)]
pub struct CsvPush {
    pub points: Vec<Point>,
    pub rows: u64,
    pub skipped_other_region: u64,
}

/// Columns a CSV push may have. `region`, `carbon_direct_g_per_kwh` and
/// `ci_estimated` come with the real trace files: rows of other regions
/// are skipped, the direct factor is not stored, `ci_estimated` = 1 marks
/// an estimate.
const CSV_COLUMNS: [&str; 10] = [
    "timestamp_utc",
    "carbon_g_per_kwh",
    "price_per_mwh",
    "currency",
    "forecast",
    "issued_at",
    "estimated",
    "region",
    "carbon_direct_g_per_kwh",
    "ci_estimated",
];

/// Points from a CSV body (header line first); errors are located as `line N`.
pub fn points_from_csv(
    body: &[u8],
    options: &IngestOptions,
    region: &str,
    now: DateTime<Utc>,
) -> Result<CsvPush, Rejection> {
    let mut collectors = vec![Collector::new()];
    let mut skipped_other_region = 0;
    let rows = read_csv(body, options, now, &mut collectors, |row_region, _| match row_region {
        Some(other) if other != region => {
            skipped_other_region += 1;
            None
        }
        _ => Some(0),
    })?;
    let points = collectors.pop().map(|c| c.points).unwrap_or_default();
    Ok(CsvPush { points, rows: rows - skipped_other_region, skipped_other_region })
}

/// Every region's points from a trace file (which has a `region` column),
/// read in one pass, by the rules of a push; regions in the order they
/// first appear.
pub fn points_by_region(
    body: &[u8],
    options: &IngestOptions,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Vec<Point>)>, Rejection> {
    let (mut names, mut collectors): (Vec<String>, Vec<Collector>) = (Vec::new(), Vec::new());
    let mut missing = false;
    read_csv(body, options, now, &mut collectors, |region, collectors| {
        let Some(region) = region else {
            missing = true;
            return None;
        };
        Some(names.iter().position(|r| r == region).unwrap_or_else(|| {
            names.push(region.to_owned());
            collectors.push(Collector::new());
            collectors.len() - 1
        }))
    })?;
    if missing {
        return Err(Rejection::new("missing_column", "line 1", "every row of a trace file needs a region"));
    }
    Ok(names.into_iter().zip(collectors).map(|(region, c)| (region, c.points)).collect())
}

/// Reads a CSV body row by row; `route` says, from a row's region, which
/// of `collectors` its points go to (`None` skips the row). Returns the
/// rows read.
fn read_csv(
    body: &[u8],
    options: &IngestOptions,
    now: DateTime<Utc>,
    collectors: &mut Vec<Collector>,
    mut route: impl FnMut(Option<&str>, &mut Vec<Collector>) -> Option<usize>,
) -> Result<u64, Rejection> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(body);
    let unreadable = |e: csv::Error| {
        let line = e.position().map_or(0, |p| p.line());
        Rejection::new("unparseable", format!("line {line}"), format!("not CSV: {e}"))
    };
    let header = reader.headers().map_err(unreadable)?.clone();
    let mut column = [None; CSV_COLUMNS.len()];
    for (i, name) in header.iter().enumerate() {
        let known = CSV_COLUMNS.iter().position(|c| *c == name).ok_or_else(|| {
            Rejection::new(
                "unknown_column",
                "line 1",
                format!("unknown column '{}'; expected {}", name.escape_debug(), CSV_COLUMNS.join(",")),
            )
        })?;
        column[known] = Some(i);
    }
    let [timestamp, carbon, price, currency, forecast, issued_at, estimated, row_region, _, ci_estimated] = column;
    let timestamp =
        timestamp.ok_or_else(|| Rejection::new("missing_column", "line 1", "needs a timestamp_utc column"))?;
    if carbon.is_none() && price.is_none() {
        return Err(Rejection::new("missing_column", "line 1", "needs carbon_g_per_kwh or price_per_mwh"));
    }
    let mut rows = 0;
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(unreadable)? {
        rows += 1;
        let location = format!("line {}", record.position().map_or(0, |p| p.line()));
        let field = |i: Option<usize>| i.and_then(|i| record.get(i)).filter(|v| !v.is_empty());
        let Some(into) = route(field(row_region), collectors) else { continue };
        let bad = |column: &str, value: &str, expected: &str| {
            Rejection::new(
                "unparseable",
                location.clone(),
                format!("{column}: '{}' is not {expected}", value.escape_debug()),
            )
        };
        let number = |column: &str, i: Option<usize>| -> Result<Option<f64>, Rejection> {
            field(i).map(|v| v.parse::<f64>().map_err(|_| bad(column, v, "a number"))).transpose()
        };
        let time = |column: &str, i: Option<usize>| -> Result<Option<DateTime<Utc>>, Rejection> {
            field(i)
                .map(|v| {
                    DateTime::parse_from_rfc3339(v).map(|t| t.to_utc()).map_err(|_| bad(column, v, "an RFC 3339 time"))
                })
                .transpose()
        };
        let flag = |column: &str, i: Option<usize>| -> Result<bool, Rejection> {
            match field(i) {
                None | Some("0" | "false") => Ok(false),
                Some("1" | "true") => Ok(true),
                Some(v) => Err(bad(column, v, "true, false, 1 or 0")),
            }
        };
        let row = SignalRow {
            timestamp_utc: time("timestamp_utc", Some(timestamp))?
                .ok_or_else(|| Rejection::new("unparseable", location.clone(), "timestamp_utc is empty"))?,
            carbon_g_per_kwh: number("carbon_g_per_kwh", carbon)?,
            price_per_mwh: number("price_per_mwh", price)?,
            currency: field(currency).map(str::to_owned),
            forecast: flag("forecast", forecast)?,
            issued_at: time("issued_at", issued_at)?,
            estimated: flag("estimated", estimated)? || flag("ci_estimated", ci_estimated)?,
        };
        collectors[into].add_row(&row, options, now, &location)?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> IngestOptions {
        IngestOptions::parse(&IngestParams::default()).unwrap()
    }

    fn now() -> DateTime<Utc> {
        "2026-11-26T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_series_window_defaults_around_now_and_refuses_empty_or_overlong_spans() {
        let (from, to) = series_window(None, None, now()).unwrap();
        assert_eq!((from, to), (now() - Duration::hours(24), now() + Duration::hours(48)));
        let refused = series_window(Some(now()), Some(now()), now()).unwrap_err();
        assert!(refused.to_string().contains("must be after from"), "{refused}");
        let year_and_more = series_window(Some(now() - Duration::days(367)), Some(now()), now()).unwrap_err();
        assert!(year_and_more.to_string().contains("366 days"), "{year_and_more}");
    }

    fn csv(body: &str) -> Result<CsvPush, Rejection> {
        points_from_csv(body.as_bytes(), &options(), "DE-LU", now())
    }

    #[test]
    fn reads_the_trace_format() {
        let push =
            csv("region,timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency,carbon_direct_g_per_kwh,ci_estimated\n\
             DE-LU,2023-01-09T00:00:00Z,296.42,162.26,USD,228.51,0\n\
             GB,2023-01-09T00:00:00Z,100,50,USD,80,0\n\
             DE-LU,2023-01-09T01:00:00Z,304.31,174.28,USD,237.22,1\n")
            .unwrap();
        assert_eq!((push.rows, push.skipped_other_region, push.points.len()), (2, 1, 4));
        let carbon = &push.points[2];
        assert_eq!(
            (carbon.signal, carbon.value, carbon.estimated, carbon.basis),
            (Signal::Carbon, 304.31, true, Basis::AverageLifecycle)
        );
        assert_eq!(push.points[1].currency.as_deref(), Some("USD"));
    }

    #[test]
    fn reads_forecasts() {
        let push = csv("timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency,forecast,issued_at\n\
             2026-11-27T00:00:00Z,250,,,true,2026-11-26T06:00:00Z\n")
        .unwrap();
        assert_eq!(push.points.len(), 1);
        assert!(push.points[0].forecast);
        assert_eq!(push.points[0].issued_at, Some("2026-11-26T06:00:00Z".parse().unwrap()));
    }

    #[test]
    fn each_rule_names_the_line_and_reason() {
        let header = "timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency,forecast,issued_at\n";
        let ok = "2026-11-26T00:00:00Z,100,50,EUR,,\n";
        let cases = [
            ("2026-11-26T01:00:00Z,NaN,,,,\n", "not_a_number"),
            ("2026-11-26T01:00:00Z,-1,,,,\n", "negative_carbon"),
            ("2026-11-26T01:00:00Z,2000.5,,,,\n", "carbon_above_max"),
            ("2026-11-26T01:00:00Z,,20001,EUR,,\n", "price_out_of_range"),
            ("2026-11-26T01:00:00Z,,-1001,EUR,,\n", "price_out_of_range"),
            ("2026-12-04T01:00:00Z,100,,,,\n", "too_far_ahead"),
            ("2026-11-26T01:00:00Z,,50,,,\n", "bad_currency"),
            ("2026-11-26T01:00:00Z,,50,euro,,\n", "bad_currency"),
            ("2026-11-26T01:00:00Z,100,,,true,\n", "forecast_without_issue_time"),
            ("2026-11-26T01:00:00Z,100,,,,2026-11-26T00:00:00Z\n", "issue_time_without_forecast"),
            ("2026-11-26T00:00:00Z,100,,,,\n", "duplicate"),
            ("2026-11-26T01:00:00Z,,,,,\n", "empty_row"),
            ("yesterday,100,,,,\n", "unparseable"),
            ("2026-11-26T01:00:00Z,lots,,,,\n", "unparseable"),
            ("2026-11-26T01:00:00Z,1,2\n", "unparseable"),
            ("1969-12-31T23:00:00Z,100,,,,\n", "out_of_range"),
            ("2026-11-26T00:00:00.0000001Z,100,,,,\n", "duplicate"),
        ];
        for (line, reason) in cases {
            let rejection = csv(&format!("{header}{ok}{line}")).unwrap_err();
            assert_eq!(
                (rejection.reason, rejection.location.as_str()),
                (reason, "line 3"),
                "{line}: {}",
                rejection.message
            );
        }
        assert_eq!(csv("when,carbon_g_per_kwh\n").unwrap_err().reason, "unknown_column");
        assert_eq!(csv("timestamp_utc,currency\n").unwrap_err().reason, "missing_column");
        assert_eq!(csv("carbon_g_per_kwh\n1\n").unwrap_err().reason, "missing_column");
    }

    #[test]
    fn json_rows_are_located_by_index() {
        let row = |carbon: f64| SignalRow {
            timestamp_utc: "2026-11-26T00:00:00Z".parse().unwrap(),
            carbon_g_per_kwh: Some(carbon),
            price_per_mwh: None,
            currency: None,
            forecast: false,
            issued_at: None,
            estimated: false,
        };
        let rejection = points_from_rows(&[row(1.0), row(-5.0)], &options(), now()).unwrap_err();
        assert_eq!((rejection.reason, rejection.location.as_str()), ("negative_carbon", "[1]"));
    }

    #[test]
    fn bases_must_fit_their_signal() {
        let params = |carbon, price| IngestParams { carbon_basis: carbon, price_basis: price, resolution_s: None };
        assert!(IngestOptions::parse(&params(Some(Basis::Tariff), None)).is_err());
        assert!(IngestOptions::parse(&params(None, Some(Basis::Marginal))).is_err());
        assert!(IngestOptions::parse(&params(Some(Basis::Marginal), Some(Basis::MarketRealTime))).is_ok());
    }
}
