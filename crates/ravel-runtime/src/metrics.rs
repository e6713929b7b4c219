//! Prometheus metrics: the one text encoder and the one HTTP endpoint every
//! Ravel process serves them with. Each process keeps its metrics in its own
//! [`Registry`] (no global state: several in-process nodes in one test keep
//! theirs apart); `metric!`-style helpers here register them.
//!
//! A node serves `GET /metrics`, `/healthz` (the process is up) and
//! `/readyz` (it serves: joined, a leader known, Raft running) on its
//! `metrics_addr`; the admin serves `/metrics` on its HTTP port.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

/// Latency buckets in seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The registry's metrics in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into a Vec fails only on a malformed metric family, which
    // registration already refused.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

// Registration fails only for a name registered twice or an invalid name:
// both are mistakes in the (static) names below and in callers, caught by
// every test that builds a node or an admin.
fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric names are static and unique per registry");
    c
}

pub fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

/// A counter of a fractional quantity (seconds).
pub fn float_counter(r: &Registry, name: &str, help: &str) -> Counter {
    register(r, Counter::new(name, help).expect("valid metric"))
}

/// Brings `counter` up to `total`, a cumulative count read from elsewhere
/// (a counter only goes up: a smaller `total` is ignored).
pub fn advance_to(counter: &Counter, total: f64) {
    let by = total - counter.get();
    if by > 0.0 {
        counter.inc_by(by);
    }
}

pub fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

pub fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

pub fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

pub fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric"),
    )
}

pub fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    register(
        r,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("valid metric"),
    )
}

/// What a process exposes on its metrics endpoint.
pub trait Exposition: Send + Sync + 'static {
    /// Brings gauges read from elsewhere up to date, then renders.
    fn render(&self) -> String;
    /// `Ok(what)` when the process serves, else why not.
    fn ready(&self) -> Result<String, String>;
}

/// The endpoint's routes, to serve alone ([`serve`]) or to merge into an
/// existing HTTP API (the admin's).
pub fn routes<E: Exposition>(e: Arc<E>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics::<E>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready::<E>))
        .with_state(e)
}

async fn metrics<E: Exposition>(State(e): State<Arc<E>>) -> impl axum::response::IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], e.render())
}

async fn ready<E: Exposition>(State(e): State<Arc<E>>) -> (StatusCode, String) {
    match e.ready() {
        Ok(m) => (StatusCode::OK, format!("{m}\n")),
        Err(m) => (StatusCode::SERVICE_UNAVAILABLE, format!("{m}\n")),
    }
}

/// Serves [`routes`] on `listener` until `shutdown` resolves.
pub async fn serve<E: Exposition>(
    listener: TcpListener,
    e: Arc<E>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(err) = axum::serve(listener, routes(e))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %err, "metrics endpoint failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let r = Registry::new();
        let c = counter_vec(&r, "ravel_test_total", "A test counter.", &["op"]);
        c.with_label_values(&["set"]).inc_by(3);
        let h = histogram(
            &r,
            "ravel_test_seconds",
            "A test histogram.",
            LATENCY_BUCKETS,
        );
        h.observe(0.002);
        let text = render(&r);
        assert!(text.contains("# TYPE ravel_test_total counter"), "{text}");
        assert!(text.contains("ravel_test_total{op=\"set\"} 3"), "{text}");
        assert!(
            text.contains("ravel_test_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(text.contains("ravel_test_seconds_count 1"), "{text}");
    }
}
