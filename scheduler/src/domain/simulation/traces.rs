//! Hourly traces of carbon intensity and price per region, in the CSV
//! format of the real traces (`region,timestamp_utc,carbon_g_per_kwh,
//! price_per_mwh,currency,...`), onto one hourly grid: the simulator's
//! truth. They are read with the signal push's own parser and rules, so
//! that a file the service would refuse is refused here, for the same
//! reasons; a gap takes the same hour of an earlier day, as the planner
//! fills one.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Timelike, Utc};
use heliotrope_api_spec::{IngestParams, Signal};

use super::ScenarioError;
use crate::domain::cost::SlotSignal;
use crate::domain::inventory::check_name;
use crate::domain::planner::inputs::persist;
use crate::domain::signals::{points_by_region, IngestOptions, Point};

/// Most regions and hours a trace file may hold (two years of 200 regions).
pub const MAX_REGIONS: usize = 200;
pub const MAX_HOURS: usize = 2 * 366 * 24;

/// Every region's signals on one hourly grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Traces {
    /// The first hour.
    pub start: DateTime<Utc>,
    /// In the order they first appear in the file.
    pub regions: Vec<String>,
    /// Per region, one per hour from `start`.
    pub actuals: Vec<Vec<SlotSignal>>,
    /// The one currency of the prices.
    pub currency: String,
    /// Values the file lacked, filled from the same hour on an earlier day.
    pub filled: usize,
}

impl Traces {
    pub fn hours(&self) -> usize {
        self.actuals.first().map_or(0, Vec::len)
    }

    /// The index of hour `t` (which must lie on the hour), if within the traces.
    pub fn hour_of(&self, t: DateTime<Utc>) -> Option<usize> {
        let offset = t - self.start;
        (offset.num_seconds() % 3600 == 0 && offset >= Duration::zero())
            .then(|| offset.num_hours() as usize)
            .filter(|&h| h < self.hours())
    }

    pub fn hour(&self, h: usize) -> DateTime<Utc> {
        self.start + Duration::hours(h as i64)
    }

    /// Reads a trace file. Every row is checked as a push's would be; the
    /// error names the line. Each region needs both signals every hour of
    /// the file's span, but for gaps the same hour of an earlier day fills.
    pub fn from_csv(body: &[u8]) -> Result<Traces, ScenarioError> {
        let options = IngestOptions::parse(&IngestParams::default()).map_err(|e| ScenarioError(e.to_string()))?;
        // Traces are history; the push's "not too far ahead" rule has no present to hold to here.
        let far_future: DateTime<Utc> = DateTime::<Utc>::MAX_UTC - Duration::days(30);
        let by_region = points_by_region(body, &options, far_future)
            .map_err(|r| ScenarioError(format!("{}: {}", r.location, r.message)))?;
        if by_region.len() > MAX_REGIONS {
            return Err(ScenarioError(format!("more than {MAX_REGIONS} regions")));
        }
        for (region, _) in &by_region {
            check_name("region", region).map_err(|e| ScenarioError(format!("region '{region}': {}", e.message)))?;
        }
        let (regions, per_region) = by_region.into_iter().unzip();
        on_grid(regions, per_region)
    }
}

