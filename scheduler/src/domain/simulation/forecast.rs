//! What the policies but the oracle are shown of the hours ahead: the
//! forecasts a replay offers (persistence, our own from history alone,
//! the actuals with noise, the actuals), and the view of a site's signals
//! each gives at an hour.

use std::str::FromStr;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::{Scenario, ScenarioError};
use crate::domain::cost::SlotSignal;
use crate::domain::planner::inputs::persist;

/// What the policies (but the oracle) are shown of the hours ahead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Forecast {
    /// The same hour of the day before, as the plans service fills a gap.
    Persistence,
    /// Our own forecast from past values only ([`from_history`]): the
    /// median of the same hour over the last week, plus the last hours'
    /// departure from it, fading with the lead.
    History,
    /// The actual value times 1 + SIGMA x a standard normal draw, per site,
    /// signal, hour and lead (seeded: every policy is shown the same).
    Noisy { sigma: f64 },
    /// The actual future.
    Perfect,
}

/// Largest SIGMA `noisy:SIGMA` accepts.
pub const MAX_NOISE_SIGMA: f64 = 2.0;

impl FromStr for Forecast {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "persistence" => Ok(Forecast::Persistence),
            "history" => Ok(Forecast::History),
            "perfect" => Ok(Forecast::Perfect),
            _ => {
                let sigma = text.strip_prefix("noisy:").and_then(|s| s.parse::<f64>().ok()).ok_or_else(|| {
                    format!("'{text}' is not a forecast: persistence, history, perfect or noisy:SIGMA")
                })?;
                if !(0.0..=MAX_NOISE_SIGMA).contains(&sigma) {
                    return Err(format!("noisy:{sigma}: SIGMA must be between 0 and {MAX_NOISE_SIGMA}"));
                }
                Ok(Forecast::Noisy { sigma })
            }
        }
    }
}

impl std::fmt::Display for Forecast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Forecast::Persistence => write!(f, "persistence"),
            Forecast::History => write!(f, "history"),
            Forecast::Perfect => write!(f, "perfect"),
            Forecast::Noisy { sigma } => write!(f, "noisy:{sigma}"),
        }
    }
}

impl Forecast {
    /// Hours of traces the forecast needs before the first hour simulated:
    /// persistence looks a day back, and so does history at least (it
    /// uses up to a week where the traces hold it).
    pub fn history_h(self) -> usize {
        match self {
            Forecast::Persistence | Forecast::History => 24,
            Forecast::Noisy { .. } | Forecast::Perfect => 0,
        }
    }
}

