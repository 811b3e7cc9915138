//! Provider feeds: fetching carbon and price from the providers operators
//! use, each with its own auth, units and quirks, and polling them.
//!
//! Each provider module has pure `parse_*` functions (unit-tested against
//! the providers' documented payloads) and an async `fetch` that does the
//! HTTP. [`poller`] runs the fetches on their intervals, validates what
//! comes back with the same rules as a push, and stores it.

pub mod backfill;
pub mod electricitymaps;
pub mod entsoe;
pub mod gb;
pub mod poller;
pub mod reach;
pub mod watttime;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Feed, Provider};
use reqwest::{RequestBuilder, StatusCode};

use self::reach::{FeedReach, ReachResolver};
use crate::domain::signals::Point;

/// Why a fetch brought nothing.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// 429: try again no sooner than this.
    #[error("rate limited (HTTP 429); retrying after {}s", retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    /// Missing or refused credentials: retrying will not help until someone fixes them.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The provider answered with an error status.
    #[error("HTTP {status}: {message}")]
    Status { status: StatusCode, message: String },
    /// The payload is not what the provider documents; names the field.
    #[error("unexpected payload: {0}")]
    Shape(String),
    /// The provider has no data for the area and period.
    #[error("no data: {0}")]
    NoData(String),
    /// The provider could not be reached.
    #[error("unreachable: {0}")]
    Transport(String),
    /// The feed's URL is one feeds may not reach (see `reach`).
    #[error("refused: {0}")]
    Refused(String),
}

impl FeedError {
    /// Whether the next poll should back off (a fault that may pass) rather than keep its interval.
    pub fn is_transient(&self) -> bool {
        match self {
            FeedError::Transport(_) | FeedError::RateLimited { .. } => true,
            FeedError::Status { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

/// Shared by every fetch: the HTTP client, where it may reach, and WattTime's login tokens.
pub struct Fetcher {
    client: reqwest::Client,
    reach: Arc<FeedReach>,
    watttime_tokens: watttime::TokenCache,
}

impl Fetcher {
    /// A fetcher that reaches what `reach` permits, follows no redirect
    /// (credentials go to the host named and no other) and sends no
    /// request to an address the reach refuses.
    pub fn new(reach: FeedReach) -> Result<Fetcher, FeedError> {
        let reach = Arc::new(reach);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(ReachResolver(reach.clone())))
            .build()
            .map_err(transport)?;
        Ok(Fetcher { client, reach, watttime_tokens: Default::default() })
    }

    /// Fetches what `feed` offers for `span`, as points (not yet validated).
    pub async fn fetch(&self, feed: &Feed, span: Span) -> Result<Vec<Point>, FeedError> {
        let url = url::Url::parse(&feed.base_url).map_err(|e| FeedError::Refused(format!("base_url: {e}")))?;
        if let Some(refused) = self.reach.refuses(&url) {
            return Err(FeedError::Refused(refused));
        }
        let base = feed.base_url.trim_end_matches('/');
        match feed.provider {
            Provider::Electricitymaps => {
                electricitymaps::fetch(&self.client, base, &credential(feed)?, &feed.area, feed.signal, span).await
            }
            Provider::Watttime => {
                watttime::fetch(&self.client, &self.watttime_tokens, base, &credential(feed)?, &feed.area, span).await
            }
            Provider::GbCarbonIntensity => gb::fetch(&self.client, base, &feed.area, span).await,
            Provider::Entsoe => entsoe::fetch(&self.client, base, &credential(feed)?, &feed.area, span).await,
        }
    }
}

/// What a fetch asks a provider for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Span {
    /// What a poll at `now` takes: the recent past, the newest value and the forecast.
    Now(DateTime<Utc>),
    /// The actuals from `from` to `to`, through the provider's history
    /// (at most [`history_window`] at once).
    Past { from: DateTime<Utc>, to: DateTime<Utc> },
}

/// The longest span one history request to `provider` may cover, and the
/// pause between two requests that keeps within its rate limits.
pub fn history_window(provider: Provider) -> (chrono::TimeDelta, Duration) {
    let days = chrono::TimeDelta::days;
    match provider {
        // past-range serves at most 10 days of hourly values; no published rate, so one request a second.
        Provider::Electricitymaps => (days(10), Duration::from_secs(1)),
        // 3,000 requests per 5 minutes; a historical query spans at most 32 days.
        Provider::Watttime => (days(31), Duration::from_millis(200)),
        // /intensity/{from}/{to} spans at most 14 days; a public API, asked gently.
        Provider::GbCarbonIntensity => (days(14), Duration::from_secs(1)),
        // A44 spans up to a year; 400 requests a minute.
        Provider::Entsoe => (days(31), Duration::from_millis(200)),
    }
}

/// The secret named by the feed's `credential_env`, read when needed.
fn credential(feed: &Feed) -> Result<String, FeedError> {
    let name = feed.credential_env.as_deref().ok_or_else(|| FeedError::Credentials("no credential_env set".into()))?;
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| FeedError::Credentials(format!("environment variable {name} is not set")))
}

/// Largest reply read from a provider.
const MAX_REPLY_BYTES: usize = 32 * 1024 * 1024;
/// Longest `Retry-After` honoured; a provider asking for more is asked again then.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A transport error's message without its URL: URLs may carry a token
/// (ENTSO-E's `securityToken`), and messages end up in `last_error` and logs.
fn transport(error: reqwest::Error) -> FeedError {
    let error = error.without_url();
    let mut message = error.to_string();
    // The causes say what failed (a refused address, a TLS error); reqwest's own message does not.
    let mut cause = std::error::Error::source(&error);
    while let Some(e) = cause {
        message = format!("{message}: {e}");
        cause = e.source();
    }
    FeedError::Transport(message)
}

/// Sends a request and returns the body of a success; maps 429 (with its
/// `Retry-After`, in seconds or as an HTTP date) and other failures.
async fn send(request: RequestBuilder) -> Result<String, FeedError> {
    let mut response = request.timeout(Duration::from_secs(30)).send().await.map_err(transport)?;
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
            .unwrap_or(Duration::from_secs(60));
        return Err(FeedError::RateLimited { retry_after });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(FeedError::Shape(format!("the reply is larger than {} MiB", MAX_REPLY_BYTES >> 20)));
        }
        body.extend_from_slice(&chunk);
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        return Err(FeedError::Status { status, message: describe(status, &body) });
    }
    Ok(body)
}