/// Points per region onto one hourly grid from the earliest to the latest hour.
fn on_grid(regions: Vec<String>, per_region: Vec<Vec<Point>>) -> Result<Traces, ScenarioError> {
    let all = || per_region.iter().flatten();
    if let Some(p) = all().find(|p| p.ts.minute() != 0 || p.ts.second() != 0 || p.ts.nanosecond() != 0) {
        return Err(ScenarioError(format!("{}: timestamps must lie on the hour", p.ts)));
    }
    let (Some(start), Some(end)) = (all().map(|p| p.ts).min(), all().map(|p| p.ts).max()) else {
        return Err(ScenarioError("the traces have no values".into()));
    };
    let hours = (end - start).num_hours() as usize + 1;
    if hours > MAX_HOURS {
        return Err(ScenarioError(format!("the traces span {hours} hours, more than {MAX_HOURS}")));
    }
    let mut currencies: Vec<&str> = all().filter_map(|p| p.currency.as_deref()).collect();
    currencies.sort_unstable();
    currencies.dedup();
    if currencies.len() > 1 {
        return Err(ScenarioError(format!(
            "prices come in more than one currency ({}); convert them to one",
            currencies.join(", ")
        )));
    }
    let currency = currencies.first().copied().unwrap_or("USD").to_owned();
    let mut filled = 0;
    let mut actuals = Vec::with_capacity(regions.len());
    for (region, points) in regions.iter().zip(&per_region) {
        let mut series = |signal: Signal| {
            let by_hour: HashMap<usize, f64> = points
                .iter()
                .filter(|p| p.signal == signal)
                .map(|p| ((p.ts - start).num_hours() as usize, p.value))
                .collect();
            filled += hours - by_hour.len();
            persist(hours, |h| (h >= 0).then(|| by_hour.get(&(h as usize)).copied()).flatten()).map_err(|h| {
                let name = if signal == Signal::Carbon { "carbon" } else { "price" };
                ScenarioError(format!(
                    "{region}: no {name} at {} nor at that hour on an earlier day",
                    start + Duration::hours(h as i64)
                ))
            })
        };
        let carbon = series(Signal::Carbon)?;
        let price = series(Signal::Price)?;
        actuals.push(
            carbon
                .into_iter()
                .zip(price)
                .map(|(carbon_g_per_kwh, price_per_mwh)| SlotSignal { price_per_mwh, carbon_g_per_kwh })
                .collect(),
        );
    }
    Ok(Traces { start, regions, actuals, currency, filled })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "region,timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency,carbon_direct_g_per_kwh,ci_estimated\n";

    #[test]
    fn reads_regions_onto_one_grid() {
        let body = format!(
            "{HEADER}A,2023-06-05T00:00:00Z,100,50,USD,90,0\nB,2023-06-05T00:00:00Z,300,70,USD,250,1\n\
             A,2023-06-05T01:00:00Z,110,55,USD,95,0\nB,2023-06-05T01:00:00Z,310,75,USD,260,0\n"
        );
        let t = Traces::from_csv(body.as_bytes()).unwrap();
        assert_eq!(t.regions, ["A", "B"]);
        assert_eq!((t.hours(), t.filled, t.currency.as_str()), (2, 0, "USD"));
        assert_eq!(t.actuals[1][1], SlotSignal { price_per_mwh: 75.0, carbon_g_per_kwh: 310.0 });
        assert_eq!(t.hour_of("2023-06-05T01:00:00Z".parse().unwrap()), Some(1));
        assert_eq!(t.hour_of("2023-06-05T02:00:00Z".parse().unwrap()), None);
    }

    #[test]
    fn gaps_fill_from_the_day_before_and_bad_rows_are_named() {
        let mut body = String::from(HEADER);
        for h in 0..26 {
            if h != 24 {
                body.push_str(&format!("A,2023-06-05T{:02}:00:00Z,{},50,USD,1,0\n", h % 24, 100 + h));
            }
        }
        // Hours 24 and 25 are the next day; 24 is missing and takes hour 0's values.
        let body = body.replacen("A,2023-06-05T01:00:00Z,125", "A,2023-06-06T01:00:00Z,125", 1);
        let t = Traces::from_csv(body.as_bytes()).unwrap();
        assert_eq!((t.hours(), t.filled), (26, 2));
        assert_eq!(t.actuals[0][24].carbon_g_per_kwh, 100.0);

        let bad = format!("{HEADER}A,2023-06-05T00:00:00Z,-5,50,USD,1,0\n");
        let e = Traces::from_csv(bad.as_bytes()).unwrap_err();
        assert!(e.0.contains("line 2") && e.0.contains("negative"), "{e}");
        let off_hour = format!("{HEADER}A,2023-06-05T00:30:00Z,5,50,USD,1,0\n");
        assert!(Traces::from_csv(off_hour.as_bytes()).unwrap_err().0.contains("on the hour"));
        let first_missing = format!("{HEADER}A,2023-06-05T00:00:00Z,5,,USD,1,0\nA,2023-06-05T01:00:00Z,5,4,USD,1,0\n");
        assert!(Traces::from_csv(first_missing.as_bytes()).unwrap_err().0.contains("no price"));
        let no_region = b"timestamp_utc,carbon_g_per_kwh\n2023-06-05T00:00:00Z,5\n";
        assert!(Traces::from_csv(no_region).unwrap_err().0.contains("needs a region"));
        let two = format!("{HEADER}A,2023-06-05T00:00:00Z,5,4,USD,1,0\nB,2023-06-05T00:00:00Z,5,4,EUR,1,0\n");
        assert!(Traces::from_csv(two.as_bytes()).unwrap_err().0.contains("more than one currency"));
    }
}
