//! WattTime API v3: marginal emissions (`co2_moer`). `GET /login` with
//! basic auth gives a bearer token valid 30 minutes, which is cached and
//! renewed before it expires (and at once if the API refuses it). Values
//! are lbs CO2 per MWh in 5-minute points; a bad login may come back as an
//! nginx HTML page rather than JSON.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Basis, Signal};
use reqwest::StatusCode;
use serde::Deserialize;

use super::{parse_json, send, FeedError, Span};
use crate::domain::signals::Point;

/// Pounds per kilogram: lbs/MWh / 2.20462 = kg/MWh = g/kWh.
pub const LBS_PER_KG: f64 = 2.20462;
/// Tokens are renewed when this old (they last 30 minutes).
pub const TOKEN_RENEW_AFTER: Duration = Duration::from_secs(25 * 60);

/// Login tokens by (API root, user), with when to renew each.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl TokenCache {
    fn get(&self, key: &(String, String)) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(key).filter(|(_, renew_at)| Instant::now() < *renew_at).map(|(t, _)| t.clone())
    }

    fn put(&self, key: (String, String), token: String) {
        let renew_at = Instant::now() + TOKEN_RENEW_AFTER;
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (token, renew_at));
    }

    fn forget(&self, key: &(String, String)) {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

#[derive(Deserialize)]
struct DataPoint {
    point_time: DateTime<Utc>,
    value: f64,
}

#[derive(Deserialize)]
struct Meta {
    units: String,
    data_point_period_seconds: u32,
    #[serde(default)]
    generated_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct Series {
    data: Vec<DataPoint>,
    meta: Meta,
}

/// Points of a `/v3/historical` (actuals) or `/v3/forecast` (forecast) reply.
pub fn parse_series(body: &str, forecast: bool) -> Result<Vec<Point>, FeedError> {
    let series: Series = parse_json("watttime", body)?;
    if series.meta.units != "lbs_co2_per_mwh" {
        return Err(FeedError::Shape(format!(
            "watttime: field 'meta.units': expected lbs_co2_per_mwh, got '{}'",
            series.meta.units
        )));
    }
    let issued_at = match (forecast, series.meta.generated_at) {
        (false, _) => None,
        (true, Some(at)) => Some(at),
        (true, None) => {
            return Err(FeedError::Shape("watttime: field 'meta.generated_at' is missing from a forecast".into()))
        }
    };
    Ok(series
        .data
        .into_iter()
        .map(|p| Point {
            signal: Signal::Carbon,
            ts: p.point_time,
            value: p.value / LBS_PER_KG,
            currency: None,
            basis: Basis::Marginal,
            resolution_s: series.meta.data_point_period_seconds,
            forecast,
            issued_at,
            estimated: false,
        })
        .collect())
}

async fn login(client: &reqwest::Client, base: &str, user: &str, password: &str) -> Result<String, FeedError> {
    let body =
        send(client.get(format!("{base}/login")).basic_auth(user, Some(password))).await.map_err(|e| match e {
            FeedError::Status { status, message }
                if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED =>
            {
                FeedError::Credentials(format!("WattTime login refused (HTTP {status}): {message}"))
            }
            e => e,
        })?;
    Ok(parse_json::<Login>("watttime", &body)?.token)
}

pub async fn fetch(
    client: &reqwest::Client,
    tokens: &TokenCache,
    base: &str,
    credential: &str,
    region: &str,
    span: Span,
) -> Result<Vec<Point>, FeedError> {
    let (user, password) = credential
        .split_once(':')
        .ok_or_else(|| FeedError::Credentials("WattTime needs user:password in the credential variable".into()))?;
    let key = (base.to_owned(), user.to_owned());
    let ((start, end), forecasts) = match span {
        Span::Now(now) => (((now - chrono::Duration::hours(24)), now), true),
        Span::Past { from, to } => ((from, to), false),
    };
    let (start, end) = (start.to_rfc3339(), end.to_rfc3339());
    let historical = [("region", region), ("signal_type", "co2_moer"), ("start", &start), ("end", &end)];
    let forecast = [("region", region), ("signal_type", "co2_moer"), ("horizon_hours", "24")];
    // A cached token may have been revoked early: one fresh login, then give up.
    for attempt in 0..2 {
        let token = match tokens.get(&key) {
            Some(token) => token,
            None => {
                let token = login(client, base, user, password).await?;
                tokens.put(key.clone(), token.clone());
                token
            }
        };
        let get = |path: &str, query: &[(&str, &str)]| {
            client.get(format!("{base}/v3/{path}")).query(query).bearer_auth(&token)
        };
        let result = async {
            let mut points = parse_series(&send(get("historical", &historical)).await?, false)?;
            if forecasts {
                points.extend(parse_series(&send(get("forecast", &forecast)).await?, true)?);
            }
            Ok(points)
        }
        .await;
        match result {
            Err(FeedError::Status { status: StatusCode::UNAUTHORIZED, .. }) if attempt == 0 => tokens.forget(&key),
            other => return other,
        }
    }
    Err(FeedError::Credentials("WattTime refused a fresh token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_lbs_per_mwh_to_grams_per_kwh() {
        let body = r#"{"data":[{"point_time":"2024-06-18T18:40:00+00:00","value":870.0},{"point_time":"2024-06-18T18:45:00+00:00","value":860.0}],
            "meta":{"data_point_period_seconds":300,"region":"CAISO_NORTH","signal_type":"co2_moer","model":{"date":"2023-03-01"},
            "units":"lbs_co2_per_mwh","generated_at_period_seconds":300,"generated_at":"2024-06-18T18:40:00+00:00","warnings":[]}}"#;
        let points = parse_series(body, true).unwrap();
        assert_eq!(points.len(), 2);
        assert!((points[0].value - 870.0 / 2.20462).abs() < 1e-9);
        assert_eq!((points[0].resolution_s, points[0].basis), (300, Basis::Marginal));
        assert_eq!(points[0].issued_at, Some("2024-06-18T18:40:00Z".parse().unwrap()));
    }

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        let cache = TokenCache::default();
        let key = ("http://wt".to_owned(), "user".to_owned());
        cache.put(key.clone(), "fresh".into());
        assert_eq!(cache.get(&key).as_deref(), Some("fresh"));
        // Renewal is due 25 minutes after login (of the token's 30).
        let (_, renew_at) = cache.tokens.lock().unwrap()[&key].clone();
        let due_in = renew_at - Instant::now();
        assert!(due_in > TOKEN_RENEW_AFTER - Duration::from_secs(5) && due_in <= TOKEN_RENEW_AFTER, "{due_in:?}");
        // Once due, the token is not used again: the next fetch logs in.
        cache.tokens.lock().unwrap().insert(key.clone(), ("old".into(), Instant::now()));
        assert_eq!(cache.get(&key), None);
    }

    #[test]
    fn other_units_are_refused_by_name() {
        let body = r#"{"data":[],"meta":{"data_point_period_seconds":300,"units":"percentile"}}"#;
        assert!(parse_series(body, false).unwrap_err().to_string().contains("meta.units"));
    }
}
