//! `RaftLogStorage` over ravel-storage: the Raft log, the vote, the committed
//! log id and the last purged log id.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use ravel_storage::Engine;

use crate::codec;
use crate::observe::StorageObserver;
use crate::recent::RecentEntries;
use crate::types::{Entry, LogId, RaftStorageError, TypeConfig, Vote};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Bytes of log entries sent in one AppendEntries when nothing else is
/// configured.
pub const DEFAULT_MAX_APPEND_BYTES: usize = 1 << 20;

/// The Raft log of one replica. Clones share the same database.
#[derive(Clone, Debug)]
pub struct LogStore {
    engine: Engine,
    /// Most bytes of entries one replication RPC carries (at least one
    /// entry): openraft 0.9 gives an AppendEntries one heartbeat interval to
    /// be sent, stored and answered, whatever its size.
    max_append_bytes: usize,
    /// Told of each synced append (the node's metrics).
    observer: StorageObserver,
    /// The entries appended and not yet applied, read back from memory.
    recent: RecentEntries,
}

fn read_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::write_logs(&e).into()
}

/// Runs blocking storage work (an fsync) off the async worker threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, RaftStorageError>
where
    F: FnOnce() -> Result<T, RaftStorageError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageIOError::write(&e).into())
        .and_then(|r| r)
}

impl LogStore {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            max_append_bytes: DEFAULT_MAX_APPEND_BYTES,
            observer: StorageObserver::default(),
            recent: RecentEntries::default(),
        }
    }

    /// Keeps new entries in `recent` (shared with the state machine, which
    /// tells it what was applied) instead of a cache of its own.
    pub fn with_recent(mut self, recent: RecentEntries) -> Self {
        self.recent = recent;
        self
    }

    /// Bounds the bytes of entries read for one replication RPC.
    pub fn with_max_append_bytes(mut self, bytes: usize) -> Self {
        self.max_append_bytes = bytes.max(1);
        self
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, RaftStorageError> {
        match self.engine.raft_meta(key).map_err(read_err)? {
            None => Ok(None),
            Some(raw) => codec::decode(&raw).map(Some).map_err(read_err),
        }
    }

    fn decode_entries(raw: Vec<(u64, Vec<u8>)>) -> Result<Vec<Entry>, RaftStorageError> {
        raw.into_iter()
            .map(|(_, bytes)| codec::decode::<Entry>(&bytes).map_err(read_err))
            .collect()
    }
}