/// `Retry-After` as seconds or an HTTP date, at most a day.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let wait = match value.trim().parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value.trim()).ok()?;
            at.duration_since(std::time::SystemTime::now()).unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// What a failed reply was, for the feed's `last_error`: its status and
/// kind, never its text (which whoever answered chose, and viewers read).
fn describe(status: StatusCode, body: &str) -> String {
    if status.is_redirection() {
        return "redirects are not followed; set base_url to where it points".into();
    }
    let kind = match body.trim_start().as_bytes().first() {
        None => return "an empty reply".into(),
        Some(b'<') if body.contains("MarketDocument") => "XML",
        Some(b'<') => "an HTML page, not the API",
        Some(b'{' | b'[') => "JSON",
        Some(_) => "text",
    };
    format!("a reply of {} bytes ({kind}), not shown", body.len())
}

/// Parses JSON into `T`, naming the field that does not fit.
fn parse_json<T: serde::de::DeserializeOwned>(provider: &str, body: &str) -> Result<T, FeedError> {
    let mut json = serde_json::Deserializer::from_str(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        FeedError::Shape(format!("{provider}: field '{path}': {}", e.into_inner()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every provider is reached over HTTPS: the client must open a TLS
    /// handshake (a ClientHello record, 0x16 0x03) rather than refuse the scheme.
    #[tokio::test]
    async fn providers_are_reached_over_tls() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/v3/carbon-intensity/latest?zone=DE", listener.local_addr().unwrap());
        let fetcher = Fetcher::new(FeedReach::default()).unwrap();
        let request = tokio::spawn(async move { fetcher.client.get(url).send().await });
        // Without TLS the request fails before it connects, and nothing is accepted.
        let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
        let (mut socket, _) = accepted.expect("the client never connected: no TLS?").unwrap();
        let mut hello = [0u8; 2];
        socket.read_exact(&mut hello).await.unwrap();
        assert_eq!(hello, [0x16, 0x03], "a TLS handshake record");
        drop(socket);
        assert!(request.await.unwrap().is_err(), "no certificate was offered");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let later = std::time::SystemTime::now() + Duration::from_secs(300);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!((298..=300).contains(&parsed.as_secs()), "{parsed:?}");
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("18446744073709551615"), Some(MAX_RETRY_AFTER), "clamped, never an overflow");
    }

    #[test]
    fn error_replies_are_described_not_quoted() {
        let page = "<html><head><title>403 Forbidden</title></head><body>secret=hunter2</body></html>";
        let described = describe(StatusCode::FORBIDDEN, page);
        assert!(described.contains("an HTML page") && !described.contains("hunter2"), "{described}");
        assert!(describe(StatusCode::FOUND, "").contains("redirects are not followed"));
    }
}
