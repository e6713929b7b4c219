//! The admin's registry: clusters, their replicas and leaders, the hash
//! ring's members and the relocation in progress, persisted as one JSON file
//! under the admin's data directory. Every change is written (temp file,
//! fsync, rename, fsync dir) before it is acknowledged, so a restarted admin
//! knows everything it ever acknowledged.
//!
//! The registration policy (which cluster a new replica joins) lives here
//! as methods of [`RegistryState`], what a departure does in
//! `departure.rs`, so the gRPC service only translates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ravel_runtime::durable::{self, FileError};
use serde::{Deserialize, Serialize};

const FILE: &str = "registry.json";
const LOCK_FILE: &str = "admin.lock";
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
    /// The node that last told us it leads...
    pub leader: Option<String>,
    /// ...and the term it said it leads in (0: not said).
    #[serde(default)]
    pub leader_term: u64,
    /// The founder said the cluster is ready (`InitiateDataRelocation`).
    pub ready: bool,
}

impl ClusterInfo {
    pub fn leader_member(&self) -> Option<(&String, &Member)> {
        let id = self.leader.as_ref()?;
        self.members.get_key_value(id)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RegistryState {
    pub version: u32,
    pub next_cluster: u64,
    pub clusters: BTreeMap<String, ClusterInfo>,
    #[serde(default)]
    pub ring: RingState,
}

/// Which clusters the hash ring routes to, and the relocation in progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RingState {
    /// The ring parameters every key was placed with (stored at the first
    /// start; a later start with other parameters is refused).
    #[serde(default)]
    pub params: Option<crate::ring::HashRing>,
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
    /// Listing cursor per source→destination pair ("from->to"), in
    /// user-key order over all the pair's partitions, as admins before
    /// partition-by-partition moves saved it. Read, never written: an
    /// admin that finds one starts that pair's copy over (see
    /// `relocation.rs`), and saves [`RelocationProgress::pair_cursors`].
    #[serde(default)]
    pub cursors: BTreeMap<String, Vec<u8>>,
    /// How far the mover of each pair ("from->to") has got.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pair_cursors: BTreeMap<String, PairCursor>,
    /// Keys copied so far.
    pub moved_keys: u64,
    /// Moves that are over but whose tombstones are still on their
    /// destination: recorded in the same update that ends the move, removed
    /// once swept, so an admin stopped in between sweeps after its restart.
    /// The relocation finishes only when none is left.
    #[serde(default)]
    pub sweeps: Vec<Sweep>,
}

/// How far the mover of one pair has got. It moves the pair's partitions
/// one at a time, in ascending order, each in key order: every key of the
/// partitions before `partition` is passed, and of `partition` every key up
/// to and including `key`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairCursor {
    pub partition: u32,
    pub key: Vec<u8>,
}

impl PairCursor {
    /// Whether the key `key` of partition `partition` is at or before the
    /// cursor.
    pub fn passed(&self, partition: u32, key: &[u8]) -> bool {
        partition < self.partition || (partition == self.partition && key <= self.key.as_slice())
    }
}

impl RelocationProgress {
    /// The key of [`RelocationProgress::pair_cursors`] for the pair
    /// `from`→`to`.
    pub fn pair_key(from: &str, to: &str) -> String {
        format!("{from}->{to}")
    }

    /// Whether the mover of `from`→`to` has finished with `key` (of
    /// partition `partition`): copied it to `to`, if `from` held it, and
    /// saved its cursor past it.
    pub fn moved_past(&self, from: &str, to: &str, partition: u32, key: &[u8]) -> bool {
        !self.pair_cursors.is_empty()
            && self
                .pair_cursors
                .get(&Self::pair_key(from, to))
                .is_some_and(|cursor| cursor.passed(partition, key))
    }
}

impl RegistryState {
    /// See [`RelocationProgress::moved_past`]; false with no relocation.
    pub fn moved_past(&self, from: &str, to: &str, partition: u32, key: &[u8]) -> bool {
        self.ring
            .relocation
            .as_ref()
            .is_some_and(|r| r.moved_past(from, to, partition, key))
    }
}

