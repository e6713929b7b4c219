//! `RaftLogStorage` over ravel-storage: the Raft log, the vote, the committed
//! log id and the last purged log id.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Instant;

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

/// The Raft log of one replica. Clones share the same database and writer.
#[derive(Clone, Debug)]
pub struct LogStore {
    engine: Engine,
    /// Most bytes of entries one replication RPC carries (at least one
    /// entry): openraft 0.9 gives an AppendEntries one heartbeat interval to
    /// be sent, stored and answered, whatever its size.
    max_append_bytes: usize,
    /// Told of each synced append (the node's metrics).
    observer: StorageObserver,
    /// The entries appended and not yet applied, read back from memory;
    /// also every entry handed to the writer and not yet durable.
    recent: RecentEntries,
    /// The one thread that writes and syncs appends, in order (started at
    /// the first use, so it reports to the final `recent` and `observer`).
    writer: Arc<OnceLock<Writer>>,
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

/// A job's answer was dropped unsent: the writer thread is gone.
fn writer_stopped() -> RaftStorageError {
    write_err(std::io::Error::other(
        "the Raft log's writer thread has stopped",
    ))
}

/// What an append is told once its entries are durable, or why not.
type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Job {
    /// Entries to write at the log's end, consecutive indexes.
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        bytes: usize,
        queued: Instant,
        done: Done,
    },
    /// Answered once every append queued before it is finished.
    Barrier(tokio::sync::oneshot::Sender<()>),
    /// Tests: the writer waits until this channel is sent to or closed.
    #[cfg(test)]
    Hold(mpsc::Receiver<()>),
}

/// The log's writer: a thread that takes appends in the order they were
/// queued and writes and syncs them, all appends waiting when it gets to
/// them in one sync (group commit). `RaftLogStorage::append` only queues,
/// so the Raft core can send the leader's new entries to the followers
/// while the leader's own sync runs.
struct Writer {
    /// `None` only while dropping (closing the queue stops the thread).
    queue: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    fn start(engine: Engine, recent: RecentEntries, observer: StorageObserver) -> Self {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ravel-log-writer".into())
            .spawn(move || write_loop(&engine, &recent, &observer, &rx))
            .ok();
        // Without a thread (none could be started) the queue is closed:
        // each job is dropped, and its caller's channel reports an error.
        Self {
            queue: Some(tx),
            thread,
        }
    }

    fn send(&self, job: Job) {
        if let Some(tx) = &self.queue {
            // A stopped writer drops the job, which answers it with an error.
            let _ = tx.send(job);
        }
    }

    /// Waits until every append queued so far is finished.
    async fn drain(&self) -> Result<(), RaftStorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Barrier(tx));
        rx.await.map_err(|_| writer_stopped())
    }
}

impl Drop for Writer {
    /// The last store is gone: the writer finishes what is queued and stops
    /// (so the database it holds is closed when this returns).
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Appends the writer finished in one sync: their entries went to the
/// engine together.
struct Run {
    entries: Vec<(u64, Vec<u8>)>,
    jobs: Vec<(usize, Instant, Done)>,
}

impl Run {
    fn new() -> Self {
        Self {
            entries: Vec::new(),
            jobs: Vec::new(),
        }
    }

    /// Whether `entries` continue this run's (or it is empty).
    fn continues(&self, entries: &[(u64, Vec<u8>)]) -> bool {
        match (self.entries.last(), entries.first()) {
            (Some((last, _)), Some((first, _))) => last.checked_add(1) == Some(*first),
            _ => true,
        }
    }

    /// Writes and syncs the run, then answers its appends in order.
    fn finish(&mut self, engine: &Engine, recent: &RecentEntries, observer: &StorageObserver) {
        if self.jobs.is_empty() {
            return;
        }
        let result = if self.entries.is_empty() {
            Ok(())
        } else {
            crate::failpoints::wait_if_held("log_write", engine.path());
            engine
                .append_log(std::mem::take(&mut self.entries))
                .map_err(|e| e.to_string())
        };
        for (bytes, queued, done) in self.jobs.drain(..) {
            if result.is_ok() {
                recent.written();
                observer.report(|e| e.log_appended(bytes as u64, queued.elapsed()));
            }
            done(result.clone());
        }
    }
}

fn write_loop(
    engine: &Engine,
    recent: &RecentEntries,
    observer: &StorageObserver,
    rx: &mpsc::Receiver<Job>,
) {
    while let Ok(first) = rx.recv() {
        let mut run = Run::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Append {
                    entries,
                    bytes,
                    queued,
                    done,
                } => {
                    if !run.continues(&entries) {
                        run.finish(engine, recent, observer);
                    }
                    run.entries.extend(entries);
                    run.jobs.push((bytes, queued, done));
                }
                Job::Barrier(tx) => {
                    run.finish(engine, recent, observer);
                    let _ = tx.send(());
                }
                #[cfg(test)]
                Job::Hold(rx) => {
                    run.finish(engine, recent, observer);
                    let _ = rx.recv();
                }
            }
            next = rx.try_recv().ok();
        }
        run.finish(engine, recent, observer);
    }
}

