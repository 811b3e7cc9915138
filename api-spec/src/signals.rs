//! Signals: carbon intensity and electricity price per site, actuals and
//! forecasts, each point with its provenance.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Which signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Carbon intensity, gCO2eq/kWh.
    Carbon,
    /// Electricity price, currency per MWh.
    Price,
}

/// What a value measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Basis {
    /// Marginal operating emissions (e.g. WattTime MOER).
    Marginal,
    /// Average emissions, life-cycle factors.
    AverageLifecycle,
    /// Average emissions, direct (combustion) factors.
    AverageDirect,
    MarketDayAhead,
    MarketRealTime,
    Tariff,
    /// Generated for the demo from per-region profiles: not a measurement.
    Synthetic,
}

/// One row pushed by an operator: the columns of the CSV format
/// `timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency[,forecast,issued_at]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignalRow {
    /// Start of the interval the values hold for.
    pub timestamp_utc: DateTime<Utc>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2000)]
    pub carbon_g_per_kwh: Option<f64>,
    #[serde(default)]
    #[schema(minimum = -1000, maximum = 20000)]
    pub price_per_mwh: Option<f64>,
    /// ISO 4217 code; required with a price.
    #[serde(default)]
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    /// Whether the values are a forecast (then `issued_at` is required).
    #[serde(default)]
    pub forecast: bool,
    /// When the forecast was made.
    #[serde(default)]
    pub issued_at: Option<DateTime<Utc>>,
    /// Whether the provider estimated rather than measured the values.
    #[serde(default)]
    pub estimated: bool,
}

/// Query parameters of `POST /v1/sites/{id}/signals`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IngestParams {
    /// What the carbon values measure (default `average-lifecycle`).
    pub carbon_basis: Option<Basis>,
    /// What the prices are (default `market-day-ahead`).
    pub price_basis: Option<Basis>,
    /// Length of the interval each row covers, in seconds (default 3600).
    #[param(minimum = 60, maximum = 86400)]
    pub resolution_s: Option<u32>,
}

/// Answer to a push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IngestReport {
    /// Rows taken from the body.
    pub rows: u64,
    /// Points stored (a row with carbon and price makes two).
    pub points: u64,
    /// CSV rows whose `region` column names another region, skipped.
    pub skipped_other_region: u64,
}

/// How a series is sampled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// One value per UTC hour: the mean of the best-known points in it.
    #[default]
    Hourly,
    /// Every best-known point as stored.
    Raw,
}

/// Query parameters of `GET /v1/sites/{id}/signals`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    pub signal: Signal,
    /// Start (inclusive); default 24 h ago.
    pub from: Option<DateTime<Utc>>,
    /// End (exclusive); default 48 h ahead.
    pub to: Option<DateTime<Utc>>,
    pub resolution: Option<Resolution>,
}

/// Whether a value was observed or predicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PointKind {
    Actual,
    Forecast,
}

/// One value of a series, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignalPoint {
    pub timestamp: DateTime<Utc>,
    pub value: f64,
    /// `gCO2eq/kWh`, or the currency per MWh (e.g. `EUR/MWh`).
    pub unit: String,
    pub kind: PointKind,
    /// When the forecast was issued (forecasts only).
    pub issued_at: Option<DateTime<Utc>>,
    pub basis: Basis,
    /// `push`, `feed:<id>` or `synthetic`.
    pub source: String,
    /// Seconds each stored point covers.
    pub resolution_s: u32,
    pub estimated: bool,
    /// Stored points behind this value (1 for raw; up to 12 in an hour of 5-minute data).
    pub samples: u32,
}

/// A site's series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignalSeries {
    pub site: String,
    pub signal: Signal,
    pub resolution: Resolution,
    pub points: Vec<SignalPoint>,
}

/// The newest known carbon and price of one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SiteSignals {
    pub site: String,
    pub carbon: Option<SignalPoint>,
    pub price: Option<SignalPoint>,
}

/// Answer to `GET /v1/signals/current`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CurrentSignals {
    pub items: Vec<SiteSignals>,
}

/// A signal provider Heliotrope can poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Electricity Maps API v3: carbon (`carbon-intensity/history`, `/forecast`) and day-ahead price.
    Electricitymaps,
    /// WattTime API v3: marginal carbon (`co2_moer`).
    Watttime,
    /// GB Carbon Intensity API (national or a region id): carbon.
    GbCarbonIntensity,
    /// ENTSO-E Transparency Platform day-ahead prices (A44) by bidding zone EIC.
    Entsoe,
}

/// What an admin sends to create or replace a feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FeedSpec {
    /// Name of the site the signal is for.
    #[schema(min_length = 1, max_length = 64)]
    pub site: String,
    pub provider: Provider,
    pub signal: Signal,
    /// The provider's area id: Electricity Maps zone, WattTime region, GB `national` or a
    /// region id (1-17), ENTSO-E bidding-zone EIC.
    #[schema(min_length = 1, max_length = 64)]
    pub area: String,
    /// The provider's API root (scheme and host, no version path); defaults to the real API.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub base_url: Option<String>,
    /// Name of the environment variable holding the key, token or `user:password`; never the secret.
    #[serde(default)]
    #[schema(max_length = 128, pattern = "^[A-Z_][A-Z0-9_]*$")]
    pub credential_env: Option<String>,
    /// Seconds between polls (60 to 86400; default 900).
    #[serde(default = "default_poll_interval_s")]
    #[schema(minimum = 60, maximum = 86400)]
    pub poll_interval_s: u32,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn default_poll_interval_s() -> u32 {
    900
}

fn enabled_by_default() -> bool {
    true
}

/// How polling a feed is going.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FeedHealth {
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// What went wrong last (cleared by the next success).
    pub last_error: Option<String>,
    pub points_ingested: i64,
    /// Timestamp of the newest point received.
    pub newest_point_at: Option<DateTime<Utc>>,
    /// No new data for three poll intervals.
    pub stale: bool,
}

/// A feed as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Feed {
    pub id: i64,
    pub site: String,
    pub provider: Provider,
    pub signal: Signal,
    pub area: String,
    /// The API root in use (the provider's own when none was given).
    pub base_url: String,
    pub credential_env: Option<String>,
    pub poll_interval_s: u32,
    pub enabled: bool,
    pub health: FeedHealth,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Filters of `GET /v1/feeds`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedFilter {
    /// Only feeds of this site (by name).
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub site: Option<String>,
    pub provider: Option<Provider>,
    pub signal: Option<Signal>,
}
