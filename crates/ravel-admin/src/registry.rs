//! The admin's registry of clusters, their replicas and leaders, persisted
//! as one JSON file under the admin's data directory. Every change is
//! written (temp file, fsync, rename, fsync dir) before it is acknowledged,
//! so a restarted admin knows everything it ever acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    pub relocation: Option<Relocation>,
    /// Bumped on every change of members or relocation, so routers know to
    /// rebuild their tables.
    pub generation: u64,
    /// Keys moved by all finished relocations.
    pub moved_keys_total: u64,
    pub relocations_done: u64,
}

/// A move of partitions between clusters, persisted step by step so that a
/// restarted admin resumes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Relocation {
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
    #[error("admin state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin state {path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The registry and where it lives. All access goes through one mutex: the
/// admin's control plane is small and every change is fsynced anyway.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    state: Mutex<RegistryState>,
}

impl Registry {
    /// Opens the registry in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        let io = |source| RegistryError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(FILE);
        let state = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RegistryState {
                version: VERSION,
                ..Default::default()
            },
            Err(source) => return Err(RegistryError::Io { path, source }),
            Ok(bytes) => {
                let s: RegistryState =
                    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if s.version != VERSION {
                    return Err(RegistryError::Corrupt {
                        path,
                        reason: format!("format version {}, this build reads {VERSION}", s.version),
                    });
                }
                s
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> RegistryState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies `f` to the state and persists the result before returning.
    /// If persisting fails the in-memory state is left unchanged.
    pub fn update<R>(&self, f: impl FnOnce(&mut RegistryState) -> R) -> Result<R, RegistryError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = guard.clone();
        let r = f(&mut next);
        if next != *guard {
            self.persist(&next)?;
            *guard = next;
        }
        Ok(r)
    }

    fn persist(&self, state: &RegistryState) -> Result<(), RegistryError> {
        let path = self.dir.join(FILE);
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let io = |source| RegistryError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(state).expect("registry serialises");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        Ok(())
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        r.update(|s| {
            s.next_cluster = 1;
            s.clusters.insert(
                "cluster-1".into(),
                ClusterInfo {
                    id: "cluster-1".into(),
                    members: BTreeMap::from([(
                        "7".into(),
                        Member {
                            grpc_address: "a".into(),
                            raft_address: "a".into(),
                        },
                    )]),
                    leader: Some("7".into()),
                    ready: true,
                },
            );
        })
        .unwrap();
        let again = Registry::open(dir.path()).unwrap();
        assert_eq!(again.snapshot(), r.snapshot());
        assert_eq!(again.snapshot().cluster_of("7").unwrap().id, "cluster-1");
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        let err = Registry::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("registry.json"), "{err}");
    }
}
