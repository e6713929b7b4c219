//! The node's metrics (Prometheus, served on `metrics_addr` when set; see
//! `ravel_runtime::metrics`). Raft's own numbers (term, role, indexes,
//! follower lag) are read from openraft's metrics at each scrape; requests,
//! batches and proposals are counted where they happen.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use prometheus::{
    Counter, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};
use ravel_consensus::types::{NodeId, Raft, RaftServerMetrics};
use ravel_consensus::WeakEngine;
use ravel_proto::ops;
use ravel_runtime::metrics::{self as m, Exposition, LATENCY_BUCKETS};

use crate::contact::QuorumContact;

pub struct NodeMetrics {
    registry: Registry,
    raft: Raft,
    node_id: NodeId,
    /// Not a strong handle: the metrics outlive the node's shutdown, which
    /// waits for the database's other handles to go.
    engine: WeakEngine,
    rocks: RocksMetrics,
    quorum_contact_lost: IntCounter,
    term: IntGauge,
    state: IntGaugeVec,
    last_log_index: IntGauge,
    applied_index: IntGauge,
    snapshot_index: IntGauge,
    purged_index: IntGauge,
    follower_lag: IntGaugeVec,
    leader_changes: IntCounter,
    pre_votes: IntCounterVec,
    run_requests: IntCounterVec,
    run_seconds: HistogramVec,
    batch_commands: Histogram,
    proposal_seconds: Histogram,
    read_round_reads: Histogram,
    lease_reads: IntCounter,
    log_append_seconds: Histogram,
    log_appended_bytes: IntCounter,
    snapshots: IntCounterVec,
    snapshot_bytes: IntCounterVec,
    snapshot_seconds: HistogramVec,
}

const STATES: [(&str, ServerState); 4] = [
    ("leader", ServerState::Leader),
    ("follower", ServerState::Follower),
    ("candidate", ServerState::Candidate),
    ("learner", ServerState::Learner),
];

/// RocksDB's own account of its work, read at each scrape
/// ([`ravel_consensus::EngineStats`]).
struct RocksMetrics {
    write_stall: Counter,
    delayed_write_rate: IntGauge,
    write_stopped: IntGauge,
    l0_files: IntGaugeVec,
    pending_compaction: IntGauge,
    running: IntGaugeVec,
    memtable: IntGauge,
    block_cache: IntGauge,
    raft_log: IntGauge,
}

impl RocksMetrics {
    fn new(r: &Registry) -> Self {
        Self {
            write_stall: m::float_counter(r, "ravel_rocksdb_write_stall_seconds_total", "Time RocksDB held writes back (delayed or stopped: too many L0 files, memtables waiting for a flush, or compaction debt). Applies wait with them; the Raft log's appends (files of their own) do not."),
            delayed_write_rate: m::gauge(r, "ravel_rocksdb_delayed_write_rate_bytes", "Rate RocksDB holds writes to now, in bytes per second; 0 when writes are not delayed."),
            write_stopped: m::gauge(r, "ravel_rocksdb_write_stopped", "1 while RocksDB stops writes until a flush or compaction catches up."),
            l0_files: m::gauge_vec(r, "ravel_rocksdb_l0_files", "L0 files of each column family (writes slow down at 20, stop at 36).", &["cf"]),
            pending_compaction: m::gauge(r, "ravel_rocksdb_pending_compaction_bytes", "Bytes RocksDB estimates compaction has to rewrite, over all column families."),
            running: m::gauge_vec(r, "ravel_rocksdb_running_jobs", "Background jobs running now, by kind (flush, compaction).", &["kind"]),
            memtable: m::gauge(r, "ravel_rocksdb_memtable_bytes", "Bytes in RocksDB's memtables, over all column families."),
            block_cache: m::gauge(r, "ravel_rocksdb_block_cache_bytes", "Bytes held by the shared block cache."),
            raft_log: m::gauge(r, "ravel_raft_log_disk_bytes", "Bytes of the Raft log's segment files (outside RocksDB); whole files are removed as the log is purged behind snapshots."),
        }
    }