impl LogStore {
    /// Appends entries and returns once they are synced to disk. This is the
    /// whole of `RaftLogStorage::append` but for openraft's callback.
    pub async fn append_entries<I>(&mut self, entries: I) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        crate::failpoints::hit("append", self.engine.path()).map_err(write_err)?;
        let mut encoded = Vec::new();
        let mut kept = Vec::new();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(write_err)?;
            kept.push((entry, bytes.len()));
            encoded.push((kept[kept.len() - 1].0.log_id.index, bytes));
        }
        let bytes: usize = kept.iter().map(|(_, size)| size).sum();
        let engine = self.engine.clone();
        let started = std::time::Instant::now();
        blocking(move || engine.append_log(encoded).map_err(write_err)).await?;
        self.observer
            .report(|e| e.log_appended(bytes as u64, started.elapsed()));
        // Readable from memory only once durable, like from RocksDB.
        self.recent.appended(kept);
        Ok(())
    }

    /// Where this store (and the state machine opened with it) reports
    /// storage events.
    pub fn observer(&self) -> StorageObserver {
        self.observer.clone()
    }

    /// Reports to `observer` (shared with the state machine's snapshots).
    pub fn with_observer(mut self, observer: StorageObserver) -> Self {
        self.observer = observer;
        self
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Some(*i),
            Bound::Excluded(i) => i.checked_add(1),
            Bound::Unbounded => None,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(held) = start.and_then(|start| self.recent.range(start, end)) {
            return Ok(held);
        }
        let raw = self.engine.log_entries(range).map_err(read_err)?;
        Self::decode_entries(raw)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        if let Some(held) = self.recent.limited(start, end, self.max_append_bytes) {
            return Ok(held);
        }
        let raw = self
            .engine
            .log_entries_limited(start, end, self.max_append_bytes)
            .map_err(read_err)?;
        Self::decode_entries(raw)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id: Option<LogId> = self.meta(LAST_PURGED)?;
        let last_log_id = match self.engine.last_log().map_err(read_err)? {
            Some((_, bytes)) => Some(codec::decode::<Entry>(&bytes).map_err(read_err)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        crate::failpoints::hit("vote", self.engine.path())
            .map_err(|e| StorageIOError::write_vote(&e))?;
        let bytes = codec::encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        let engine = self.engine.clone();
        blocking(move || {
            engine
                .put_raft_meta(VOTE, &bytes)
                .map_err(|e| StorageIOError::write_vote(&e).into())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        match self.engine.raft_meta(VOTE) {
            Ok(Some(raw)) => codec::decode(&raw)
                .map(Some)
                .map_err(|e| StorageIOError::read_vote(&e).into()),
            Ok(None) => Ok(None),
            Err(e) => Err(StorageIOError::read_vote(&e).into()),
        }
    }

    /// The committed log id is a hint that lets a restarted replica re-apply
    /// up to it before it hears from a leader. Losing the latest value in a
    /// crash is harmless (it is learned again), so it is not fsynced: that
    /// would cost one more fsync per commit.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        let bytes = codec::encode(&committed).map_err(write_err)?;
        self.engine
            .put_raft_meta_unsynced(COMMITTED, &bytes)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(self.meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = self.append_entries(entries).await;
        // Only after the fsync: openraft counts the entries towards a quorum
        // as soon as it hears they are flushed.
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        crate::failpoints::hit("truncate", self.engine.path()).map_err(write_err)?;
        // Before the log is cut: a truncated entry is never read again.
        self.recent.truncated(log_id.index);
        let engine = self.engine.clone();
        blocking(move || engine.truncate_log(log_id.index).map_err(write_err)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        crate::failpoints::hit("purge", self.engine.path()).map_err(write_err)?;
        let marker = codec::encode(&log_id).map_err(write_err)?;
        self.recent.forget_upto(log_id.index);
        let engine = self.engine.clone();
        blocking(move || {
            engine
                .purge_log(log_id.index, (LAST_PURGED, &marker))
                .map_err(write_err)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::types::Command;
    use crate::DataDir;

    fn entries(range: std::ops::Range<u64>, term: u64) -> Vec<Entry> {
        range
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(term, 1), i),
                payload: EntryPayload::Normal(Command::Set {
                    key: i.to_be_bytes().to_vec(),
                    value: vec![term as u8; 100],
                }),
            })
            .collect()
    }

    /// Reads through the store (from memory where it holds the entries)
    /// and through a fresh store over the same database (RocksDB only).
    async fn both(log: &mut LogStore, start: u64, end: u64) -> (Vec<Entry>, Vec<Entry>) {
        let mut cold = LogStore::new(log.engine.clone()).with_recent(RecentEntries::new(0));
        (
            log.try_get_log_entries(start..end).await.unwrap(),
            cold.try_get_log_entries(start..end).await.unwrap(),
        )
    }

    #[tokio::test]
    async fn reads_from_memory_match_rocksdb_through_truncate_apply_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = DataDir::new(dir.path()).open(1024).unwrap();
        log.append_entries(entries(1..21, 1)).await.unwrap();
        assert!(log.recent.bytes() > 0);
        let (hot, cold) = both(&mut log, 1, 21).await;
        assert_eq!(hot.len(), 20);
        assert_eq!(hot, cold);
        // A conflicting suffix: truncated, then overwritten by a newer term.
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 15))
            .await
            .unwrap();
        log.append_entries(entries(15..18, 2)).await.unwrap();
        let (hot, cold) = both(&mut log, 10, 18).await;
        assert_eq!(hot, cold);
        assert_eq!(hot.len(), 8);
        assert_eq!(hot.last().unwrap().log_id.leader_id.term, 2);
        // Replication reads are bounded the same way from memory.
        let mut limited = log.clone().with_max_append_bytes(250);
        let mut limited_cold = LogStore::new(log.engine.clone())
            .with_recent(RecentEntries::new(0))
            .with_max_append_bytes(250);
        let hot = limited.limited_get_log_entries(5, 18).await.unwrap();
        let cold = limited_cold.limited_get_log_entries(5, 18).await.unwrap();
        assert_eq!(hot, cold);
        assert!(hot.len() < 13, "bounded: {}", hot.len());
        // Applied entries leave memory; reads of them still answer.
        log.recent.forget_upto(12);
        let (hot, cold) = both(&mut log, 1, 18).await;
        assert_eq!(hot, cold);
        // Purged entries are gone from both.
        log.purge(LogId::new(CommittedLeaderId::new(2, 1), 16))
            .await
            .unwrap();
        assert!(log.recent.bytes() > 0);
        let (hot, cold) = both(&mut log, 17, 18).await;
        assert_eq!(hot, cold);
        assert_eq!(hot.len(), 1);
    }
}
