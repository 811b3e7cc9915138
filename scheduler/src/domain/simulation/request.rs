//! A `/v1/simulations` request checked, as every request is, into a
//! [`Valid`] one; the policies and forecast it names are read from that.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::SimulationRequest;

use super::{Forecast, Policy};
use crate::domain::inventory::check_range;
use crate::domain::planner::inputs::check_horizon;
use crate::domain::{Valid, ValidationError};

/// Most days one simulation through the API may replay.
pub const MAX_WINDOW_DAYS: i64 = 62;

/// Checks a simulation request against `now`: a past window of whole
/// hours, at most [`MAX_WINDOW_DAYS`] long; known policies and forecast;
/// a horizon of 1 to 168 hours; a finite carbon price.
pub fn parse_request(
    request: SimulationRequest,
    now: DateTime<Utc>,
) -> Result<Valid<SimulationRequest>, ValidationError> {
    for (field, t) in [("from", request.from), ("to", request.to)] {
        if t.timestamp() % 3600 != 0 || t.timestamp_subsec_nanos() != 0 {
            return Err(ValidationError::new(field, "must lie on the hour"));
        }
    }
    if request.to <= request.from {
        return Err(ValidationError::new("to", "must come after from"));
    }
    if request.to > now {
        return Err(ValidationError::new("to", "must lie in the past: a simulation replays stored signals"));
    }
    if request.to - request.from > chrono::Duration::days(MAX_WINDOW_DAYS) {
        return Err(ValidationError::new("to", format!("the window may be at most {MAX_WINDOW_DAYS} days")));
    }
    if request.policies.is_empty() || request.policies.len() > 4 {
        return Err(ValidationError::new("policies", "name one to four of static, greedy, planner, oracle"));
    }
    if let Some(i) = (1..request.policies.len()).find(|&i| request.policies[..i].contains(&request.policies[i])) {
        return Err(ValidationError::new(format!("policies[{i}]"), "is named twice"));
    }
    policies(&request)?;
    forecast(&request)?;
    check_horizon("horizon_h", request.horizon_h)?;
    check_range("carbon_price_per_tonne", request.carbon_price_per_tonne, 0.0, 100_000.0)?;
    Ok(Valid(request))
}

/// The policies a request names, each checked.
fn policies(request: &SimulationRequest) -> Result<Vec<Policy>, ValidationError> {
    request
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| p.parse::<Policy>().map_err(|e| ValidationError::new(format!("policies[{i}]"), e)))
        .collect()
}

/// The forecast a request names, checked.
fn forecast(request: &SimulationRequest) -> Result<Forecast, ValidationError> {
    request.forecast.parse::<Forecast>().map_err(|e| ValidationError::new("forecast", e))
}

impl Valid<SimulationRequest> {
    /// The policies it names, in its order.
    pub fn policies(&self) -> Vec<Policy> {
        policies(self).expect("parse_request checked the policies")
    }

    /// The forecast it names.
    pub fn forecast(&self) -> Forecast {
        forecast(self).expect("parse_request checked the forecast")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_ask_for_a_past_window_of_whole_hours() {
        let now: DateTime<Utc> = "2026-12-01T10:30:00Z".parse().unwrap();
        let request = |from: &str, to: &str| SimulationRequest {
            from: from.parse().unwrap(),
            to: to.parse().unwrap(),
            policies: vec!["planner".into(), "greedy".into()],
            forecast: "noisy:0.1".into(),
            horizon_h: 24,
            mode: Default::default(),
            carbon_price_per_tonne: 100.0,
            seed: 0,
        };
        let asked = parse_request(request("2026-11-20T00:00:00Z", "2026-11-27T00:00:00Z"), now).unwrap();
        assert_eq!(
            (asked.policies(), asked.forecast()),
            (vec![Policy::Planner, Policy::Greedy], Forecast::Noisy { sigma: 0.1 })
        );
        let field = |r| parse_request(r, now).unwrap_err().field;
        assert_eq!(field(request("2026-11-20T00:30:00Z", "2026-11-27T00:00:00Z")), "from");
        assert_eq!(field(request("2026-11-27T00:00:00Z", "2026-11-20T00:00:00Z")), "to");
        assert_eq!(field(request("2026-11-30T00:00:00Z", "2026-12-01T11:00:00Z")), "to", "in the future");
        assert_eq!(field(request("2026-08-01T00:00:00Z", "2026-11-27T00:00:00Z")), "to", "too long");
        let mut bad = request("2026-11-20T00:00:00Z", "2026-11-27T00:00:00Z");
        bad.policies.push("best".into());
        assert_eq!(field(bad), "policies[2]");
        let mut bad = request("2026-11-20T00:00:00Z", "2026-11-27T00:00:00Z");
        bad.forecast = "crystal-ball".into();
        assert_eq!(field(bad), "forecast");
    }
}
