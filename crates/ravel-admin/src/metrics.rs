//! The admin's metrics, served with its HTTP API at `/metrics`
//! (Prometheus text format; see `ravel_runtime::metrics`): HTTP requests by
//! route and status with latencies, calls to clusters by outcome, and the
//! relocation's progress (read from the registry at each scrape).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramVec, IntCounterVec, IntGauge, Registry};
use ravel_runtime::metrics::{self as m, LATENCY_BUCKETS};

use crate::registry::Registry as AdminRegistry;

pub struct AdminMetrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    cluster_calls: IntCounterVec,
    clusters: IntGauge,
    ring_members: IntGauge,
    relocating: IntGauge,
    pending_partitions: IntGauge,
    pending_sweeps: IntGauge,
    relocation_moved_keys: IntGauge,
    moved_keys_total: IntGauge,
    relocations_done: IntGauge,
    generation: IntGauge,
}

impl AdminMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            http_requests: m::counter_vec(&r, "ravel_admin_http_requests_total", "HTTP requests answered, by route and status.", &["route", "status"]),
            http_seconds: m::histogram_vec(&r, "ravel_admin_http_duration_seconds", "Time to answer an HTTP request, by route.", &["route"], LATENCY_BUCKETS),
            cluster_calls: m::counter_vec(&r, "ravel_admin_cluster_calls_total", "Calls to cluster leaders (users' requests and the mover's), by cluster and outcome (ok, status, unavailable).", &["cluster", "outcome"]),
            clusters: m::gauge(&r, "ravel_admin_clusters", "Clusters in the registry."),
            ring_members: m::gauge(&r, "ravel_admin_ring_clusters", "Clusters on the hash ring."),
            relocating: m::gauge(&r, "ravel_admin_relocation_in_progress", "1 while a relocation runs."),
            pending_partitions: m::gauge(&r, "ravel_admin_relocation_pending_partitions", "Partitions of the running relocation still to move."),
            pending_sweeps: m::gauge(&r, "ravel_admin_relocation_pending_sweeps", "Moves of the running relocation whose tombstones are still to be swept."),
            relocation_moved_keys: m::gauge(&r, "ravel_admin_relocation_moved_keys", "Keys moved by the running relocation."),
            moved_keys_total: m::gauge(&r, "ravel_admin_moved_keys_total", "Keys moved by finished relocations."),
            relocations_done: m::gauge(&r, "ravel_admin_relocations_done_total", "Relocations finished."),
            generation: m::gauge(&r, "ravel_admin_ring_generation", "The ring's generation (writes carry it; old owners are fenced below it)."),
            registry: r,
        }
    }

    /// One call to `cluster`'s leader ended so.
    pub fn cluster_call(&self, cluster: &str, outcome: &str) {
        self.cluster_calls
            .with_label_values(&[cluster, outcome])
            .inc();
    }

    fn http_done(&self, route: &str, status: u16, took: Duration) {
        self.http_requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.http_seconds
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }

    /// The metrics, the registry-derived gauges brought up to date.
    pub fn render(&self, registry: &AdminRegistry) -> String {
        let s = registry.snapshot();
        self.clusters.set(s.clusters.len() as i64);
        self.ring_members.set(s.ring.members.len() as i64);
        let r = s.ring.relocation.as_ref();
        self.relocating.set(i64::from(r.is_some()));
        self.pending_partitions
            .set(r.map_or(0, |r| r.pending.len()) as i64);
        self.pending_sweeps
            .set(r.map_or(0, |r| r.sweeps.len()) as i64);
        self.relocation_moved_keys
            .set(r.map_or(0, |r| r.moved_keys) as i64);
        self.moved_keys_total.set(s.ring.moved_keys_total as i64);
        self.relocations_done.set(s.ring.relocations_done as i64);
        self.generation.set(s.ring.generation as i64);
        m::render(&self.registry)
    }
}

impl Default for AdminMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Axum middleware: counts and times every request by its route pattern
/// (`/v1/kv/{key}`, not the key: no series per key).
pub async fn track(
    State(state): State<Arc<crate::state::AdminState>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .http_done(&route, resp.status().as_u16(), started.elapsed());
    resp
}
