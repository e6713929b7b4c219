//! Routing: from a key to the cluster that owns it, and from a cluster to
//! its leader. A stale or dead leader is replaced by asking the replicas
//! (`IsLeader`), within the request's deadline, with the one backoff policy.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ravel_proto::ext::ravel_node_ext_client::RavelNodeExtClient;
use ravel_proto::limits::MAX_MESSAGE_BYTES;
use ravel_proto::metadata;
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_proto::node::{Command, Void};
use ravel_transport::retry::Attempts;
use ravel_transport::session::Ticket;
use ravel_transport::ChannelPool;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::registry::{Registry, RegistryState};
use crate::ring::HashRing;

/// Where a key lives right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub partition: u32,
    /// Owner under the current ring: all writes go here.
    pub owner: String,
    /// The previous owner while the key may still be there: its partition
    /// is being moved and the mover has not passed the key yet. Reads fall
    /// back to it; deletes remove the key there too.
    pub previous: Option<String>,
    /// The ring generation this route comes from; writes carry it, so an
    /// owner fenced since refuses them ([`metadata::RING_EPOCH`]).
    pub epoch: u64,
}

/// What a write sends next to its body: its identity (the same on every
/// attempt, so a retry takes effect once) and the ring generation it was
/// routed by.
#[derive(Clone, Copy)]
pub struct Write<'a> {
    pub ticket: &'a Ticket,
    pub epoch: u64,
}

/// The owners of every partition under one ring generation.
#[derive(Debug, Default)]
struct Table {
    generation: u64,
    owners: Vec<String>,
    moving: HashMap<u32, String>,
}

/// Routes keys and calls cluster leaders.
pub struct Router {
    /// Where ring members and leaders come from (shared with `AdminState`).
    registry: Arc<Registry>,
    /// Channels to nodes; the admin's only one.
    pool: ChannelPool,
    ring: HashRing,
    /// Partition owners, rebuilt when the ring's generation changes.
    table: Mutex<Arc<Table>>,
    /// Calls by cluster and outcome.
    metrics: Arc<crate::metrics::AdminMetrics>,
}

/// A cluster could not be reached within the deadline, or answered with a
/// status that is final.
#[derive(Debug, Clone)]
pub enum CallError {
    /// No leader answered in time (or no cluster serves the key).
    Unavailable(String),
    /// The node answered with this status.
    Status(Status),
}

impl Router {
    pub fn new(
        registry: Arc<Registry>,
        pool: ChannelPool,
        ring: HashRing,
        metrics: Arc<crate::metrics::AdminMetrics>,
    ) -> Self {
        Self {
            metrics,
            registry,
            pool,
            ring,
            table: Mutex::new(Arc::new(Table {
                generation: u64::MAX,
                ..Default::default()
            })),
        }
    }

    pub fn ring(&self) -> &HashRing {
        &self.ring
    }

    pub fn pool(&self) -> &ChannelPool {
        &self.pool
    }