    fn refresh(&self, s: &ravel_consensus::EngineStats) {
        m::advance_to(&self.write_stall, s.write_stall.as_secs_f64());
        self.delayed_write_rate.set(s.delayed_write_rate as i64);
        self.write_stopped.set(i64::from(s.write_stopped));
        for (cf, n) in &s.l0_files {
            self.l0_files.with_label_values(&[cf]).set(*n as i64);
        }
        self.pending_compaction
            .set(s.pending_compaction_bytes as i64);
        self.running
            .with_label_values(&["flush"])
            .set(s.running_flushes as i64);
        self.running
            .with_label_values(&["compaction"])
            .set(s.running_compactions as i64);
        self.memtable.set(s.memtable_bytes as i64);
        self.block_cache.set(s.block_cache_bytes as i64);
        self.raft_log.set(s.raft_log_bytes as i64);
    }
}

impl NodeMetrics {
    pub fn new(
        raft: Raft,
        node_id: NodeId,
        engine: WeakEngine,
        contact: QuorumContact,
    ) -> Arc<Self> {
        let r = Registry::new();
        let metrics = Arc::new(Self {
            rocks: RocksMetrics::new(&r),
            quorum_contact_lost: m::counter(&r, "ravel_raft_quorum_contact_lost_total", "Times this replica, leading, went longer than the longest election timeout without a majority acknowledging it; it refuses writes until one does."),
            term: m::gauge(&r, "ravel_raft_term", "Current Raft term."),
            state: m::gauge_vec(&r, "ravel_raft_state", "1 for this replica's Raft role.", &["state"]),
            last_log_index: m::gauge(&r, "ravel_raft_last_log_index", "Index of the last entry in the log."),
            applied_index: m::gauge(&r, "ravel_raft_applied_index", "Index of the last entry applied to the state machine."),
            snapshot_index: m::gauge(&r, "ravel_raft_snapshot_index", "Last index covered by the newest snapshot."),
            purged_index: m::gauge(&r, "ravel_raft_purged_index", "Last log index purged (covered by a snapshot)."),
            follower_lag: m::gauge_vec(&r, "ravel_raft_follower_lag_entries", "On the leader: entries each follower lacks (last log index minus its matched index).", &["follower"]),
            leader_changes: m::counter(&r, "ravel_raft_leader_changes_total", "Times this replica saw the cluster's leader change."),
            pre_votes: m::counter_vec(&r, "ravel_raft_pre_votes_total", "Pre-vote rounds this replica ran before an election, by outcome (won: it stood; lost: a majority still hears from a leader, or has a newer log).", &["outcome"]),
            run_requests: m::counter_vec(&r, "ravel_run_requests_total", "Run requests answered, by operation and gRPC code.", &["op", "code"]),
            run_seconds: m::histogram_vec(&r, "ravel_run_duration_seconds", "Time to answer a Run request, by operation.", &["op"], LATENCY_BUCKETS),
            batch_commands: m::histogram(&r, "ravel_proposal_commands", "Client commands per Raft proposal (write batching).", &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
            proposal_seconds: m::histogram(&r, "ravel_proposal_duration_seconds", "From proposing a batch to its result on the leader (replication, fsync on a majority, apply).", LATENCY_BUCKETS),
            lease_reads: m::counter(&r, "ravel_read_lease_reads_total", "Linearizable reads served under the leader's read lease, without a read-index round."),
            read_round_reads: m::histogram(&r, "ravel_read_index_round_reads", "Linearizable reads served by one read-index round (one leadership confirmation with a quorum).", &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
            log_append_seconds: m::histogram(&r, "ravel_log_append_duration_seconds", "Time to append entries to the Raft log and sync them to disk (one RocksDB write with fsync).", LATENCY_BUCKETS),
            log_appended_bytes: m::counter(&r, "ravel_log_appended_bytes_total", "Bytes of Raft log entries appended and synced (encoded)."),
            snapshots: m::counter_vec(&r, "ravel_snapshots_total", "Snapshots this replica built (a consistent point of its state machine, pinned; nothing is copied), sent (streamed from such a point to a lagging replica) or installed (received from the leader).", &["event"]),
            snapshot_bytes: m::counter_vec(&r, "ravel_snapshot_bytes_total", "Bytes of the snapshots sent or installed (building copies nothing).", &["event"]),
            snapshot_seconds: m::histogram_vec(&r, "ravel_snapshot_duration_seconds", "Time to build a snapshot (pin a consistent point), send one (export the stream to a peer) or install a received one.", &["event"], &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
            registry: r,
            raft,
            node_id,
            engine,
        });
        tokio::spawn(count_raft_events(Arc::downgrade(&metrics), contact));
        metrics
    }

    /// One answered `Run`. The operation label is one of the four known
    /// operations or `other` (a client's typo must not create a series).
    pub fn run_done(&self, op: &str, code: tonic::Code, took: Duration) {
        let op = match op {
            ops::SET | ops::GET | ops::DELETE | ops::GET_AND_DELETE => op,
            _ => "other",
        };
        let code = format!("{code:?}");
        self.run_requests.with_label_values(&[op, &code]).inc();
        self.run_seconds
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
    }

    /// Bytes of log entries appended (`ravel_log_appended_bytes_total`).
    pub fn log_appended_bytes(&self) -> IntCounter {
        self.log_appended_bytes.clone()
    }

    /// What the storage layer reports to (holds the metric handles only,
    /// not these metrics: no reference cycle through Raft).
    pub fn storage_events(&self) -> Arc<dyn ravel_consensus::observe::StorageEvents> {
        Arc::new(StorageMetrics {
            log_append_seconds: self.log_append_seconds.clone(),
            log_appended_bytes: self.log_appended_bytes.clone(),
            snapshots: self.snapshots.clone(),
            snapshot_bytes: self.snapshot_bytes.clone(),
            snapshot_seconds: self.snapshot_seconds.clone(),
        })
    }

    /// One pre-vote round this replica ran.
    pub fn pre_vote(&self, won: bool) {
        self.pre_votes
            .with_label_values(&[if won { "won" } else { "lost" }])
            .inc();
    }

    /// One proposal of `commands` client commands, answered after `took`.
    pub fn proposal_done(&self, commands: usize, took: Duration) {
        self.batch_commands.observe(commands as f64);
        self.proposal_seconds.observe(took.as_secs_f64());
    }

    /// How a linearizable read (or a round of them) was confirmed.
    pub fn read_served(&self, served: crate::read_index::Served) {
        match served {
            crate::read_index::Served::Round(reads) => self.read_round_reads.observe(reads as f64),
            crate::read_index::Served::Lease => self.lease_reads.inc(),
        }
    }

    fn refresh(&self) {
        if let Some(engine) = self.engine.upgrade() {
            self.rocks.refresh(&engine.stats());
        }
        let rm = self.raft.metrics().borrow().clone();
        self.term.set(rm.current_term as i64);
        for (name, s) in STATES {
            self.state
                .with_label_values(&[name])
                .set(i64::from(rm.state == s));
        }
        let last = rm.last_log_index.unwrap_or(0);
        self.last_log_index.set(last as i64);
        self.applied_index
            .set(rm.last_applied.map_or(0, |l| l.index) as i64);
        self.snapshot_index
            .set(rm.snapshot.map_or(0, |l| l.index) as i64);
        self.purged_index
            .set(rm.purged.map_or(0, |l| l.index) as i64);
        self.follower_lag.reset();
        if let Some(replication) = &rm.replication {
            for (id, matched) in replication.iter().filter(|(id, _)| **id != self.node_id) {
                let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                self.follower_lag
                    .with_label_values(&[&id.to_string()])
                    .set(lag as i64);
            }
        }
    }
}

impl Exposition for NodeMetrics {
    fn render(&self) -> String {
        self.refresh();
        m::render(&self.registry)
    }

    fn ready(&self) -> Result<String, String> {
        readiness(&self.raft.metrics().borrow(), self.node_id)
    }
}

/// The storage layer's events, into the node's metrics.
struct StorageMetrics {
    log_append_seconds: Histogram,
    log_appended_bytes: IntCounter,
    snapshots: IntCounterVec,
    snapshot_bytes: IntCounterVec,
    snapshot_seconds: HistogramVec,
}

impl StorageMetrics {
    fn snapshot(&self, event: &str, bytes: u64, took: Duration) {
        self.snapshots.with_label_values(&[event]).inc();
        self.snapshot_bytes
            .with_label_values(&[event])
            .inc_by(bytes);
        self.snapshot_seconds
            .with_label_values(&[event])
            .observe(took.as_secs_f64());
    }
}

impl ravel_consensus::observe::StorageEvents for StorageMetrics {
    fn log_appended(&self, bytes: u64, took: Duration) {
        self.log_append_seconds.observe(took.as_secs_f64());
        self.log_appended_bytes.inc_by(bytes);
    }

    fn snapshot_built(&self, took: Duration) {
        self.snapshot("built", 0, took);
    }

    fn snapshot_sent(&self, bytes: u64, took: Duration) {
        self.snapshot("sent", bytes, took);
    }

    fn snapshot_installed(&self, bytes: u64, took: Duration) {
        self.snapshot("installed", bytes, took);
    }
}

/// Whether a replica serves: Raft running, and a leader known (this
/// replica, leading, or another). `/readyz` and the gRPC health service
/// both answer from it.
pub fn readiness(rm: &ravel_consensus::types::RaftMetrics, me: NodeId) -> Result<String, String> {
    if let Err(e) = &rm.running_state {
        return Err(format!("Raft stopped: {e}"));
    }
    leader_known(rm.state, rm.current_leader, me)
}

/// [`readiness`] of a running Raft in `state` that knows `current_leader`.
fn leader_known(
    state: ServerState,
    current_leader: Option<NodeId>,
    me: NodeId,
) -> Result<String, String> {
    match current_leader {
        Some(l) if l == me && state == ServerState::Leader => Ok("ready: leader".into()),
        Some(l) if l != me => Ok(format!("ready: leader is {l}")),
        _ => Err("no leader known".into()),
    }
}

/// The services the node's health service reports on ("" is the server).
const HEALTH_SERVICES: [&str; 3] = ["", "RavelClusterPB.RavelNode", "ravel.node.v1.RavelNodeExt"];

/// Keeps the gRPC health service (`grpc.health.v1`) in step with
/// [`readiness`]: SERVING while the replica serves, NOT_SERVING otherwise
/// (starting, no leader known, Raft stopped). Ends when Raft does.
pub async fn report_health(raft: Raft, me: NodeId, reporter: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    // The server metrics' watch changes with leadership, not with every
    // write; it ends when Raft stops (after recording why).
    let mut rx = raft.server_metrics();
    let mut last = None;
    loop {
        let known = {
            let m = rx.borrow_and_update();
            leader_known(m.state, m.current_leader, me)
        };
        let status = match known {
            Ok(_) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        };
        if last != Some(status) {
            for service in HEALTH_SERVICES {
                reporter.set_service_status(service, status).await;
            }
            last = Some(status);
        }
        if rx.changed().await.is_err() {
            for service in HEALTH_SERVICES {
                reporter
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
            return;
        }
    }
}

/// Counts what this replica sees happen in Raft's metrics: leader changes,
/// and its losses, as leader, of contact with a majority (the quorum-contact
/// check turning from fresh to stale). Ends with the node.
///
/// Wakes on changes of Raft's server state (leader, term, membership) and,
/// while leading, on a timer at the moment contact would go stale; not on
/// every metrics update (several per write).
async fn count_raft_events(metrics: std::sync::Weak<NodeMetrics>, contact: QuorumContact) {
    /// While stale, how often to look for contact regained.
    const STALE_POLL: Duration = Duration::from_millis(50);
    let Some((mut server, data)) = metrics
        .upgrade()
        .map(|m| (m.raft.server_metrics(), m.raft.data_metrics()))
    else {
        return;
    };
    let observe = |server: &mut tokio::sync::watch::Receiver<RaftServerMetrics>| {
        let (state, leader) = {
            let s = server.borrow_and_update();
            (s.state, s.current_leader)
        };
        let ms = data.borrow().millis_since_quorum_ack;
        (
            leader,
            contact.stale(state, ms),
            contact.recheck_in(state, ms, STALE_POLL),
        )
    };
    let (mut leader, mut lost, mut recheck) = observe(&mut server);
    loop {
        tokio::select! {
            r = server.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(recheck.unwrap_or(Duration::MAX)), if recheck.is_some() => {}
        }
        let (now_leader, now_lost, next) = observe(&mut server);
        let Some(m) = metrics.upgrade() else { return };
        if now_leader != leader {
            m.leader_changes.inc();
        }
        if now_lost && !lost {
            m.quorum_contact_lost.inc();
        }
        (leader, lost, recheck) = (now_leader, now_lost, next);
    }
}