/// The signals of `site` for `slots` hours from `h` as `forecast` shows them.
pub(super) fn forecast_view(
    scenario: &Scenario,
    forecast: Forecast,
    site: usize,
    h: usize,
    slots: usize,
) -> Result<Vec<SlotSignal>, ScenarioError> {
    let actual = &scenario.actuals[site];
    match forecast {
        Forecast::Perfect => Ok(actual[h..h + slots].to_vec()),
        Forecast::Persistence => persist(slots, |slot| {
            let at = h as i64 + slot;
            (slot < 0 && at >= 0).then(|| actual[at as usize])
        })
        .map_err(|_| ScenarioError(format!("no history for a persistence forecast at hour {h}"))),
        Forecast::History => {
            let past = &actual[..h];
            let series = |value: fn(&SlotSignal) -> f64| {
                from_history(&past.iter().map(value).collect::<Vec<_>>(), slots)
                    .ok_or_else(|| ScenarioError(format!("no day of history for the history forecast at hour {h}")))
            };
            let (price, carbon) = (series(|a| a.price_per_mwh)?, series(|a| a.carbon_g_per_kwh)?);
            Ok(price
                .into_iter()
                .zip(carbon)
                .map(|(price_per_mwh, carbon)| SlotSignal { price_per_mwh, carbon_g_per_kwh: carbon.max(0.0) })
                .collect())
        }
        Forecast::Noisy { sigma } => {
            let mut rng = StdRng::seed_from_u64(
                scenario.seed ^ (h as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (site as u64).rotate_left(32),
            );
            let mut noisy = |value: f64| {
                let z: f64 = StandardNormal.sample(&mut rng);
                value * (1.0 + sigma * z).max(0.0)
            };
            Ok(actual[h..h + slots]
                .iter()
                .map(|a| SlotSignal {
                    price_per_mwh: noisy(a.price_per_mwh),
                    carbon_g_per_kwh: noisy(a.carbon_g_per_kwh),
                })
                .collect())
        }
    }
}

/// Days of the same hour the history forecast takes the median of.
const HISTORY_DAYS: usize = 7;
/// Recent hours whose departure from the weekly profile the history forecast carries forward.
const RECENT_H: usize = 3;
/// How fast that departure fades with the lead, hours.
const FADE_H: f64 = 6.0;

/// A forecast of the `slots` hours after `past` (hourly values, oldest
/// first) from `past` alone; `None` with less than a day of it. Each hour
/// ahead is the median of the same hour on up to [`HISTORY_DAYS`] earlier
/// days, so that one day's spike is not repeated the next, plus how far
/// the last [`RECENT_H`] hours stood from their own such median (the
/// level now), fading with the lead.
pub fn from_history(past: &[f64], slots: usize) -> Option<Vec<f64>> {
    let now = past.len();
    if now < 24 {
        return None;
    }
    // The median of the same hour as `t` on the days before it, among those known.
    let profile = |t: usize| {
        let mut same_hour: Vec<f64> = (1..)
            .map(|day| t.checked_sub(24 * day))
            .map_while(|i| i)
            .filter(|&i| i < now)
            .take(HISTORY_DAYS)
            .map(|i| past[i])
            .collect();
        same_hour.sort_by(f64::total_cmp);
        let n = same_hour.len();
        (n > 0).then(|| if n % 2 == 1 { same_hour[n / 2] } else { (same_hour[n / 2 - 1] + same_hour[n / 2]) / 2.0 })
    };
    let recent: Vec<f64> = (now.saturating_sub(RECENT_H)..now).filter_map(|t| Some(past[t] - profile(t)?)).collect();
    let level = if recent.is_empty() { 0.0 } else { recent.iter().sum::<f64>() / recent.len() as f64 };
    (0..slots).map(|lead| Some(profile(now + lead)? + level * (-((lead + 1) as f64) / FADE_H).exp())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::simulation::tests::scenario;

    #[test]
    fn policies_see_only_what_they_would_live() {
        let actual: Vec<SlotSignal> =
            (0..72).map(|h| SlotSignal { price_per_mwh: f64::from(h), carbon_g_per_kwh: 1.0 }).collect();
        let mut s = scenario(0.0, 0.001, vec![actual.clone(), actual]);
        let price = |v: Vec<SlotSignal>| v.iter().map(|x| x.price_per_mwh).collect::<Vec<_>>();
        // Persistence at hour 30: yesterday's hours 6, 7, ...
        assert_eq!(price(forecast_view(&s, Forecast::Persistence, 0, 30, 3).unwrap()), [6.0, 7.0, 8.0]);
        assert_eq!(price(forecast_view(&s, Forecast::Perfect, 0, 30, 2).unwrap()), [30.0, 31.0]);
        let noisy = forecast_view(&s, Forecast::Noisy { sigma: 0.2 }, 0, 30, 24).unwrap();
        assert_eq!(noisy, forecast_view(&s, Forecast::Noisy { sigma: 0.2 }, 0, 30, 24).unwrap(), "seeded");
        assert_ne!(price(noisy), price(forecast_view(&s, Forecast::Perfect, 0, 30, 24).unwrap()));
        s.from = 10;
        assert!(s.check().unwrap_err().0.contains("a persistence forecast needs 24 hours"));
    }

    #[test]
    fn the_history_forecast_repeats_no_spike_and_follows_the_level() {
        // A week of a daily shape (hour of the day), with a spike yesterday at hour 20.
        let day = |d: usize| (0..24).map(move |hour| if d == 6 && hour == 20 { 2000.0 } else { hour as f64 });
        let week: Vec<f64> = (0..7).flat_map(day).collect();
        let ahead = from_history(&week, 24).unwrap();
        assert_eq!(ahead[20], 20.0, "the spike is not repeated");
        assert_eq!(ahead[5], 5.0, "the daily shape is kept");
        let persistence = persist(24, |slot| (slot < 0).then(|| week[(week.len() as i64 + slot) as usize])).unwrap();
        assert_eq!(persistence[20], 2000.0, "where persistence repeats it");
        // The last hours stood 10 above their usual: the next hour is about that much higher, later ones less.
        let mut raised = week.clone();
        raised.iter_mut().rev().take(3).for_each(|v| *v += 10.0);
        let ahead = from_history(&raised, 24).unwrap();
        assert!((ahead[0] - (0.0 + 10.0 * (-1.0f64 / 6.0).exp())).abs() < 1e-9, "{}", ahead[0]);
        assert!(ahead[23] - 23.0 < 0.2);
        assert_eq!(from_history(&week[..23], 1), None, "less than a day of history");
    }
}
