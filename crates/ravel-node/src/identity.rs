//! Who this replica is, kept in its data directory as a small JSON file next
//! to the database, so `ravel-node kill` can read it even while a running
//! node holds the database lock.

use std::path::{Path, PathBuf};

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
    pub grpc_addr: String,
    pub raft_addr: String,
    pub admin_addr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

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
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IdentityError::Io { path, source }),
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| IdentityError::Corrupt {
                        path,
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Writes the identity durably: temp file, fsync, rename, fsync dir.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        let path = Self::path(dir);
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        let tmp = dir.join(format!("{FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).expect("identity serialises");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

/// Records the running process's pid in `dir`, so `kill` can stop it.
pub fn write_pid(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join(PID_FILE), std::process::id().to_string())
}

pub fn read_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn remove_pid(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(PID_FILE));
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
