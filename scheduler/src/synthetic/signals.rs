//! Synthetic carbon and price signals for the demo, so that a newcomer sees
//! the scheduler react to believable daily patterns without network access
//! or API keys. Every point is labelled `Basis::Synthetic`: generated from
//! the per-region hour-of-day profiles (`super::profiles`), never measured.
//! Pure: no IO.

use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use heliotrope_api_spec::{Basis, Signal};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::profiles::{self, Profile};
use crate::domain::signals::{check_value, Point, MAX_CARBON_G_PER_KWH, PRICE_RANGE};

/// How much of an hour's deviation from the profile carries into the next:
/// real carbon and price stay high or low for hours, not for one (the
/// summer 2023 traces show hour-to-hour correlations of 0.9 and more).
const PERSISTENCE: f64 = 0.93;

/// Hours of fresh noise a deviation is built from (what came before has
/// faded below 0.02% of it).
const MEMORY_H: i64 = 120;

/// Hourly synthetic carbon and price points for `zone` (time zone `tz`) for
/// `hours` hours from `start` (truncated to the hour). Points up to `now`
/// are actuals: the profile's mean for the local hour and day type plus a
/// persistent deviation scaled by its standard deviation, one path per
/// `seed` and hour whenever it is asked for, so that stored actuals agree
/// with the ones stored before. Points after `now` are forecasts issued at
/// `now` truncated to the hour: what the path is expected to do, its last
/// known deviation fading, as a forecaster that knows the profile would
/// say. Empty for a zone without a profile.
pub fn synthetic_points(
    zone: &str,
    tz: Tz,
    start: DateTime<Utc>,
    hours: u32,
    now: DateTime<Utc>,
    seed: u64,
) -> Vec<Point> {
    let Some(profile) = profiles::profile(zone) else {
        return Vec::new();
    };
    let start = truncate_to_hour(start);
    let issued_at = truncate_to_hour(now);
    let hour_of = |t: DateTime<Utc>| t.timestamp().div_euclid(3600);
    let (first, known) = (hour_of(start), hour_of(issued_at));
    // Each signal's deviation, hour by hour from far enough back, up to the last hour known.
    let seeds = [seed, seed.rotate_left(29) ^ 0x5851_F42D_4C95_7F2D];
    let paths = seeds.map(|seed| {
        let mut deviation = 0.0;
        let mut path = Vec::new();
        for h in first.min(known) - MEMORY_H..=(first + i64::from(hours)).min(known) {
            deviation = PERSISTENCE * deviation + (1.0 - PERSISTENCE * PERSISTENCE).sqrt() * innovation(seed, h);
            if h >= first {
                path.push(deviation);
            }
        }
        (path, deviation)
    });
    let mut points = Vec::with_capacity(2 * hours as usize);
    for h in 0..hours {
        let ts = start + TimeDelta::hours(h.into());
        let (day_type, hour) = local_slot(ts, tz);
        let forecast = ts > now;
        let at = first + i64::from(h);
        let deviation = |(path, last): &(Vec<f64>, f64)| match path.get(h as usize) {
            Some(d) if at <= known => *d,
            // Ahead of what is known: the last known deviation, fading.
            _ => last * PERSISTENCE.powi((at - known).clamp(0, i64::from(i32::MAX)) as i32),
        };
        let carbon = value(profile, Signal::Carbon, day_type, hour, deviation(&paths[0]));
        let price = value(profile, Signal::Price, day_type, hour, deviation(&paths[1]));
        for (signal, value, currency) in
            [(Signal::Carbon, carbon, None), (Signal::Price, price, Some(profiles::CURRENCY.to_owned()))]
        {
            debug_assert!(check_value(signal, value).is_ok());
            points.push(Point {
                signal,
                ts,
                value,
                currency,
                basis: Basis::Synthetic,
                resolution_s: 3600,
                forecast,
                issued_at: forecast.then_some(issued_at),
                estimated: false,
            });
        }
    }
    points
}

