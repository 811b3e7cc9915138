//! What makes a feed acceptable, and when one counts as stale.

use chrono::{DateTime, Duration, Utc};
use heliotrope_api_spec::{FeedSpec, Provider, Signal};

use super::inventory::check_name;
use super::{Valid, ValidationError};

/// Feeds may read only variables with this prefix: an admin must not be
/// able to send the database URL or the admin token to a host of their
/// choosing by naming it as a feed's credential.
pub const CREDENTIAL_ENV_PREFIX: &str = "HELIOTROPE_FEED_";

/// The provider's real API root, used when a feed names none.
pub fn default_base_url(provider: Provider) -> &'static str {
    match provider {
        Provider::Electricitymaps => "https://api.electricitymaps.com",
        Provider::Watttime => "https://api.watttime.org",
        Provider::GbCarbonIntensity => "https://api.carbonintensity.org.uk",
        Provider::Entsoe => "https://web-api.tp.entsoe.eu",
    }
}

/// Which signals a provider serves.
fn serves(provider: Provider, signal: Signal) -> bool {
    match provider {
        Provider::Electricitymaps => true,
        Provider::Watttime | Provider::GbCarbonIntensity => signal == Signal::Carbon,
        Provider::Entsoe => signal == Signal::Price,
    }
}

pub fn parse_feed(mut spec: FeedSpec) -> Result<Valid<FeedSpec>, ValidationError> {
    check_name("site", &spec.site)?;
    if !serves(spec.provider, spec.signal) {
        return Err(ValidationError::new("signal", "this provider does not serve that signal"));
    }
    let area_ok = match spec.provider {
        Provider::GbCarbonIntensity => {
            spec.area == "national" || spec.area.parse::<u8>().is_ok_and(|id| (1..=17).contains(&id))
        }
        // Energy Identification Codes are 16 characters: digits, capitals and '-'.
        Provider::Entsoe => {
            spec.area.len() == 16
                && spec.area.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase() || b == b'-')
        }
        Provider::Electricitymaps | Provider::Watttime => check_name("area", &spec.area).is_ok(),
    };
    if !area_ok {
        let expected = match spec.provider {
            Provider::GbCarbonIntensity => "'national' or a region id from 1 to 17",
            Provider::Entsoe => "a 16-character bidding-zone EIC such as 10Y1001A1001A82H",
            _ => "a zone or region id of letters, digits, '.', '_' and '-'",
        };
        return Err(ValidationError::new("area", format!("must be {expected}")));
    }
    if let Some(base_url) = &spec.base_url {
        let parsed = url::Url::parse(base_url).map_err(|e| ValidationError::new("base_url", e.to_string()))?;
        // Plain http only to this host itself (a local fake in tests; `feeds::reach` refuses it otherwise).
        let loopback = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name == "localhost",
            None => false,
        };
        let ok = (parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback))
            && parsed.host().is_some()
            && parsed.username().is_empty()
            && parsed.password().is_none()
            && parsed.query().is_none()
            && parsed.fragment().is_none()
            && parsed.as_str().len() <= 256;
        if !ok {
            return Err(ValidationError::new(
                "base_url",
                "must be an https URL with a host and no user, password, query or fragment, at most 256 characters",
            ));
        }
        // Never a provider: unspecified, multicast and link-local (the cloud metadata service) addresses.
        let never = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_unspecified() || ip.is_multicast() || ip.is_link_local(),
            Some(url::Host::Ipv6(ip)) => {
                ip.is_unspecified() || ip.is_multicast() || (ip.segments()[0] & 0xffc0) == 0xfe80
            }
            _ => false,
        };
        if never {
            return Err(ValidationError::new("base_url", "is no address a provider could have"));
        }
        // Stored as parsed: percent-encoded, so nothing a database refuses gets through.
        spec.base_url = Some(parsed.as_str().trim_end_matches('/').to_owned());
    }
    match &spec.credential_env {
        Some(name) => {
            let ok = name.len() > CREDENTIAL_ENV_PREFIX.len()
                && name.len() <= 128
                && name.starts_with(CREDENTIAL_ENV_PREFIX)
                && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(ValidationError::new(
                    "credential_env",
                    format!(
                        "must be the NAME of an environment variable starting with {CREDENTIAL_ENV_PREFIX} \
                         (A-Z, 0-9, _), never the secret"
                    ),
                ));
            }
        }
        None if spec.provider != Provider::GbCarbonIntensity => {
            return Err(ValidationError::new("credential_env", "this provider needs credentials"));
        }
        None => {}
    }
    if !(60..=86_400).contains(&spec.poll_interval_s) {
        return Err(ValidationError::new("poll_interval_s", "must be between 60 and 86400"));
    }
    Ok(Valid(spec))
}