/// Tombstones to remove from `cluster`'s `partitions` (see
/// [`RelocationProgress::sweeps`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sweep {
    pub cluster: String,
    pub partitions: Vec<u32>,
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
    /// Another admin process uses the same state directory.
    #[error("admin state: {0}")]
    Locked(#[from] ravel_runtime::lock::LockError),
    /// The configured ring parameters differ from those the keys were
    /// placed with.
    #[error("admin state {path}: {detail}")]
    RingMismatch { path: PathBuf, detail: String },
}

/// The registry and where it lives. Readers take a cheap snapshot (an
/// `Arc` swapped on every change); writers are serialised and persist off
/// the async worker threads before the change becomes visible.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    /// Held while the registry is open: one admin per state directory.
    _lock: ravel_runtime::lock::DirLock,
    /// The current state; replaced, never mutated in place.
    current: Mutex<Arc<RegistryState>>,
    /// Serialises updates (read, change, persist, publish).
    writer: tokio::sync::Mutex<()>,
    /// Bumped after every published change, for those who wait for one.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Registry {
    /// Opens the registry in `dir` (created if missing), taking the
    /// directory's lock: a second admin on the same directory is refused,
    /// naming the process that holds it.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(dir).map_err(|source| FileError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = ravel_runtime::lock::DirLock::acquire(&dir.join(LOCK_FILE))?;
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
            _lock: lock,
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

    /// Checks the configured ring parameters against those the keys were
    /// placed with, storing them on first use. Other parameters would route
    /// every key elsewhere (reads would find nothing), so they are refused.
    pub async fn adopt_ring(&self, ring: crate::ring::HashRing) -> Result<(), RegistryError> {
        let path = self.path.clone();
        self.update(|s| match s.ring.params {
            None => {
                s.ring.params = Some(ring);
                Ok(())
            }
            Some(stored) if stored == ring => Ok(()),
            Some(stored) => Err(RegistryError::RingMismatch {
                path,
                detail: format!(
                    "keys were placed with ring parameters partitions={} load={} vnodes={}, \
                     the configuration says partitions={} load={} vnodes={}; changing them \
                     would route every key elsewhere. Set [ring] back to the stored values",
                    stored.partitions,
                    stored.load,
                    stored.vnodes,
                    ring.partitions,
                    ring.load,
                    ring.vnodes
                ),
            }),
        })
        .await?
    }

    /// A receiver that sees every published change.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A member at address `a` (gRPC and Raft alike), for the policy tests.
    pub(crate) fn member(a: &str) -> Member {
        Member {
            grpc_address: a.into(),
            raft_address: a.into(),
        }
    }

    #[test]
    fn the_mover_has_passed_keys_up_to_its_pairs_cursor() {
        let rel = RelocationProgress {
            pair_cursors: BTreeMap::from([(
                "c1->c2".to_string(),
                PairCursor {
                    partition: 7,
                    key: b"key-5".to_vec(),
                },
            )]),
            ..Default::default()
        };
        assert!(rel.moved_past("c1", "c2", 7, b"key-4"));
        assert!(rel.moved_past("c1", "c2", 7, b"key-5"), "the cursor itself");
        assert!(rel.moved_past("c1", "c2", 7, b"key-10"), "byte order");
        assert!(!rel.moved_past("c1", "c2", 7, b"key-50"));
        assert!(
            rel.moved_past("c1", "c2", 3, b"zzz"),
            "an earlier partition"
        );
        assert!(!rel.moved_past("c1", "c2", 8, b"a"), "a later partition");
        assert!(!rel.moved_past("c1", "c3", 1, b"a"), "another pair");
        assert!(!RegistryState::default().moved_past("c1", "c2", 1, b"a"));
        // An older admin's cursor (user-key order over all partitions) is
        // not taken as progress.
        let old = RelocationProgress {
            cursors: BTreeMap::from([("c1->c2".to_string(), b"key-5".to_vec())]),
            ..Default::default()
        };
        assert!(!old.moved_past("c1", "c2", 7, b"key-4"));
    }

    /// Golden bytes of `registry.json`: a restarted (or upgraded) admin
    /// must read what an older one wrote. A change that alters the file
    /// fails here; a deliberate one raises `VERSION` and keeps reading the
    /// old form.
    #[test]
    fn the_registry_file_format_is_pinned() {
        let state = RegistryState {
            version: VERSION,
            next_cluster: 3,
            clusters: BTreeMap::from([(
                "cluster-1".to_string(),
                ClusterInfo {
                    id: "cluster-1".into(),
                    members: BTreeMap::from([("11".to_string(), member("10.0.0.1:7101"))]),
                    leader: Some("11".into()),
                    leader_term: 4,
                    ready: true,
                },
            )]),
            ring: RingState {
                params: Some(crate::ring::HashRing {
                    partitions: 271,
                    load: 1.25,
                    vnodes: 40,
                }),
                members: vec!["cluster-1".into(), "cluster-2".into()],
                draining: BTreeSet::from(["cluster-2".to_string()]),
                relocation: Some(RelocationProgress {
                    id: 2,
                    from_members: vec!["cluster-1".into(), "cluster-2".into()],
                    to_members: vec!["cluster-1".into()],
                    pending: BTreeMap::from([(
                        7,
                        PartitionMove {
                            from: "cluster-2".into(),
                            to: "cluster-1".into(),
                        },
                    )]),
                    total_partitions: 9,
                    cursors: BTreeMap::from([("cluster-2->cluster-1".to_string(), b"k".to_vec())]),
                    pair_cursors: BTreeMap::new(),
                    moved_keys: 5,
                    sweeps: vec![Sweep {
                        cluster: "cluster-1".into(),
                        partitions: vec![3, 4],
                    }],
                }),
                generation: 6,
                moved_keys_total: 50,
                relocations_done: 1,
            },
        };
        const GOLDEN: &str = r#"{"version":1,"next_cluster":3,"clusters":{"cluster-1":{"id":"cluster-1","members":{"11":{"grpc_address":"10.0.0.1:7101","raft_address":"10.0.0.1:7101"}},"leader":"11","leader_term":4,"ready":true}},"ring":{"params":{"partitions":271,"load":1.25,"vnodes":40},"members":["cluster-1","cluster-2"],"draining":["cluster-2"],"relocation":{"id":2,"from_members":["cluster-1","cluster-2"],"to_members":["cluster-1"],"pending":{"7":{"from":"cluster-2","to":"cluster-1"}},"total_partitions":9,"cursors":{"cluster-2->cluster-1":[107]},"moved_keys":5,"sweeps":[{"cluster":"cluster-1","partitions":[3,4]}]},"generation":6,"moved_keys_total":50,"relocations_done":1}}"#;
        assert_eq!(
            serde_json::to_string(&state).unwrap(),
            GOLDEN,
            "registry.json's format changed"
        );
        assert_eq!(
            serde_json::from_str::<RegistryState>(GOLDEN).unwrap(),
            state
        );
        // A file from before the ring, leader terms and sweeps existed.
        let old = r#"{"version":1,"next_cluster":2,"clusters":{"cluster-1":{"id":"cluster-1","members":{"11":{"grpc_address":"a","raft_address":"a"}},"leader":"11","ready":true}}}"#;
        let s: RegistryState = serde_json::from_str(old).unwrap();
        assert_eq!(s.clusters["cluster-1"].leader_term, 0);
        assert!(s.ring.members.is_empty() && s.ring.relocation.is_none());
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
        // One admin per directory: a second open names the holder.
        let err = Registry::open(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        let before = r.snapshot();
        drop(r);
        let again = Registry::open(dir.path()).unwrap();
        assert_eq!(again.snapshot(), before);
        assert_eq!(again.snapshot().cluster_of("7").unwrap().id, "cluster-1");
        drop(again);
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        let err = Registry::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("registry.json"), "{err}");
    }

    #[tokio::test]
    async fn ring_parameters_are_stored_and_a_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        let ring = crate::ring::HashRing::default();
        r.adopt_ring(ring).await.unwrap();
        r.adopt_ring(ring).await.unwrap();
        drop(r);
        let r = Registry::open(dir.path()).unwrap();
        let other = crate::ring::HashRing {
            partitions: 512,
            ..ring
        };
        let err = r.adopt_ring(other).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("partitions=271") && text.contains("partitions=512"),
            "{text}"
        );
        assert_eq!(r.snapshot().ring.params, Some(ring));
    }
}
