//! The steps of [`Node::start`] that run once per start or once per
//! replica: opening the data directory, binding, the identity, founding or
//! joining the cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use openraft::BasicNode;
use ravel_consensus::DataDir;
use ravel_proto::admin::Cluster;
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_proto::NODE_ALREADY_EXISTS;
use ravel_transport::retry::{Attempts, Backoff};
use ravel_transport::ChannelPool;
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::{Bound, Node, NodeError, OpenedDir};
use crate::admin_link::AdminLink;
use crate::config::NodeConfig;
use crate::identity::{self, Identity};

impl Node {
    /// Initialises a one-member group and waits until this node leads it
    /// (the admin is told the cluster may take keys by [`Node::announce`]).
    pub(super) async fn found(&self, attempts: Attempts) -> Result<(), NodeError> {
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
        let wait = attempts.remaining().unwrap_or(Duration::from_secs(30));
        self.raft
            .wait(Some(wait))
            .state(openraft::ServerState::Leader, "founder becomes leader")
            .await
            .map_err(|e| NodeError::Raft(format!("founder did not become leader: {e}")))?;
        Ok(())
    }

    /// Sends `InitiateDataRelocation` (the founded cluster may take keys)
    /// in the background until the admin acknowledges it, then records that
    /// in the identity file: a founder that crashes or restarts before the
    /// acknowledgement sends it again on its next start.
    pub(super) fn announce(&self, admin: &AdminLink, identity: &Identity, dir: &Path) {
        let cluster = Cluster {
            cluster_id: identity.cluster_id.clone().unwrap_or_default(),
            leader_grpc_address: identity.grpc_addr.clone(),
            leader_raft_address: identity.raft_addr.clone(),
        };
        let admin = admin.clone();
        let dir = dir.to_path_buf();
        let attempts = Attempts::forever().cancel_on(self.shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = admin.cluster_ready(&cluster, attempts).await {
                tracing::error!(error = %e, "InitiateDataRelocation not acknowledged; sent again at the next start");
                return;
            }
            tracing::info!("admin acknowledged InitiateDataRelocation");
            let saved = Identity::load(&dir).and_then(|id| match id {
                Some(mut id) => {
                    id.announced = true;
                    id.save(&dir)
                }
                None => Ok(()), // removed (kill) meanwhile
            });
            if let Err(e) = saved {
                tracing::warn!(error = %e, "recording the acknowledged InitiateDataRelocation");
            }
        });
    }

    /// Asks the cluster's leader (as the admin knows it) to add this node.
    pub(super) async fn join(
        &self,
        admin: &AdminLink,
        identity: &Identity,
        pool: &ChannelPool,
        mut attempts: Attempts,
    ) -> Result<(), NodeError> {
        let cluster_id = identity.cluster_id.clone().unwrap_or_default();
        let me = identity.node();
        loop {
            // The leader may have changed since registration: ask each time.
            let one = Attempts::new(Backoff::default(), Some(Instant::now()));
            let (leader, result) = match admin.cluster_leader(&cluster_id, one).await {
                Ok(l) => {
                    let r = join_via(pool, &l.grpc_address, me.clone(), self.join_timeout).await;
                    (l.grpc_address, r)
                }
                Err(e) => (String::new(), Err(e.to_string())),
            };
            match result {
                Ok(()) => {
                    tracing::info!(node = self.id, cluster = %cluster_id, "joined the cluster");
                    return Ok(());
                }
                Err(reason) => {
                    tracing::warn!(%reason, "join failed; retrying");
                    if !attempts.pause().await {
                        return Err(NodeError::Join {
                            cluster: cluster_id,
                            leader,
                            reason,
                        });
                    }
                }
            }
        }
    }
}

/// Phase 1: take the directory's pid lock (a second process is refused,
/// naming the holder), then open the database, creating it on first start.
pub(super) fn open_data_dir(dir: &Path, cfg: &NodeConfig) -> Result<OpenedDir, NodeError> {
    std::fs::create_dir_all(dir).map_err(|e| NodeError::DataDir {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let pid_lock = identity::lock_pid(dir)?;
    let (log_store, state_machine) =
        DataDir::new(dir).open_with(cfg.snapshot.chunk_bytes, cfg.storage.budget())?;
    let log_store = log_store.with_max_append_bytes(cfg.raft.max_append_bytes);
    Ok(OpenedDir {
        pid_lock,
        log_store,
        state_machine,
    })
}

/// Phase 2: the listener, and the addresses to advertise.
pub(super) async fn bind(
    cfg: &NodeConfig,
    listener: Option<TcpListener>,
) -> Result<Bound, NodeError> {
    let bind_err = |source| NodeError::Bind {
        addr: cfg.listen_addr.clone(),
        source,
    };
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(&cfg.listen_addr)
            .await
            .map_err(bind_err)?,
    };
    let local: SocketAddr = listener.local_addr().map_err(bind_err)?;
    // With port 0 the advertised address is the one we actually got.
    let advertised = if cfg.advertise_addr.is_none() && cfg.listen_addr.ends_with(":0") {
        local.to_string()
    } else {
        cfg.advertised().to_string()
    };
    let raft_addr = match cfg.raft_addr {
        None => advertised.clone(),
        Some(_) => cfg.raft_advertised().to_string(),
    };
    Ok(Bound {
        listener,
        advertised,
        raft_addr,
    })
}

/// Phase 3: who this replica is. Addresses may change across restarts; the
/// id never does.
pub(super) fn load_identity(
    dir: &Path,
    cfg: &NodeConfig,
    bound: &Bound,
) -> Result<Identity, NodeError> {
    let identity = match Identity::load(dir)? {
        Some(mut id) => {
            id.grpc_addr = bound.advertised.clone();
            id.raft_addr = bound.raft_addr.clone();
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
            announced: true,
            grpc_addr: bound.advertised.clone(),
            raft_addr: bound.raft_addr.clone(),
            admin_addr: cfg.admin_addr.clone(),
        },
    };
    identity.save(dir)?;
    Ok(identity)
}

/// `Join` on `leader`; a duplicate join counts as success. The leader
/// answers once this replica has caught up, so the call may take up to the
/// join timeout.
async fn join_via(
    pool: &ChannelPool,
    leader: &str,
    me: ravel_proto::node::Node,
    timeout: Duration,
) -> Result<(), String> {
    let ch = pool.channel(leader).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(me);
    req.set_timeout(timeout);
    let mut client = RavelNodeClient::new(ch);
    let res = match tokio::time::timeout(timeout, client.join(req)).await {
        Err(_) => return Err(format!("{leader}: no answer within {timeout:?}")),
        Ok(r) => r,
    };
    match res {
        Ok(_) => Ok(()),
        // What existing nodes answer for a member that joins again.
        Err(s) if s.code() == tonic::Code::Unknown && s.message() == NODE_ALREADY_EXISTS => Ok(()),
        Err(s) => Err(format!("{leader}: {:?}: {}", s.code(), s.message())),
    }
}