/// A feed is stale when no new data has arrived for three poll intervals
/// (counted from its creation until the first data).
pub fn is_stale(
    last_new_data_at: Option<DateTime<Utc>>,
    since: DateTime<Utc>,
    poll_interval_s: u32,
    now: DateTime<Utc>,
) -> bool {
    now - last_new_data_at.unwrap_or(since) > Duration::seconds(3 * i64::from(poll_interval_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(provider: Provider, signal: Signal, area: &str) -> FeedSpec {
        FeedSpec {
            site: "DE-LU".into(),
            provider,
            signal,
            area: area.into(),
            base_url: None,
            credential_env: Some("HELIOTROPE_FEED_EM".into()),
            poll_interval_s: 900,
            enabled: true,
        }
    }

    fn field(spec: FeedSpec) -> String {
        parse_feed(spec).unwrap_err().field
    }

    #[test]
    fn providers_serve_their_signals_and_areas() {
        assert!(parse_feed(spec(Provider::Electricitymaps, Signal::Price, "DE")).is_ok());
        assert!(parse_feed(spec(Provider::Entsoe, Signal::Price, "10Y1001A1001A82H")).is_ok());
        assert!(parse_feed(spec(Provider::GbCarbonIntensity, Signal::Carbon, "13")).is_ok());
        assert_eq!(field(spec(Provider::Watttime, Signal::Price, "CAISO_NORTH")), "signal");
        assert_eq!(field(spec(Provider::Entsoe, Signal::Carbon, "10Y1001A1001A82H")), "signal");
        assert_eq!(field(spec(Provider::GbCarbonIntensity, Signal::Carbon, "18")), "area");
        assert_eq!(field(spec(Provider::Entsoe, Signal::Price, "DE-LU")), "area");
    }

    #[test]
    fn secrets_and_urls() {
        let with_secret = FeedSpec {
            credential_env: Some("sk-live-123".into()),
            ..spec(Provider::Watttime, Signal::Carbon, "CAISO_NORTH")
        };
        assert_eq!(field(with_secret), "credential_env");
        let missing = FeedSpec { credential_env: None, ..spec(Provider::Watttime, Signal::Carbon, "CAISO_NORTH") };
        assert_eq!(field(missing), "credential_env");
        let gb = FeedSpec { credential_env: None, ..spec(Provider::GbCarbonIntensity, Signal::Carbon, "national") };
        assert!(parse_feed(gb).is_ok());
        let ftp =
            FeedSpec { base_url: Some("ftp://x".into()), ..spec(Provider::Electricitymaps, Signal::Carbon, "DE") };
        assert_eq!(field(ftp), "base_url");
        let em = |url: &str| FeedSpec {
            base_url: Some(url.into()),
            ..spec(Provider::Electricitymaps, Signal::Carbon, "DE")
        };
        for refused in [
            "http://api.electricitymap.org",
            "https://user:pw@api.electricitymap.org",
            "https://api.electricitymap.org/#",
            "https://169.254.169.254",
            "https://[fe80::1]",
            "https://0.0.0.0",
            "http://10.0.0.1",
        ] {
            assert_eq!(field(em(refused)), "base_url", "{refused}");
        }
        for allowed in
            ["https://api.electricitymap.org", "http://127.0.0.1:8080", "http://[::1]:80", "https://10.0.0.1"]
        {
            assert!(parse_feed(em(allowed)).is_ok(), "{allowed}: the reach decides at connect time");
        }
    }

    #[test]
    fn staleness() {
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        assert!(!is_stale(None, t0, 60, t0 + Duration::seconds(180)));
        assert!(is_stale(None, t0, 60, t0 + Duration::seconds(181)));
        assert!(!is_stale(Some(t0 + Duration::seconds(100)), t0, 60, t0 + Duration::seconds(200)));
    }
}
