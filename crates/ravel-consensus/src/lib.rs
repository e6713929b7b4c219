//! # ravel-consensus
//!
//! The openraft glue of a Ravel replica:
//!
//! - [`types`]: the openraft type configuration ([`TypeConfig`]), the
//!   replicated [`Command`] and its [`CommandResult`];
//! - [`LogStore`]: `RaftLogStorage` (log, vote, committed, purge marker);
//! - [`StateMachine`]: `RaftStateMachine` (apply; snapshots as pinned views, streamed on demand);
//! - [`codec`]: the versioned binary encoding of entries, votes and RPCs.
//!
//! Everything durable goes through `ravel-storage`; this crate decides what
//! the bytes mean.

// openraft's storage traits fix the error type (`openraft::StorageError`, over
// 200 bytes); boxing it in our helpers would only add conversions.
#![allow(clippy::result_large_err)]

mod apply;
pub mod codec;
pub mod failpoints;
mod log_store;
pub mod observe;
mod recent;
pub mod sessions;
mod snapshot_files;
mod state_machine;
pub mod types;

use std::path::{Path, PathBuf};

pub use log_store::{LogStore, DEFAULT_MAX_APPEND_BYTES};
pub use ravel_storage::{Engine, EngineStats, MemoryBudget, StorageError, WeakEngine};
pub use recent::{RecentEntries, DEFAULT_RECENT_ENTRIES_BYTES};
pub use state_machine::{SnapshotBuilder, StateMachine, DEFAULT_SNAPSHOT_CHUNK_BYTES};
pub use types::{Command, CommandResult, NodeId, Raft, RequestId, SnapshotData, TypeConfig};

/// The on-disk layout of a replica's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The RocksDB database.
    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }

    /// Snapshots being received or installed (none at rest).
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Opens (creating on first use) the log store and state machine, with
    /// RocksDB's default memory budget.
    pub fn open(&self, chunk_bytes: usize) -> Result<(LogStore, StateMachine), StorageError> {
        self.open_with(chunk_bytes, MemoryBudget::default())
    }

    /// [`DataDir::open`] within `budget`.
    pub fn open_with(
        &self,
        chunk_bytes: usize,
        budget: MemoryBudget,
    ) -> Result<(LogStore, StateMachine), StorageError> {
        let engine = Engine::open_with(self.db(), budget)?;
        let recent = RecentEntries::default();
        let sm = StateMachine::open(engine.clone(), self.snapshots(), chunk_bytes)
            .map_err(|source| StorageError::Io {
                path: self.snapshots(),
                source,
            })?
            .with_recent(recent.clone());
        // One observer for the log and the snapshots (the node's metrics).
        let log = LogStore::new(engine)
            .with_observer(sm.snapshots.observer.clone())
            .with_recent(recent);
        Ok((log, sm))
    }
}
