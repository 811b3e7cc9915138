//! The scheduler's metrics in the Prometheus text format: request counts
//! and latencies by method, route (the matched pattern, never the raw path,
//! so that ids do not explode the label set) and status; and what operators
//! alert on beside them (read cache, refused signals, executors' network
//! steps, API connections open and refused). Outside `http` because the
//! background services (the feed poller, backfills) count into it too;
//! `http::track` is the middleware that feeds the request figures.

use heliotrope_api_spec::NetworkReport;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::db::enum_to_text;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        // 0.5 ms to about 16 s.
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    source: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkStepLabels {
    step: String,
    driver: String,
    outcome: &'static str,
}

/// The registry and the metrics the HTTP layer records.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram, LatencyBuckets>,
    read_cache: Family<CacheLabels, Counter>,
    signal_rejections: Family<RejectionLabels, Counter>,
    network_steps: Family<NetworkStepLabels, Counter>,
    network_step_duration: Family<NetworkStepLabels, Histogram, LatencyBuckets>,
    connections_open: Gauge,
    connections_refused: Counter,
    accept_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("heliotrope");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::new_with_constructor(LatencyBuckets);
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register("http_request_duration_seconds", "Time to answer HTTP requests", latency.clone());
        let read_cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "read_cache_lookups",
            "Inventory reads answered from the read cache (hit) or not (miss)",
            read_cache.clone(),
        );
        let signal_rejections = Family::<RejectionLabels, Counter>::default();
        registry.register(
            "signal_rejections",
            "Signal payloads refused, by source (push or feed) and reason",
            signal_rejections.clone(),
        );
        let network_steps = Family::<NetworkStepLabels, Counter>::default();
        registry.register(
            "network_steps",
            "Network steps executors logged after cutovers, by step, driver and outcome (ok or failed)",
            network_steps.clone(),
        );
        let network_step_duration = Family::new_with_constructor(LatencyBuckets);
        registry.register(
            "network_step_duration_seconds",
            "How long executors' network steps took, as they reported",
            network_step_duration.clone(),
        );
        let connections_open = Gauge::default();
        registry.register("http_connections_open", "API connections open now", connections_open.clone());
        let connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "API connections closed on arrival because the connection cap was reached",
            connections_refused.clone(),
        );
        let accept_errors = Counter::default();
        registry.register("http_accept_errors", "Failed accepts on the API listener", accept_errors.clone());
        Metrics {
            registry,
            requests,
            latency,
            read_cache,
            signal_rejections,
            network_steps,
            network_step_duration,
            connections_open,
            connections_refused,
            accept_errors,
        }
    }
}

impl Metrics {
    /// A request answered: `route` is the matched pattern.
    pub fn request_answered(&self, method: String, route: String, status: u16, took: std::time::Duration) {
        let labels = RequestLabels { method, route, status };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn read_cache_lookup(&self, hit: bool) {
        self.read_cache.get_or_create(&CacheLabels { result: if hit { "hit" } else { "miss" } }).inc();
    }

    pub fn signal_rejected(&self, source: &str, reason: &'static str) {
        self.signal_rejections.get_or_create(&RejectionLabels { source: source.to_owned(), reason }).inc();
    }

    /// A network step logged in a migration's events.
    pub fn network_step(&self, report: &NetworkReport) {
        let labels = NetworkStepLabels {
            step: enum_to_text(&report.step),
            driver: enum_to_text(&report.driver),
            outcome: if report.ok { "ok" } else { "failed" },
        };
        self.network_steps.get_or_create(&labels).inc();
        self.network_step_duration.get_or_create(&labels).observe(report.duration_ms / 1000.0);
    }

    /// A connection opened; it counts as open until the guard is dropped.
    pub fn connection_opened(&self) -> impl Drop + Send + 'static {
        struct Open(Gauge);
        impl Drop for Open {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.connections_open.inc();
        Open(self.connections_open.clone())
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn connection_failed_accept(&self) {
        self.accept_errors.inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
