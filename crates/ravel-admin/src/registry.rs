//! The admin's registry: clusters, their replicas and leaders, the hash
//! ring's members and the relocation in progress, persisted as one JSON file
//! under the admin's data directory. Every change is written (temp file,
//! fsync, rename, fsync dir) before it is acknowledged, so a restarted admin
//! knows everything it ever acknowledged.
//!
//! The registration policy (which cluster a new replica joins, what a
//! departure does) lives here as methods of [`RegistryState`], so the gRPC
//! service only translates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ravel_runtime::durable::{self, FileError};
use serde::{Deserialize, Serialize};

const FILE: &str = "registry.json";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub grpc_address: String,
    pub raft_address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterInfo {
    pub id: String,
    /// Replicas by node id (decimal string, as on the wire).
    pub members: BTreeMap<String, Member>,
    /// The node that last told us it leads.
    pub leader: Option<String>,
    /// The founder said the cluster is ready (`InitiateDataRelocation`).
    pub ready: bool,
}

impl ClusterInfo {
    pub fn leader_member(&self) -> Option<(&String, &Member)> {
        let id = self.leader.as_ref()?;
        self.members.get_key_value(id)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegistryState {
    pub version: u32,
    pub next_cluster: u64,
    pub clusters: BTreeMap<String, ClusterInfo>,
    #[serde(default)]
    pub ring: RingState,
}

/// Which clusters the hash ring routes to, and the relocation in progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RingState {
    /// The clusters partitions are assigned to (during a relocation: the
    /// clusters being moved *to*).
    pub members: Vec<String>,
    /// Clusters whose last replica asked to leave: their keys move away,
    /// then they are removed.
    pub draining: BTreeSet<String>,
    pub relocation: Option<RelocationProgress>,
    /// Bumped on every change of members or relocation, so routers know to
    /// rebuild their tables.
    pub generation: u64,
    /// Keys moved by all finished relocations.
    pub moved_keys_total: u64,
    pub relocations_done: u64,
}

/// A relocation in progress: the partitions still moving between clusters
/// and how far each source→destination pair has got, persisted step by step
/// so that a restarted admin resumes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelocationProgress {
    pub id: u64,
    pub from_members: Vec<String>,
    pub to_members: Vec<String>,
    /// Partitions still moving, with their old and new owner.
    pub pending: BTreeMap<u32, PartitionMove>,
    /// Partitions that had to move when the relocation started.
    pub total_partitions: u32,
    /// Listing cursor per source→destination pair ("from->to").
    pub cursors: BTreeMap<String, Vec<u8>>,
    /// Keys copied so far.
    pub moved_keys: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionMove {
    pub from: String,
    pub to: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("admin state: {0}")]
    File(#[from] FileError),
    #[error("admin state {path}: format version {found}, this build reads {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("admin state: persisting was interrupted: {0}")]
    Interrupted(String),
}

/// The registry and where it lives. Readers take a cheap snapshot (an
/// `Arc` swapped on every change); writers are serialised and persist off
/// the async worker threads before the change becomes visible.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    /// The current state; replaced, never mutated in place.
    current: Mutex<Arc<RegistryState>>,
    /// Serialises updates (read, change, persist, publish).
    writer: tokio::sync::Mutex<()>,
    /// Bumped after every published change, for those who wait for one.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Registry {
    /// Opens the registry in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(dir).map_err(|source| FileError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE);
        let state = match durable::read_json::<RegistryState>(&path)? {
            None => RegistryState {
                version: VERSION,
                ..Default::default()
            },
            Some(s) if s.version != VERSION => {
                return Err(RegistryError::Version {
                    path,
                    found: s.version,
                })
            }
            Some(s) => s,
        };
        Ok(Self {
            path,
            current: Mutex::new(Arc::new(state)),
            writer: tokio::sync::Mutex::new(()),
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The current state (cheap: shared, immutable).
    pub fn snapshot(&self) -> Arc<RegistryState> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies `f` to a copy of the state and, if it changed anything,
    /// persists the result before publishing it and returning. If
    /// persisting fails the published state is left unchanged.
    pub async fn update<R>(
        &self,
        f: impl FnOnce(&mut RegistryState) -> R,
    ) -> Result<R, RegistryError> {
        let _writer = self.writer.lock().await;
        let current = self.snapshot();
        let mut next = (*current).clone();
        let r = f(&mut next);
        if next != *current {
            let next = Arc::new(next);
            let (path, state) = (self.path.clone(), next.clone());
            tokio::task::spawn_blocking(move || durable::write_json(&path, &*state))
                .await
                .map_err(|e| RegistryError::Interrupted(e.to_string()))??;
            *self.current.lock().unwrap_or_else(|p| p.into_inner()) = next;
            self.changes.send_modify(|v| *v += 1);
        }
        Ok(r)
    }

    /// A receiver that sees every published change.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// Why a replica could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("no cluster exists yet: start a node that founds one (--leader) first")]
    NoCluster,
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
}

/// What a replica's `LeaveCluster` must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// Not registered (any more): nothing to do.
    Unknown,
    /// Remove it from its cluster (the last replica removes the cluster).
    Remove { cluster: String },
    /// The last replica of a cluster that still holds keys: move them to
    /// the other clusters first.
    Drain { cluster: String },
    /// The last replica of the only cluster serving keys: refused.
    OnlyCluster { cluster: String },
}

impl RegistryState {
    /// The clusters that should be on the ring: ready and not draining.
    pub fn desired_members(&self) -> Vec<String> {
        self.clusters
            .values()
            .filter(|c| c.ready && !self.ring.draining.contains(&c.id))
            .map(|c| c.id.clone())
            .collect()
    }

