//! # ravel-storage
//!
//! The bytes-on-disk layer of a Ravel node: one RocksDB per node with four
//! column families, and the Raft log in segment files of its own
//! (`<data>/raft-log/`, `segments.rs`), written by [`Engine::append_log`],
//! [`Engine::truncate_log`] and [`Engine::purge_log`] (all synced).
//!
//! | column family | keys | written by |
//! |---|---|---|
//! | `raft_log` | log index, big-endian `u64` | nothing: the log before it moved to files, moved out on open |
//! | `raft_meta` | names (`vote`, `committed`, `last_purged`, `log_start`, `format_version`, `import_pending`, ...) | [`Engine::put_raft_meta`] (synced) |
//! | `kv` | user keys, each behind its partition (`layout.rs`) | [`ApplyBatch`] |
//! | `sm_meta` | names (`last_applied`, `membership`) | [`ApplyBatch`], in the same batch as the data |
//!
//! This crate knows neither openraft nor gRPC (it takes only the key
//! partition function from `ravel-proto`, the one the admin routes by): log entries, votes and
//! snapshot headers are opaque bytes that the consensus layer encodes.
//!
//! Durability rule: whatever Raft counts on (log entries, the vote, a log
//! truncation, an installed snapshot) is synced before the call returns. The
//! state machine's own writes are not synced, because the Raft log is the
//! write-ahead log and re-application after a crash restores them. A
//! snapshot import is written in bounded batches between two synced
//! markers and redone after a crash (see `import.rs`).

mod data;
mod engine;
mod error;
mod import;
mod layout;
mod log;
mod segments;
mod snapshot;

pub use data::ApplyBatch;
pub use engine::{
    Engine, EngineStats, MemoryBudget, WeakEngine, BLOCK_CACHE, FORMAT_VERSION, MEMTABLE_BUDGET,
};
pub use error::{Result, StorageError};
pub use import::verify_snapshot_file;
pub use layout::{layout_partition, LAYOUT_PARTITIONS};
pub use snapshot::{read_snapshot_header, PinnedView, SnapshotStats};
