//! The admin's metrics, served with its HTTP API at `/metrics`
//! (Prometheus text format; see `ravel_runtime::metrics`): HTTP requests by
//! route and status with latencies, calls to clusters by outcome, and the
//! relocation's progress (read from the registry at each scrape).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};
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
    keys_moved: IntCounter,
    relocation_errors: IntCounter,
    last_error_time: IntGauge,
    backups: IntCounterVec,
    restored_entries: IntCounter,
    /// The mover's last failed step, shown by `ravel status`.
    last_error: std::sync::Mutex<Option<MoverError>>,
}

/// A failed step of the mover (it retries with backoff).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MoverError {
    pub message: String,
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
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
            keys_moved: m::counter(&r, "ravel_admin_relocation_keys_moved_total", "Keys this admin process moved between clusters (rate() of it is the relocation rate)."),
            relocation_errors: m::counter(&r, "ravel_admin_relocation_errors_total", "Failed relocation steps (each is retried with backoff)."),
            last_error_time: m::gauge(&r, "ravel_admin_relocation_last_error_timestamp_seconds", "When the last relocation step failed (Unix time; 0: never)."),
            backups: m::counter_vec(&r, "ravel_admin_backups_total", "Backups streamed, by outcome (ok, failed).", &["outcome"]),
            restored_entries: m::counter(&r, "ravel_admin_restored_entries_total", "Entries written by restores."),
            last_error: std::sync::Mutex::new(None),
            registry: r,
        }
    }

    /// The mover moved `n` keys.
    pub fn keys_moved(&self, n: u64) {
        self.keys_moved.inc_by(n);
    }

    /// A mover step failed with `message`.
    pub fn relocation_failed(&self, message: &str) {
        let at_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.relocation_errors.inc();
        self.last_error_time.set(at_unix as i64);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(MoverError {
            message: message.to_string(),
            at_unix,
        });
    }

    /// The mover's last failed step, if any.
    pub fn last_relocation_error(&self) -> Option<MoverError> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A backup stream ended with `outcome`.
    pub fn backup(&self, outcome: &str) {
        self.backups.with_label_values(&[outcome]).inc();
    }

    /// A restore wrote `n` entries.
    pub fn restored(&self, n: u64) {
        self.restored_entries.inc_by(n);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_mover_step_is_counted_and_kept_as_the_last_error() {
        let m = AdminMetrics::new();
        assert!(m.last_relocation_error().is_none());
        m.relocation_failed("cluster-2 unreachable");
        m.relocation_failed("cluster-3 answered FailedPrecondition");
        m.keys_moved(7);
        let e = m.last_relocation_error().expect("the last error");
        assert_eq!(e.message, "cluster-3 answered FailedPrecondition");
        assert!(e.at_unix > 1_600_000_000, "{}", e.at_unix);
        let text = m::render(&m.registry);
        assert!(
            text.contains("ravel_admin_relocation_errors_total 2"),
            "{text}"
        );
        assert!(
            text.contains("ravel_admin_relocation_keys_moved_total 7"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "ravel_admin_relocation_last_error_timestamp_seconds {}",
                e.at_unix
            )),
            "{text}"
        );
    }
}