    /// The cluster a node is registered in.
    pub fn cluster_of(&self, node_id: &str) -> Option<&ClusterInfo> {
        self.clusters
            .values()
            .find(|c| c.members.contains_key(node_id))
    }

    /// Registers a replica: a node that registers again (it crashed before
    /// it saved the answer) gets the same cluster; a new one the cluster
    /// with the fewest replicas that is not draining.
    pub fn register_replica(
        &mut self,
        node_id: &str,
        member: Member,
    ) -> Result<&ClusterInfo, RegisterError> {
        let target = match self.cluster_of(node_id) {
            Some(c) => c.id.clone(),
            None => self
                .clusters
                .values()
                .filter(|c| !self.ring.draining.contains(&c.id))
                .min_by(|a, b| a.members.len().cmp(&b.members.len()).then(a.id.cmp(&b.id)))
                .map(|c| c.id.clone())
                .ok_or(RegisterError::NoCluster)?,
        };
        let c = self
            .clusters
            .get_mut(&target)
            .ok_or_else(|| RegisterError::UnknownCluster(target.clone()))?;
        c.members.insert(node_id.to_string(), member);
        tracing::info!(node = %node_id, cluster = %target, replicas = c.members.len(), "replica registered");
        Ok(c)
    }

    /// Registers a node that founds a new cluster (or returns the cluster
    /// it already founded).
    pub fn found_cluster(&mut self, node_id: &str, member: Member) -> &ClusterInfo {
        if let Some(id) = self.cluster_of(node_id).map(|c| c.id.clone()) {
            return &self.clusters[&id];
        }
        self.next_cluster += 1;
        let id = format!("cluster-{}", self.next_cluster);
        tracing::info!(node = %node_id, cluster = %id, "new cluster registered");
        self.clusters.entry(id.clone()).or_insert(ClusterInfo {
            id,
            members: [(node_id.to_string(), member)].into(),
            leader: Some(node_id.to_string()),
            ready: false,
        })
    }

