//! Who this replica is, kept in its data directory as a small JSON file next
//! to the database, so `ravel-node kill` can read it even while a running
//! node holds the database lock.

use std::path::{Path, PathBuf};

use ravel_runtime::durable;
use ravel_runtime::lock::{DirLock, LockError};
use serde::{Deserialize, Serialize};

const FILE: &str = "identity.json";
const PID_FILE: &str = "ravel-node.pid";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// Random non-zero id, chosen on first start and never changed.
    pub node_id: u64,
    /// The cluster the admin assigned; `None` until registration succeeded.
    pub cluster_id: Option<String>,
    /// Whether this replica is in its cluster's Raft group (founded it, or
    /// its join was accepted). A node that crashed between registering and
    /// joining joins again on restart.
    pub joined: bool,
    /// For a replica that founded its cluster: whether the admin has
    /// acknowledged `InitiateDataRelocation` (the cluster may take keys).
    /// Until it has, every start sends it again. Identities written before
    /// this field existed count as acknowledged.
    #[serde(default = "acknowledged")]
    pub announced: bool,
    pub grpc_addr: String,
    pub raft_addr: String,
    pub admin_addr: String,
}

fn acknowledged() -> bool {
    true
}

/// The identity file could not be read or written.
pub type IdentityError = ravel_runtime::durable::FileError;

impl Identity {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// This node as the admin service describes nodes.
    pub fn admin_node(&self) -> ravel_proto::admin::Node {
        ravel_proto::admin::Node {
            node_id: self.node_id.to_string(),
            grpc_address: self.grpc_addr.clone(),
            raft_address: self.raft_addr.clone(),
            cluster_id: self.cluster_id.clone().unwrap_or_default(),
        }
    }

    /// This node as the node service describes nodes (`Join`, `Leave`).
    pub fn node(&self) -> ravel_proto::node::Node {
        let n = self.admin_node();
        ravel_proto::node::Node {
            node_id: n.node_id,
            grpc_address: n.grpc_address,
            raft_address: n.raft_address,
            cluster_id: n.cluster_id,
        }
    }

    /// The identity stored in `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Self>, IdentityError> {
        durable::read_json(&Self::path(dir))
    }

    /// Writes the identity durably (temp file, fsync, rename, fsync dir).
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        durable::write_json(&Self::path(dir), self)
    }
}

/// Locks `dir` for this process and records its pid, so `ravel-node kill`
/// can stop it (and a second node on the same directory is refused with
/// the holder's pid). Held until the returned lock is dropped.
pub fn lock_pid(dir: &Path) -> Result<DirLock, LockError> {
    DirLock::acquire(&dir.join(PID_FILE))
}

/// The pid of the live node process holding `dir`, if any. A pid file left
/// behind by a crashed process names nobody, so a reused pid is never
/// signalled.
pub fn running_pid(dir: &Path) -> Result<Option<i32>, LockError> {
    DirLock::holder(&dir.join(PID_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), None);
        let id = Identity {
            node_id: 42,
            cluster_id: Some("cluster-1".into()),
            joined: true,
            announced: true,
            grpc_addr: "127.0.0.1:1".into(),
            raft_addr: "127.0.0.1:1".into(),
            admin_addr: "127.0.0.1:2".into(),
        };
        id.save(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), Some(id));
        std::fs::write(Identity::path(dir.path()), b"{not json").unwrap();
        let err = Identity::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("identity.json"), "{err}");
    }
}
