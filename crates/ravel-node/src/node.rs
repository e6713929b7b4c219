//! A running replica: start (found / join / restart), serve, shut down.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use ravel_consensus::types::{NodeId, Raft};
use ravel_consensus::DataDir;
use ravel_proto::admin::ravel_cluster_admin_client::RavelClusterAdminClient;
use ravel_proto::admin::Cluster;
use ravel_proto::ext::ravel_node_ext_server::RavelNodeExtServer;
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_proto::node::ravel_node_server::RavelNodeServer;
use ravel_proto::node::Node as PbNode;
use ravel_proto::NODE_ALREADY_EXISTS;
use ravel_transport::retry::{retry, Backoff};
use ravel_transport::{
    ChannelPool, Faults, RaftNetworkFactoryImpl, RaftService, SnapshotTransfer, TransportError,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::batcher::WriteBatcher;
use crate::config::{ConfigError, NodeConfig};
use crate::identity::{Identity, IdentityError};
use crate::notifier;
use crate::service::{NodeService, NodeState};

/// Why a node could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] ravel_consensus::StorageError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registering with the admin at {admin}: {reason}")]
    Registration { admin: String, reason: String },
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

/// A running replica.
pub struct Node {
    id: NodeId,
    cluster_id: String,
    addr: String,
    raft: Raft,
    engine: ravel_consensus::Engine,
    data_dir: PathBuf,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
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

fn status_err(addr: &str) -> impl Fn(tonic::Status) -> TransportError + '_ {
    move |s| TransportError::from_status(addr, s)
}

impl Node {
    /// Starts a replica from `cfg`: opens (or creates) its data directory,
    /// registers with the admin and founds or joins a cluster on first start,
    /// or simply rejoins its group on restart, then serves until
    /// [`Node::shutdown`].
    pub async fn start(cfg: NodeConfig, opts: StartOptions) -> Result<Node, NodeError> {
        let dir = cfg.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| NodeError::DataDir {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        let data = DataDir::new(&dir);
        // The database first: it holds the directory's lock, so a second
        // process on the same directory stops here with a clear error.
        let (log_store, state_machine) = data.open(cfg.snapshot.chunk_bytes)?;
        let engine = state_machine.engine().clone();

        let listener = match opts.listener {
            Some(l) => l,
            None => TcpListener::bind(&cfg.listen_addr)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: cfg.listen_addr.clone(),
                    source,
                })?,
        };
        let local: SocketAddr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: cfg.listen_addr.clone(),
            source,
        })?;
        // With port 0 the advertised address is the one we actually got.
        let advertised = if cfg.advertise_addr.is_none() && cfg.listen_addr.ends_with(":0") {
            local.to_string()
        } else {
            cfg.advertised().to_string()
        };
        let raft_addr = if cfg.raft_addr.is_none() {
            advertised.clone()
        } else {
            cfg.raft_advertised().to_string()
        };

        let mut identity = match Identity::load(&dir)? {
            Some(mut id) => {
                // Addresses may change across restarts; the id never does.
                id.grpc_addr = advertised.clone();
                id.raft_addr = raft_addr.clone();
                id.admin_addr = cfg.admin_addr.clone();
                id
            }
            None => Identity {
                node_id: loop {
                    let id: u64 = rand::random();
                    if id != 0 {
                        break id;
                    }
                },
                cluster_id: None,
                joined: false,
                grpc_addr: advertised.clone(),
                raft_addr: raft_addr.clone(),
                admin_addr: cfg.admin_addr.clone(),
            },
        };
        identity.save(&dir)?;
        let id = identity.node_id;
        let pool = ChannelPool::default();
        let deadline = opts.setup_timeout.map(|t| Instant::now() + t);

        if identity.cluster_id.is_none() {
            let cluster = register(&pool, &cfg, &identity, deadline).await?;
            tracing::info!(node = id, cluster = %cluster.cluster_id, leader = %cluster.leader_grpc_address, "registered with the admin");
            identity.cluster_id = Some(cluster.cluster_id.clone());
            identity.save(&dir)?;
        }
        let cluster_id = identity.cluster_id.clone().expect("registered");

        let raft_config = Arc::new(cfg.openraft()?);
        let transfer = SnapshotTransfer {
            chunk_bytes: cfg.snapshot.chunk_bytes,
            chunk_timeout: Duration::from_millis(cfg.snapshot.chunk_timeout_ms),
            total_timeout: Duration::from_millis(cfg.snapshot.transfer_timeout_ms),
        };
        let network =
            RaftNetworkFactoryImpl::new(id, pool.clone(), opts.faults.clone(), transfer.clone());
        let raft = Raft::new(id, raft_config, network, log_store, state_machine)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;

        let state = Arc::new(NodeState {
            id,
            cluster_id: cluster_id.clone(),
            advertised: advertised.clone(),
            raft: raft.clone(),
            engine: engine.clone(),
            batcher: WriteBatcher::spawn(
                raft.clone(),
                cfg.limits.batch_max_commands,
                cfg.limits.batch_max_bytes,
                cfg.limits.max_in_flight_requests,
            ),
            pool: pool.clone(),
            faults: opts.faults.clone(),
            limits: cfg.limits.clone(),
            join_timeout: Duration::from_millis(cfg.raft.join_timeout_ms),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        // Every request has a deadline even if the caller sets none; Raft
        // snapshot streams have their own per-chunk deadlines.
        let server_timeout = Duration::from_millis(
            cfg.snapshot
                .transfer_timeout_ms
                .max(cfg.limits.request_timeout_ms),
        );
        tasks.push(tokio::spawn(serve(
            listener,
            state.clone(),
            RaftService::new(raft.clone(), transfer.chunk_timeout),
            (server_timeout, cfg.limits.max_in_flight_requests),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(notifier::run(
            raft.clone(),
            id,
            identity.admin_node(),
            cfg.admin_addr.clone(),
            pool.clone(),
            shutdown_rx.clone(),
        )));
        let node = Node {
            id,
            cluster_id: cluster_id.clone(),
            addr: advertised.clone(),
            raft: raft.clone(),
            engine,
            data_dir: dir.clone(),
            shutdown,
            tasks,
        };

        if !identity.joined {
            let result = if cfg.found_cluster {
                node.found(&pool, &cfg.admin_addr, &identity, deadline)
                    .await
            } else {
                node.join(&pool, &cfg.admin_addr, &identity, deadline).await
            };
            if let Err(e) = result {
                node.shutdown().await;
                return Err(e);
            }
            identity.joined = true;
            identity.save(&dir)?;
        } else {
            tracing::info!(node = id, cluster = %cluster_id, "restarted from the data directory");
        }
        Ok(node)
    }

    /// Initialises a one-member group, then tells the admin it may move keys
    /// here (in the background, until acknowledged).
    async fn found(
        &self,
        pool: &ChannelPool,
        admin: &str,
        identity: &Identity,
        deadline: Option<Instant>,
    ) -> Result<(), NodeError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(
                self.id,
                BasicNode {
                    addr: self.addr.clone(),
                },
            )]);
            self.raft
                .initialize(members)
                .await
                .map_err(|e| NodeError::Raft(format!("initialising the group: {e}")))?;
        }
        let wait = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(30));
        self.raft
            .wait(Some(wait))
            .state(openraft::ServerState::Leader, "founder becomes leader")
            .await
            .map_err(|e| NodeError::Raft(format!("founder did not become leader: {e}")))?;
        let cluster = Cluster {
            cluster_id: identity.cluster_id.clone().unwrap_or_default(),
            leader_grpc_address: identity.grpc_addr.clone(),
            leader_raft_address: identity.raft_addr.clone(),
        };
        let pool = pool.clone();
        let admin = admin.to_string();
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            let backoff = Backoff::default();
            let call = retry(&backoff, None, || {
                let (pool, admin, cluster) = (pool.clone(), admin.clone(), cluster.clone());
                async move {
                    let mut c = RavelClusterAdminClient::new(pool.channel(&admin)?);
                    c.initiate_data_relocation(cluster)
                        .await
                        .map_err(status_err(&admin))
                }
            });
            tokio::select! {
                r = call => match r {
                    Ok(_) => tracing::info!("admin acknowledged InitiateDataRelocation"),
                    Err(e) => tracing::error!(error = %e, "InitiateDataRelocation refused"),
                },
                _ = shutdown.changed() => {}
            }
        });
        Ok(())
    }

    /// Asks the cluster's leader (as the admin knows it) to add this node.
    async fn join(
        &self,
        pool: &ChannelPool,
        admin: &str,
        identity: &Identity,
        deadline: Option<Instant>,
    ) -> Result<(), NodeError> {
        let cluster_id = identity.cluster_id.clone().unwrap_or_default();
        let me = identity.node();
        let backoff = Backoff::default();
        let mut attempt = 0;
        loop {
            // The leader may have changed since registration: ask each time.
            let leader = admin_leader(pool, admin, &cluster_id).await;
            let result = match &leader {
                Ok(addr) => join_via(pool, addr, me.clone()).await,
                Err(e) => Err(e.clone()),
            };
            match result {
                Ok(()) => {
                    tracing::info!(node = self.id, cluster = %cluster_id, "joined the cluster");
                    return Ok(());
                }
                Err(reason) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(NodeError::Join {
                            cluster: cluster_id,
                            leader: leader.unwrap_or_default(),
                            reason,
                        });
                    }
                    tracing::warn!(%reason, "join failed; retrying");
                    tokio::time::sleep(backoff.pause(attempt)).await;
                    attempt += 1;
                }
            }
        }
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

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Reads a key from this replica's local state machine, without any
    /// consistency check: for tests and diagnostics, never for clients.
    pub fn local_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ravel_consensus::StorageError> {
        self.engine.get(key)
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Stops serving and shuts Raft down. Everything acknowledged is already
    /// on disk; the database closes (syncing its WAL) once the last task
    /// holding it ends, before this returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        for t in self.tasks {
            let _ = t.await;
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

/// Registers with the admin: found a cluster or be assigned to one.
async fn register(
    pool: &ChannelPool,
    cfg: &NodeConfig,
    identity: &Identity,
    deadline: Option<Instant>,
) -> Result<Cluster, NodeError> {
    let admin = cfg.admin_addr.clone();
    let me = identity.admin_node();
    let found = cfg.found_cluster;
    let res = retry(&Backoff::default(), deadline, || {
        let (pool, admin, me) = (pool.clone(), admin.clone(), me.clone());
        async move {
            let mut c = RavelClusterAdminClient::new(pool.channel(&admin)?);
            let r = if found {
                c.join_as_cluster_leader(me).await
            } else {
                c.join_existing_cluster(me).await
            };
            r.map(|r| r.into_inner()).map_err(status_err(&admin))
        }
    })
    .await;
    res.map_err(|e| NodeError::Registration {
        admin: cfg.admin_addr.clone(),
        reason: e.to_string(),
    })
}

async fn admin_leader(pool: &ChannelPool, admin: &str, cluster_id: &str) -> Result<String, String> {
    let mut c = RavelClusterAdminClient::new(pool.channel(admin).map_err(|e| e.to_string())?);
    let req = Cluster {
        cluster_id: cluster_id.to_string(),
        ..Default::default()
    };
    match c.get_cluster_leader(req).await {
        Ok(r) if !r.get_ref().grpc_address.is_empty() => Ok(r.into_inner().grpc_address),
        Ok(_) => Err(format!("admin knows no leader for cluster {cluster_id}")),
        Err(s) => Err(format!("admin: {:?}: {}", s.code(), s.message())),
    }
}

async fn join_via(pool: &ChannelPool, leader: &str, me: PbNode) -> Result<(), String> {
    let mut c = RavelNodeClient::new(pool.channel(leader).map_err(|e| e.to_string())?);
    match c.join(me).await {
        Ok(_) => Ok(()),
        // What existing nodes answer for a member that joins again.
        Err(s) if s.code() == tonic::Code::Unknown && s.message() == NODE_ALREADY_EXISTS => Ok(()),
        Err(s) => Err(format!("{leader}: {:?}: {}", s.code(), s.message())),
    }
}

async fn serve(
    listener: TcpListener,
    state: Arc<NodeState>,
    raft_service: RaftService,
    (timeout, max_in_flight): (Duration, usize),
    mut shutdown: watch::Receiver<bool>,
) {
    let service = NodeService::new(state);
    let router = tonic::transport::Server::builder()
        .timeout(timeout)
        .concurrency_limit_per_connection(max_in_flight)
        .tcp_nodelay(true)
        .add_service(raft_service.into_server())
        .add_service(RavelNodeServer::new(service.clone()))
        .add_service(RavelNodeExtServer::new(service));
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stop = async move {
        // Also ends if the sender is gone.
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
        tracing::error!(error = %e, "gRPC server failed");
    }
}