    /// Records that `node_id` leads `cluster_id`.
    pub fn record_leader(
        &mut self,
        cluster_id: &str,
        node_id: &str,
        member: Member,
    ) -> Result<(), RegisterError> {
        let c = self
            .clusters
            .get_mut(cluster_id)
            .ok_or_else(|| RegisterError::UnknownCluster(cluster_id.to_string()))?;
        c.members.insert(node_id.to_string(), member.clone());
        if c.leader.as_deref() != Some(node_id) {
            tracing::info!(cluster = %c.id, leader = %node_id, addr = %member.grpc_address, "leader changed");
        }
        c.leader = Some(node_id.to_string());
        Ok(())
    }

    /// The founder says its cluster may take keys.
    pub fn mark_ready(&mut self, cluster_id: &str) -> Result<(), RegisterError> {
        let c = self
            .clusters
            .get_mut(cluster_id)
            .ok_or_else(|| RegisterError::UnknownCluster(cluster_id.to_string()))?;
        if !c.ready {
            tracing::info!(cluster = %c.id, "cluster ready to serve");
        }
        c.ready = true;
        Ok(())
    }

    /// What a departure of `node_id` must do.
    pub fn departure(&self, node_id: &str) -> Departure {
        let Some(cluster) = self.cluster_of(node_id) else {
            return Departure::Unknown;
        };
        let id = cluster.id.clone();
        let last = cluster.members.len() == 1;
        let on_ring = self.ring.members.contains(&id);
        let moving = self
            .ring
            .relocation
            .as_ref()
            .is_some_and(|r| r.pending.values().any(|m| m.from == id || m.to == id));
        if !(last && (on_ring || moving)) {
            return Departure::Remove { cluster: id };
        }
        let others = self
            .desired_members()
            .into_iter()
            .filter(|c| *c != id)
            .count();
        if others == 0 {
            Departure::OnlyCluster { cluster: id }
        } else {
            Departure::Drain { cluster: id }
        }
    }

    /// Removes `node_id` from `cluster_id`; the last replica removes the
    /// cluster.
    pub fn remove_replica(&mut self, cluster_id: &str, node_id: &str) {
        let Some(c) = self.clusters.get_mut(cluster_id) else {
            return;
        };
        c.members.remove(node_id);
        if c.leader.as_deref() == Some(node_id) {
            c.leader = None;
        }
        tracing::info!(node = %node_id, cluster = %cluster_id, replicas = c.members.len(), "replica left");
        if c.members.is_empty() {
            self.clusters.remove(cluster_id);
            self.ring.draining.remove(cluster_id);
            tracing::info!(cluster = %cluster_id, "last replica left; cluster removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(a: &str) -> Member {
        Member {
            grpc_address: a.into(),
            raft_address: a.into(),
        }
    }

    #[tokio::test]
    async fn survives_reopen_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        r.update(|s| {
            s.found_cluster("7", member("a"));
        })
        .await
        .unwrap();
        let again = Registry::open(dir.path()).unwrap();
        assert_eq!(again.snapshot(), r.snapshot());
        assert_eq!(again.snapshot().cluster_of("7").unwrap().id, "cluster-1");
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        let err = Registry::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("registry.json"), "{err}");
    }

    #[test]
    fn replicas_go_to_the_smallest_cluster_and_register_idempotently() {
        let mut s = RegistryState::default();
        assert!(matches!(
            s.register_replica("1", member("a")),
            Err(RegisterError::NoCluster)
        ));
        s.found_cluster("1", member("a"));
        s.found_cluster("2", member("b"));
        assert_eq!(
            s.register_replica("3", member("c")).unwrap().id,
            "cluster-1"
        );
        assert_eq!(
            s.register_replica("4", member("d")).unwrap().id,
            "cluster-2"
        );
        assert_eq!(
            s.register_replica("3", member("c")).unwrap().id,
            "cluster-1"
        );
        assert_eq!(s.found_cluster("1", member("a")).id, "cluster-1");
        s.ring.draining.insert("cluster-1".into());
        assert_eq!(
            s.register_replica("5", member("e")).unwrap().id,
            "cluster-2"
        );
    }
}