impl LogStore {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            max_append_bytes: DEFAULT_MAX_APPEND_BYTES,
            observer: StorageObserver::default(),
            recent: RecentEntries::default(),
            writer: Arc::default(),
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

    fn writer(&self) -> &Writer {
        self.writer.get_or_init(|| {
            Writer::start(
                self.engine.clone(),
                self.recent.clone(),
                self.observer.clone(),
            )
        })
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

    /// Entries from `start` up to `end` (exclusive; `None`: the log's end),
    /// stopping at `max_bytes` of encoded entries (at least one entry) when
    /// `limited`. The newest come from memory (some may not be on disk
    /// yet), older ones from disk: every entry memory lets go of was made
    /// durable first.
    fn read(
        &self,
        start: u64,
        end: Option<u64>,
        max_bytes: usize,
        limited: bool,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let mut out: Vec<Entry> = Vec::new();
        let mut from = start;
        loop {
            if end.is_some_and(|end| from >= end) {
                return Ok(out);
            }
            if let Some(held) = self
                .recent
                .limited(from, end.unwrap_or(u64::MAX), max_bytes)
            {
                out.extend(held);
                return Ok(out);
            }
            // Not in memory: older than what it holds (then on disk, up to
            // the first entry held), or past the log's end.
            let disk_end = match self.recent.first_index() {
                Some(first) if first <= from => return Ok(out),
                Some(first) => Some(end.map_or(first, |end| end.min(first))),
                None => end,
            };
            let raw = match disk_end {
                Some(disk_end) if limited => self
                    .engine
                    .log_entries_limited(from, disk_end, max_bytes)
                    .map_err(read_err)?,
                Some(disk_end) => self.engine.log_entries(from..disk_end).map_err(read_err)?,
                None => self.engine.log_entries(from..).map_err(read_err)?,
            };
            out.extend(Self::decode_entries(raw)?);
            match disk_end {
                // A bounded read may stop here (a shorter batch is allowed).
                _ if limited && !out.is_empty() => return Ok(out),
                // The rest is in memory (or was let go of since, and is on
                // disk: the next turn reads it).
                Some(disk_end) => from = disk_end,
                // Read to the log's end.
                None => return Ok(out),
            }
        }
    }
}

impl LogStore {
    /// Appends entries and returns once they are synced to disk. This is the
    /// whole of `RaftLogStorage::append` but for openraft's callback.
    pub async fn append_entries<I>(&mut self, entries: I) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue_append(
            entries,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        )?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_err(std::io::Error::other(e))),
            Err(_) => Err(writer_stopped()),
        }
    }

    /// Hands entries to the writer, which calls `done` once they are synced
    /// (or failed). Until then they are readable from memory.
    fn queue_append<I>(&mut self, entries: I, done: Done) -> Result<(), RaftStorageError>
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
        if kept.is_empty() {
            done(Ok(()));
            return Ok(());
        }
        let bytes: usize = kept.iter().map(|(_, size)| size).sum();
        // In memory first: once queued, replication may read them.
        self.recent.appended(kept);
        self.writer().send(Job::Append {
            entries: encoded,
            bytes,
            queued: Instant::now(),
            done,
        });
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
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        self.read(start, end, usize::MAX, false)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        self.read(start, Some(end), self.max_append_bytes, true)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id: Option<LogId> = self.meta(LAST_PURGED)?;
        // The newest entry held in memory is the log's last, written or
        // still queued to the writer.
        if let Some(last) = self.recent.last_log_id() {
            return Ok(LogState {
                last_purged_log_id,
                last_log_id: Some(last),
            });
        }
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
        // Returns once queued; the callback comes after the sync: openraft
        // counts the entries towards a quorum as soon as it hears they are
        // flushed. (A follower's Raft core waits for it before it answers
        // the leader; the leader's does not, see `third_party/openraft`.)
        self.queue_append(
            entries,
            Box::new(move |result| {
                callback.log_io_completed(result.map_err(std::io::Error::other))
            }),
        )
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        crate::failpoints::hit("truncate", self.engine.path()).map_err(write_err)?;
        // Queued appends are written first: the cut applies to them.
        self.writer().drain().await?;
        // Before the log is cut: a truncated entry is never read again.
        self.recent.truncated(log_id.index);
        let engine = self.engine.clone();
        blocking(move || engine.truncate_log(log_id.index).map_err(write_err)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        crate::failpoints::hit("purge", self.engine.path()).map_err(write_err)?;
        let marker = codec::encode(&log_id).map_err(write_err)?;
        self.writer().drain().await?;
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
    use std::time::Duration;

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

    /// Holds the store's writer (appends queue up behind it) until the
    /// returned sender is dropped.
    fn hold_writer(log: &LogStore) -> mpsc::Sender<()> {
        let (tx, rx) = mpsc::channel();
        log.writer().send(Job::Hold(rx));
        tx
    }

    fn ids(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    /// Queues entries; the receiver hears when they are durable.
    fn queue(log: &mut LogStore, r: std::ops::Range<u64>) -> mpsc::Receiver<Result<(), String>> {
        let (tx, rx) = mpsc::channel();
        log.queue_append(
            entries(r, 1),
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        )
        .unwrap();
        rx
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_entries_are_read_from_memory_until_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _sm) = DataDir::new(dir.path()).open(1024).unwrap();
        // Room for only a few entries in memory: older ones come from disk.
        let mut log = LogStore::new(log.engine.clone()).with_recent(RecentEntries::new(400));
        log.append_entries(entries(1..11, 1)).await.unwrap();
        let held = hold_writer(&log);
        let first = queue(&mut log, 11..14);
        let second = queue(&mut log, 14..16);
        assert!(
            first.try_recv().is_err(),
            "durable while the writer is held"
        );
        let mut cold = LogStore::new(log.engine.clone()).with_recent(RecentEntries::new(0));
        let on_disk = cold.try_get_log_entries(1..16).await.unwrap();
        assert_eq!(ids(&on_disk), (1..11).collect::<Vec<_>>());
        // Reads see every queued entry: the old from disk, the new from memory.
        let all = log.try_get_log_entries(1..16).await.unwrap();
        assert_eq!(ids(&all), (1..16).collect::<Vec<_>>());
        assert_eq!(&all[..10], &on_disk[..]);
        assert_eq!(
            ids(&log.try_get_log_entries(12..).await.unwrap()),
            vec![12, 13, 14, 15]
        );
        let batch = log.limited_get_log_entries(11, 16).await.unwrap();
        assert_eq!(ids(&batch)[0], 11);
        // Applied (a leader may apply before its own sync): still held.
        log.recent.forget_upto(15);
        assert_eq!(
            ids(&log.try_get_log_entries(11..16).await.unwrap()),
            (11..16).collect::<Vec<_>>()
        );
        drop(held);
        let wait = Duration::from_secs(10);
        assert_eq!(first.recv_timeout(wait).unwrap(), Ok(()));
        assert_eq!(second.recv_timeout(wait).unwrap(), Ok(()));
        assert_eq!(
            ids(&cold.try_get_log_entries(1..16).await.unwrap()),
            (1..16).collect::<Vec<_>>()
        );
        log.recent.forget_upto(15);
        assert_eq!(
            log.recent.first_index(),
            None,
            "durable and applied: let go"
        );
        assert_eq!(
            ids(&log.try_get_log_entries(9..16).await.unwrap()),
            (9..16).collect::<Vec<_>>()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncate_and_purge_wait_for_queued_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = DataDir::new(dir.path()).open(1024).unwrap();
        log.append_entries(entries(1..6, 1)).await.unwrap();
        let held = hold_writer(&log);
        let queued = queue(&mut log, 6..11);
        let mut cut = log.clone();
        let truncate = tokio::spawn(async move {
            cut.truncate(LogId::new(CommittedLeaderId::new(1, 1), 8))
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !truncate.is_finished(),
            "truncated before the queued append was written"
        );
        drop(held);
        truncate.await.unwrap().unwrap();
        assert_eq!(
            queued.recv_timeout(Duration::from_secs(10)).unwrap(),
            Ok(())
        );
        // The cut applied to the queued entries, on disk and in memory.
        let mut cold = LogStore::new(log.engine.clone()).with_recent(RecentEntries::new(0));
        let expect: Vec<u64> = (1..8).collect();
        assert_eq!(ids(&cold.try_get_log_entries(1..).await.unwrap()), expect);
        assert_eq!(ids(&log.try_get_log_entries(1..).await.unwrap()), expect);
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
