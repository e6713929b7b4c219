//! A running replica: start (found / join / restart), serve, shut down.
//!
//! [`Node::start`] runs in named phases: lock and open the data directory,
//! bind the listener, load (or create) the identity, register with the
//! admin on first start, start Raft, serve, then found or join the cluster
//! if this replica has not yet done so. `joined` is saved last, so a node
//! that crashed halfway repeats the unfinished steps on restart without
//! registering twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ravel_consensus::types::{NodeId, Raft};
use ravel_consensus::{Engine, LogStore, StateMachine};
use ravel_runtime::lock::{DirLock, LockError};
use ravel_transport::retry::{Attempts, Backoff};
use ravel_transport::{ChannelPool, Faults};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod setup;

use setup::{bind, load_identity, open_data_dir};

use crate::admin_link::{AdminLink, AdminLinkError};
use crate::batcher::WriteBatcher;
use crate::config::{ConfigError, NodeConfig};
use crate::identity::IdentityError;
use crate::notifier;
use crate::raft::{GrpcRaftNetwork, RaftService, SnapshotTransfer};
use crate::service::{self, NodeState};

/// Longest a shutdown waits for requests in flight before dropping them.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// Why a node could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] ravel_consensus::StorageError),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registering: {0}")]
    Registration(#[source] AdminLinkError),
    #[error("joining cluster {cluster} through {leader}: {reason}")]
    Join {
        cluster: String,
        leader: String,
        reason: String,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("data directory {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
}

/// How a node is started beyond its config: test hooks.
#[derive(Default)]
pub struct StartOptions {
    /// A listener already bound (tests bind port 0 and learn the port).
    pub listener: Option<TcpListener>,
    /// Fault injection shared with other in-process nodes.
    pub faults: Faults,
    /// Give up registration and join after this long (`None`: keep trying).
    pub setup_timeout: Option<Duration>,
}

/// A running replica. Dropping it without [`Node::shutdown`] leaves its
/// tasks running; tests and the binary always shut down.
pub struct Node {
    /// This replica's Raft id, chosen on first start and never changed.
    id: NodeId,
    cluster_id: String,
    /// The gRPC address other processes reach this node at.
    addr: String,
    /// Where metrics are served (`metrics_addr`, as bound), if anywhere.
    metrics_addr: Option<String>,
    /// Handle to the Raft core; clones share it.
    raft: Raft,
    /// The database (shared with the log store and state machine), for
    /// local reads in tests and diagnostics.
    engine: Engine,
    data_dir: PathBuf,
    /// When this replica last heard from a leader (shared with the
    /// election driver and the forwarding path).
    leader_contact: crate::contact::LeaderContact,
    /// Longest a `Join` call waits for the leader to catch this replica up.
    join_timeout: Duration,
    /// Cancelled on shutdown: stops the gRPC server, the leader notifier
    /// and background calls to the admin.
    shutdown: CancellationToken,
    /// The gRPC server, the notifier and the joint-configuration finisher;
    /// awaited on shutdown.
    tasks: Vec<JoinHandle<()>>,
    /// Names this process in `ravel-node.pid` while the node runs.
    _pid_lock: DirLock,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("cluster_id", &self.cluster_id)
            .field("addr", &self.addr)
            .finish()
    }
}

/// The data directory, opened and locked.
struct OpenedDir {
    pid_lock: DirLock,
    log_store: LogStore,
    state_machine: StateMachine,
}

/// The bound listener and the addresses this node is known by.
struct Bound {
    listener: TcpListener,
    advertised: String,
    raft_addr: String,
}

impl Node {
    /// Starts a replica from `cfg` and serves until [`Node::shutdown`].
    pub async fn start(cfg: NodeConfig, opts: StartOptions) -> Result<Node, NodeError> {
        // Unusable TLS or token files fail the start before anything opens.
        let creds = cfg.credentials()?;
        let server_tls = (creds.tls.as_ref())
            .map(ravel_transport::tls::server_config)
            .transpose()
            .map_err(|e| ConfigError::invalid("tls", e.to_string()))?;
        let dir = cfg.data_dir.clone();
        let opened = open_data_dir(&dir, &cfg)?;
        let engine = opened.state_machine.engine().clone();
        let bound = bind(&cfg, opts.listener).await?;
        let mut identity = load_identity(&dir, &cfg, &bound)?;
        let id = identity.node_id;
        let pool = ChannelPool::new(cfg.channel_options(&creds));
        let admin = AdminLink::new(
            cfg.admin_addr.clone(),
            pool.clone(),
            creds.admin_token.clone(),
        );
        let shutdown = CancellationToken::new();
        let setup_timeout = opts.setup_timeout;
        let setup_cancel = shutdown.clone();
        let setup = move || {
            Attempts::new(
                Backoff::default(),
                setup_timeout.map(|t| Instant::now() + t),
            )
            .cancel_on(setup_cancel.clone())
        };

        if identity.cluster_id.is_none() {
            let cluster = admin
                .register(&identity.admin_node(), cfg.found_cluster, setup())
                .await
                .map_err(NodeError::Registration)?;
            tracing::info!(node = id, cluster = %cluster.cluster_id, leader = %cluster.leader_grpc_address, "registered with the admin");
            identity.cluster_id = Some(cluster.cluster_id);
            // A founder announces its cluster until the admin acknowledges.
            identity.announced = !cfg.found_cluster;
            identity.save(&dir)?;
        }
        let cluster_id = identity.cluster_id.clone().unwrap_or_default();

        let transfer = SnapshotTransfer::from_settings(&cfg.snapshot);
        let network = GrpcRaftNetwork::new(id, pool.clone(), opts.faults.clone(), transfer.clone());
        let raft_config = cfg.openraft()?;
        let lease = Duration::from_millis(raft_config.election_timeout_max);
        // Before Raft starts: its replica refuses votes from its start on.
        let read_lease = Arc::new(crate::lease::ReadLease::new(
            cfg.raft
                .lease_reads
                .then(|| crate::lease::ReadLease::duration_for(lease)),
            lease,
        ));
        let log_store = opened.log_store.clone();
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            network.clone(),
            opened.log_store,
            opened.state_machine,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;

        let membership_lock = service::MembershipLock::default();
        let metrics_listener = match &cfg.metrics_addr {
            None => None,
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| NodeError::Bind {
                            addr: addr.clone(),
                            source,
                        })?,
                )
            }
        };
        let metrics_addr = metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string());
        let contact = crate::contact::QuorumContact::new(Duration::from_millis(
            cfg.raft.election_timeout_max_ms,
        ));
        let metrics =
            crate::metrics::NodeMetrics::new(raft.clone(), id, engine.downgrade(), contact.clone());
        log_store.observer().set(metrics.storage_events());
        let leader_contact = crate::contact::LeaderContact::new(Duration::from_millis(
            cfg.raft.election_timeout_max_ms,
        ));
        let state = Arc::new(NodeState {
            id,
            cluster_id: cluster_id.clone(),
            advertised: bound.advertised.clone(),
            raft: raft.clone(),
            engine: engine.clone(),
            batcher: WriteBatcher::spawn(
                raft.clone(),
                &cfg.limits,
                contact.clone(),
                metrics.clone(),
            ),
            read_index: crate::read_index::ReadIndex::new(
                raft.clone(),
                cfg.request_timeout(),
                read_lease.clone(),
                {
                    let metrics = metrics.clone();
                    move |served| metrics.read_served(served)
                },
            ),
            metrics: metrics.clone(),
            membership_lock: membership_lock.clone(),
            contact,
            leader_contact: leader_contact.clone(),
            pool: pool.clone(),
            faults: opts.faults.clone(),
            session: ravel_transport::session::ClientSession::new(),
            limits: cfg.limits.clone(),
            join_timeout: Duration::from_millis(cfg.raft.join_timeout_ms),
        });
        let mut tasks = vec![
            tokio::spawn(service::serve(
                bound.listener,
                state,
                RaftService::new(
                    raft.clone(),
                    log_store.clone(),
                    transfer.chunk_timeout,
                    lease,
                    read_lease.clone(),
                ),
                service::ServerLimits::from_config(&cfg),
                server_tls,
                shutdown.clone(),
            )),
            tokio::spawn(service::finish_joint_changes(
                raft.clone(),
                id,
                membership_lock,
                shutdown.clone(),
            )),
            tokio::spawn(crate::raft::election::run(
                crate::raft::election::Elector {
                    raft: raft.clone(),
                    id,
                    log: log_store,
                    network,
                    timing: crate::raft::election::ElectionTiming {
                        tick: Duration::from_millis(cfg.raft.heartbeat_interval_ms),
                        timeout_min: Duration::from_millis(cfg.raft.election_timeout_min_ms),
                        timeout_max: Duration::from_millis(cfg.raft.election_timeout_max_ms),
                    },
                    metrics: metrics.clone(),
                    contact: leader_contact.clone(),
                    lease: read_lease,
                },
                shutdown.clone(),
            )),
            tokio::spawn(crate::raft::snapshot_trigger::run(
                raft.clone(),
                metrics.log_appended_bytes(),
                cfg.snapshot.log_bytes_since_last,
                shutdown.clone(),
            )),
            tokio::spawn(notifier::run(
                raft.clone(),
                id,
                identity.admin_node(),
                admin.clone(),
                shutdown.clone(),
            )),
        ];
        if let Some(listener) = metrics_listener {
            tracing::info!(addr = ?metrics_addr, "serving metrics");
            tasks.push(tokio::spawn(ravel_runtime::metrics::serve(
                listener,
                metrics,
                shutdown.clone().cancelled_owned(),
            )));
        }
        let node = Node {
            id,
            metrics_addr,
            cluster_id: cluster_id.clone(),
            addr: bound.advertised,
            raft,
            engine,
            leader_contact,
            data_dir: dir.clone(),
            join_timeout: Duration::from_millis(cfg.raft.join_timeout_ms) + Duration::from_secs(5),
            shutdown,
            tasks,
            _pid_lock: opened.pid_lock,
        };

        if identity.joined {
            tracing::info!(node = id, cluster = %cluster_id, "restarted from the data directory");
            if !identity.announced {
                node.announce(&admin, &identity, &dir);
            }
            return Ok(node);
        }
        let result = if cfg.found_cluster {
            node.found(setup()).await
        } else {
            node.join(&admin, &identity, &pool, setup()).await
        };
        if let Err(e) = result {
            node.shutdown().await;
            return Err(e);
        }
        identity.joined = true;
        identity.save(&dir)?;
        if !identity.announced {
            node.announce(&admin, &identity, &dir);
        }
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The gRPC address this node serves on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The address `/metrics`, `/healthz` and `/readyz` are served on, if
    /// `metrics_addr` is set.
    pub fn metrics_addr(&self) -> Option<&str> {
        self.metrics_addr.as_deref()
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// For tests: makes the recorded time this replica last heard from a
    /// leader `age` old, as an election driver that has not run for that
    /// long would leave it.
    #[doc(hidden)]
    pub fn backdate_leader_contact(&self, age: Duration) {
        self.leader_contact
            .record(tokio::time::Instant::now().checked_sub(age));
    }

    /// Reads a key from this replica's local state machine, without any
    /// consistency check: for tests and diagnostics, never for clients.
    pub fn local_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ravel_consensus::StorageError> {
        self.engine.get(key)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Why Raft stopped on its own (a storage or internal failure), if it
    /// did. A node whose disk failed must not go on serving what it may no
    /// longer persist: the binary exits (fail-stop, as PostgreSQL and etcd
    /// do since fsyncgate) and reports itself unhealthy until then.
    pub fn fatal(&self) -> Option<String> {
        match &self.raft.metrics().borrow().running_state {
            Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Resolves once Raft has stopped on its own; the reason.
    pub async fn failed(&self) -> String {
        // Raft records why it stopped, then drops its metrics' senders: the
        // server metrics' watch (which, unlike the full metrics, does not
        // change with every write) ends then.
        let mut server = self.raft.server_metrics();
        loop {
            if let Some(e) = self.fatal() {
                return e;
            }
            if server.changed().await.is_err() {
                // Raft is gone without a recorded reason.
                return self.fatal().unwrap_or_else(|| "raft stopped".into());
            }
        }
    }

    /// Stops serving and shuts Raft down. Everything acknowledged is already
    /// on disk; the database closes (syncing its WAL) once the last task
    /// holding it ends, before this returns.
    pub async fn shutdown(mut self) {
        // Stop taking requests and let those in flight finish while Raft
        // still runs (bounded: a request may wait on a slow leader), then
        // stop Raft.
        self.shutdown.cancel();
        let drained = Instant::now() + SHUTDOWN_DRAIN;
        while !self.tasks.iter().all(|t| t.is_finished()) {
            if Instant::now() >= drained {
                tracing::warn!(after = ?SHUTDOWN_DRAIN, "requests still in flight at shutdown; dropping them");
                for t in &self.tasks {
                    t.abort();
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Aborted tasks end at their next await point.
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        // Requests still finishing on closing connections, or storage work
        // openraft handed to the blocking pool, may hold the database a
        // little longer; it must be closed (unlocked) when we return.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.engine.handle_count() > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.engine.handle_count() > 1 {
            tracing::warn!(
                handles = self.engine.handle_count(),
                "database still in use after shutdown"
            );
        }
    }
}