/// The fresh standard normal noise of hour `h` (since the epoch) on path `seed`.
fn innovation(seed: u64, h: i64) -> f64 {
    standard_normal(&mut StdRng::seed_from_u64(seed ^ (h as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

fn truncate_to_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    t - TimeDelta::seconds(t.timestamp().rem_euclid(3600)) - TimeDelta::nanoseconds(t.nanosecond().into())
}

/// `(0 weekday | 1 weekend, local hour)` of `ts` in `tz`.
fn local_slot(ts: DateTime<Utc>, tz: Tz) -> (usize, usize) {
    let local = ts.with_timezone(&tz);
    let weekend = matches!(local.weekday(), Weekday::Sat | Weekday::Sun);
    (usize::from(weekend), local.hour() as usize)
}

/// The profile's value for the slot, `deviation` standard deviations off,
/// within what `check_value` accepts, rounded to 2 decimals like the traces.
fn value(profile: &Profile, signal: Signal, day_type: usize, hour: usize, deviation: f64) -> f64 {
    let (mean, sd, (low, high)) = match signal {
        Signal::Carbon => (profile.carbon_mean, profile.carbon_sd, (0.0, MAX_CARBON_G_PER_KWH)),
        Signal::Price => (profile.price_mean, profile.price_sd, PRICE_RANGE),
    };
    let v = mean[day_type][hour] + sd[day_type][hour] * deviation;
    ((v * 100.0).round() / 100.0).clamp(low, high)
}

/// Box-Muller.
fn standard_normal(rng: &mut StdRng) -> f64 {
    // 1 - [0, 1) lies in (0, 1], where ln is finite.
    let u = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::super::regions::REGIONS;
    use super::*;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    fn tz(zone: &str) -> Tz {
        REGIONS.iter().find(|r| r.zone == zone).unwrap().timezone.parse().unwrap()
    }

    #[test]
    fn same_seed_same_series_other_seed_other_series() {
        let (start, now) = (at(2025, 3, 3, 0, 0), at(2025, 3, 5, 0, 0));
        let a = synthetic_points("GB", tz("GB"), start, 96, now, 7);
        assert_eq!(a, synthetic_points("GB", tz("GB"), start, 96, now, 7));
        assert_ne!(a, synthetic_points("GB", tz("GB"), start, 96, now, 8));
    }

    #[test]
    fn every_point_is_acceptable() {
        let (start, now) = (at(2025, 3, 3, 0, 0), at(2025, 3, 10, 0, 0));
        for r in REGIONS {
            for seed in 0..5 {
                let points = synthetic_points(&r.zone, tz(&r.zone), start, 14 * 24, now, seed);
                assert_eq!(points.len(), 2 * 14 * 24);
                for p in points {
                    assert_eq!(check_value(p.signal, p.value), Ok(()), "{} {}", r.zone, p.ts);
                    assert_eq!(p.basis, Basis::Synthetic);
                    assert_eq!(p.resolution_s, 3600);
                    assert!(!p.estimated);
                    let currency = (p.signal == Signal::Price).then(|| profiles::CURRENCY.to_owned());
                    assert_eq!(p.currency, currency);
                }
            }
        }
    }

    #[test]
    fn points_after_now_are_forecasts_issued_at_the_hour() {
        let (start, now) = (at(2025, 3, 3, 0, 17), at(2025, 3, 4, 6, 40));
        let points = synthetic_points("DE-LU", tz("DE-LU"), start, 48, now, 1);
        assert_eq!(points.first().unwrap().ts, at(2025, 3, 3, 0, 0));
        for p in &points {
            assert_eq!(p.ts.timestamp() % 3600, 0);
            if p.ts > now {
                assert!(p.forecast);
                assert_eq!(p.issued_at, Some(at(2025, 3, 4, 6, 0)));
            } else {
                assert!(!p.forecast);
                assert_eq!(p.issued_at, None);
            }
        }
        let first_forecast = points.iter().find(|p| p.forecast).unwrap();
        assert_eq!(first_forecast.ts, at(2025, 3, 4, 7, 0));
    }

    #[test]
    fn actuals_agree_whenever_stored_and_forecasts_are_their_expectation() {
        let profile = profiles::profile("GB").unwrap();
        let (start, now) = (at(2025, 3, 3, 0, 0), at(2025, 3, 4, 12, 30));
        let actual =
            |points: &[Point], ts| points.iter().find(|p| p.ts == ts && p.signal == Signal::Price).unwrap().value;
        let week = synthetic_points("GB", tz("GB"), start, 7 * 24, at(2025, 3, 10, 0, 0), 3);
        let then = synthetic_points("GB", tz("GB"), start, 72, now, 3);
        for h in [0, 5, 30, 36] {
            let ts = start + TimeDelta::hours(h);
            assert_eq!(actual(&week, ts), actual(&then, ts), "hour {h}: the same actual, stored a week apart");
        }
        // A day ahead, the forecast is the profile's mean (the deviation has faded to a few percent of itself).
        let ahead = at(2025, 3, 5, 13, 0);
        let (day_type, hour) = local_slot(ahead, tz("GB"));
        let expected = profile.price_mean[day_type][hour];
        assert!((actual(&then, ahead) - expected).abs() <= 0.2 * profile.price_sd[day_type][hour], "{expected}");
    }

    #[test]
    fn a_week_of_carbon_averages_near_the_profile() {
        let (start, now) = (at(2025, 6, 2, 0, 0), at(2025, 6, 9, 0, 0));
        let profile = profiles::profile("DE-LU").unwrap();
        let carbon: Vec<Point> = synthetic_points("DE-LU", tz("DE-LU"), start, 7 * 24, now, 42)
            .into_iter()
            .filter(|p| p.signal == Signal::Carbon)
            .collect();
        let mean = |values: Vec<f64>| values.iter().sum::<f64>() / values.len() as f64;
        let generated = mean(carbon.iter().map(|p| p.value).collect());
        let expected = mean(
            carbon
                .iter()
                .map(|p| {
                    let (day_type, hour) = local_slot(p.ts, tz("DE-LU"));
                    profile.carbon_mean[day_type][hour]
                })
                .collect(),
        );
        assert!((generated - expected).abs() <= 0.25 * expected, "{generated} vs {expected}");
    }

    #[test]
    fn every_region_has_a_profile_in_region_order() {
        for (r, p) in REGIONS.iter().zip(profiles::PROFILES.iter()) {
            assert_eq!(p.zone, r.zone);
            assert_eq!(profiles::profile(&r.zone).map(|p| p.zone), Some(r.zone.as_ref()));
        }
        assert_eq!(profiles::PROFILES.len(), REGIONS.len());
        assert!(synthetic_points("XX", chrono_tz::UTC, at(2025, 1, 1, 0, 0), 24, at(2025, 1, 1, 0, 0), 0).is_empty());
    }

    #[test]
    fn local_hour_and_day_type_follow_the_region() {
        // Saturday 2025-03-01 23:00 UTC is Sunday 08:00 in Tokyo and Saturday 15:00 in Los Angeles.
        let ts = at(2025, 3, 1, 23, 0);
        assert_eq!(local_slot(ts, tz("JP-TK")), (1, 8));
        assert_eq!(local_slot(ts, tz("US-CAL-CISO")), (1, 15));
        assert_eq!(local_slot(at(2025, 3, 2, 23, 0), tz("JP-TK")), (0, 8));
    }
}