    fn table(&self, state: &RegistryState) -> Arc<Table> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if t.generation != state.ring.generation {
            let moving = state
                .ring
                .relocation
                .as_ref()
                .map(|r| {
                    r.pending
                        .iter()
                        .map(|(p, m)| (*p, m.from.clone()))
                        .collect()
                })
                .unwrap_or_default();
            *t = Arc::new(Table {
                generation: state.ring.generation,
                owners: self.ring.owners(&state.ring.members),
                moving,
            });
        }
        t.clone()
    }

    /// The route of `key`, or `None` when no cluster serves yet.
    ///
    /// A key of a moving partition that the mover has already passed (at
    /// or before its persisted cursor) is served by the new owner alone:
    /// the mover copied it there, if the old owner held it, before the
    /// cursor was saved, and the old owner is fenced, so it cannot have
    /// gained the key since. What the old owner still holds of it is read
    /// by no one, and removed when the pair's move ends. Such a read costs
    /// one cluster, not two.
    pub fn route(&self, key: &[u8]) -> Option<Route> {
        let state = self.registry.snapshot();
        let t = self.table(&state);
        let partition = ravel_proto::partition_of(key, self.ring.partitions);
        let owner = t.owners.get(partition as usize)?.clone();
        let previous = t
            .moving
            .get(&partition)
            .filter(|from| !state.moved_past(from, &owner, partition, key))
            .cloned();
        Some(Route {
            partition,
            previous,
            owner,
            epoch: t.generation,
        })
    }

    /// The leader address the registry has for `cluster`.
    fn known_leader(&self, cluster: &str) -> Option<String> {
        let s = self.registry.snapshot();
        s.clusters
            .get(cluster)?
            .leader_member()
            .map(|(_, m)| m.grpc_address.clone())
    }

    /// Resolves with the new leader's address once the registry's leader
    /// of `cluster` changes (from what it is now) to one other than `addr`.
    async fn leader_moves_from(&self, cluster: &str, addr: &str) -> String {
        let mut changes = self.registry.changes();
        let before = self.known_leader(cluster);
        loop {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            let now = self.known_leader(cluster);
            if let Some(l) = now.filter(|l| l != addr && Some(l) != before.as_ref()) {
                return l;
            }
        }
    }

    /// Asks each replica of `cluster` whether it leads; records the answer.
    async fn discover_leader(&self, cluster: &str) -> Option<String> {
        let state = self.registry.snapshot();
        let members = state.clusters.get(cluster)?.members.clone();
        for (id, m) in members {
            let Ok(ch) = self.pool.channel(&m.grpc_address) else {
                continue;
            };
            let mut req = tonic::Request::new(Void {});
            req.set_timeout(Duration::from_millis(1500));
            if let Ok(r) = RavelNodeClient::new(ch).is_leader(req).await {
                if r.get_ref().leader {
                    let _ = self
                        .registry
                        .update(|s| {
                            if let Some(c) = s.clusters.get_mut(cluster) {
                                c.leader = Some(id.clone());
                            }
                        })
                        .await;
                    tracing::info!(%cluster, leader = %id, addr = %m.grpc_address, "found leader by asking the replicas");
                    return Some(m.grpc_address);
                }
            }
        }
        None
    }

    /// Calls `f` on the leader of `cluster` until it answers or `deadline`
    /// passes. Unavailability and "not the leader" are retried (following
    /// the leader a node names, or asking the replicas); other statuses are
    /// final.
    pub async fn call<T, F, Fut>(
        &self,
        cluster: &str,
        deadline: Instant,
        f: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let r = self.call_leader(cluster, deadline, f).await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(CallError::Status(_)) => "status",
            Err(CallError::Unavailable(_)) => "unavailable",
        };
        self.metrics.cluster_call(cluster, outcome);
        r
    }

    async fn call_leader<T, F, Fut>(
        &self,
        cluster: &str,
        deadline: Instant,
        mut f: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut attempts = Attempts::until(deadline);
        let mut addr = self.known_leader(cluster);
        let mut last = String::from("no leader known");
        loop {
            if addr.is_none() {
                addr = self.discover_leader(cluster).await;
            }
            if let Some(a) = addr.clone() {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let ch = self
                    .pool
                    .channel(&a)
                    .map_err(|e| CallError::Unavailable(e.to_string()))?;
                let answer = tokio::select! {
                    r = tokio::time::timeout(remaining, f(ch, remaining)) => r,
                    // The cluster reported a new leader while this call
                    // waited on the old one (cut off, paused): go there now.
                    // Writes carry their request id, so a write that did
                    // reach the old leader still takes effect once.
                    new = self.leader_moves_from(cluster, &a) => {
                        last = format!("{a}: leadership moved to {new}");
                        addr = Some(new);
                        continue;
                    }
                };
                match answer {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(s))
                        if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded)
                            || ravel_transport::is_broken_call(&s) =>
                    {
                        last = format!("{a}: {}", s.message());
                        // A node that knows the leader says so.
                        addr = s
                            .metadata()
                            .get(metadata::LEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                            .filter(|l| *l != a);
                    }
                    Ok(Err(s)) => return Err(CallError::Status(s)),
                    Err(_) => last = format!("{a}: no answer before the deadline"),
                }
            }
            if !attempts.pause().await {
                return Err(CallError::Unavailable(format!(
                    "cluster {cluster}: no leader answered within the deadline ({last})"
                )));
            }
            if addr.is_none() {
                addr = self
                    .discover_leader(cluster)
                    .await
                    .or_else(|| self.known_leader(cluster));
            }
        }
    }

    /// `Run` on the leader of `cluster`. A write passes its [`Write`]: every
    /// attempt carries the same request id, so a retry of an attempt whose
    /// answer was lost does not take effect twice, and its ring generation.
    pub async fn run(
        &self,
        cluster: &str,
        op: &str,
        key: &[u8],
        value: &[u8],
        write: Option<Write<'_>>,
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        self.call(cluster, deadline, |ch, remaining| {
            let mut req = tonic::Request::new(Command {
                operation: op.to_string(),
                key: key.to_vec(),
                value: value.to_vec(),
            });
            req.set_timeout(remaining);
            if let Some(w) = write {
                w.ticket.id().insert(req.metadata_mut());
                metadata::insert_ring_epoch(req.metadata_mut(), w.epoch);
            }
            async move {
                RavelNodeClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
                    .run(req)
                    .await
                    .map(|r| r.into_inner().data)
            }
        })
        .await
    }

    /// A client for the Ravel-specific node service (callers go through
    /// [`Router::call`]).
    pub fn ext(ch: Channel) -> RavelNodeExtClient<Channel> {
        RavelNodeExtClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}
