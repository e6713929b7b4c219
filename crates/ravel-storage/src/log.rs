//! The Raft log's operations on an [`Engine`]: entries are opaque bytes
//! here (the consensus layer decides their encoding), kept in segment
//! files of their own (`segments.rs`), beside the RocksDB that holds the
//! rest.
//!
//! Every mutation of the log is synced before it returns: Raft may only count
//! an entry towards a quorum once it survives a crash, and an entry removed by
//! a truncate must not come back after one.

use std::ops::{Bound, RangeBounds};

use rocksdb::WriteBatch;

use crate::engine::{Engine, CF_RAFT_META, LOG_START_KEY};
use crate::error::Result;

impl Engine {
    /// Appends log entries (consecutive indexes) and syncs them before
    /// returning. Entries at or below the last index replace it and
    /// everything after it.
    pub fn append_log<I, V>(&self, entries: I) -> Result<()>
    where
        I: IntoIterator<Item = (u64, V)>,
        V: AsRef<[u8]>,
    {
        self.log().append(entries)
    }

    /// Entries whose index lies in `range`, in order.
    pub fn log_entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<(u64, Vec<u8>)>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        // Exclusive end; `None`: to the end of the log.
        let end = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        self.log().read(start, end, usize::MAX)
    }

    /// Entries from `start` (inclusive) to `end` (exclusive), in order,
    /// stopping once they add up to `max_bytes` (always at least one entry
    /// when the range holds any): a bounded read for one replication RPC.
    pub fn log_entries_limited(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        self.log().read(start, Some(end), max_bytes)
    }

    /// The entry with the highest index, if the log holds any.
    pub fn last_log(&self) -> Result<Option<(u64, Vec<u8>)>> {
        self.log().last()
    }

    /// The lowest index still in the log, if any.
    pub fn first_log_index(&self) -> Result<Option<u64>> {
        Ok(self.log().first_index())
    }

    /// Bytes of the Raft log's files on disk.
    pub fn log_disk_bytes(&self) -> u64 {
        self.log().disk_bytes()
    }

    /// Removes every entry with index `>= since`, synced: a conflicting suffix
    /// that Raft threw away must not reappear after a crash.
    pub fn truncate_log(&self, since: u64) -> Result<()> {
        self.log().truncate(since)
    }

    /// Removes every entry with index `<= upto`. First, in one synced
    /// batch, it records the Raft metadata `marker` (the last purged log
    /// id) and the log's new start, so the marker and the log never
    /// disagree after a crash; then the log drops the segments that hold
    /// only purged entries.
    ///
    /// Before that it flushes the state machine
    /// ([`Engine::persist_state_machine`]): applies skip the WAL, so until
    /// a flush the log is the only durable record of them. Raft purges only
    /// applied entries, so after the flush the applies of the entries being
    /// purged can no longer be lost.
    pub fn purge_log(&self, upto: u64, marker: (&str, &[u8])) -> Result<()> {
        self.persist_state_machine()?;
        let start = self.log().start_after_purge(upto);
        let mut batch = WriteBatch::default();
        let meta = self.cf(CF_RAFT_META);
        batch.put_cf(meta, marker.0.as_bytes(), marker.1);
        batch.put_cf(meta, LOG_START_KEY, start.to_be_bytes());
        self.write(batch, true)?;
        self.log().purge(upto)
    }
}

#[cfg(test)]
mod tests {
    use crate::Engine;

    fn engine() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path().join("db")).unwrap();
        (dir, engine)
    }

    #[test]
    fn append_read_truncate_purge() {
        let (_dir, e) = engine();
        assert_eq!(e.last_log().unwrap(), None);
        e.append_log((1..=300u64).map(|i| (i, i.to_le_bytes().to_vec())))
            .unwrap();
        // 256 sorts after 255 only with big-endian keys.
        let got = e.log_entries(250..260).unwrap();
        assert_eq!(
            got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (250..260).collect::<Vec<_>>()
        );
        assert_eq!(e.last_log().unwrap().unwrap().0, 300);

        e.truncate_log(201).unwrap();
        assert_eq!(e.last_log().unwrap().unwrap().0, 200);
        assert!(e.log_entries(201..).unwrap().is_empty());

        e.purge_log(100, ("last_purged", b"100")).unwrap();
        assert_eq!(e.first_log_index().unwrap(), Some(101));
        assert_eq!(
            e.raft_meta("last_purged").unwrap().as_deref(),
            Some(&b"100"[..])
        );
        assert_eq!(e.log_entries(..).unwrap().len(), 100);

        e.purge_log(u64::MAX, ("last_purged", b"max")).unwrap();
        assert_eq!(e.last_log().unwrap(), None);
    }

    #[test]
    fn limited_reads_stop_at_the_byte_budget_but_return_one_entry() {
        let (_dir, e) = engine();
        e.append_log((1..=10u64).map(|i| (i, vec![0u8; 100])))
            .unwrap();
        let got = e.log_entries_limited(1, 11, 250).unwrap();
        assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 2]);
        let got = e.log_entries_limited(3, 11, 10).unwrap();
        assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![3]);
        let got = e.log_entries_limited(9, 100, 1 << 20).unwrap();
        assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![9, 10]);
        assert!(e.log_entries_limited(11, 20, 1 << 20).unwrap().is_empty());
    }

    /// What a power cut at this instant would leave: the database's files as
    /// they are now (RocksDB's unwritten WAL buffer is not in them), opened
    /// as a copy.
    fn crash_copy(from: &std::path::Path, to: &std::path::Path) -> Engine {
        fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                let kind = entry.file_type().unwrap();
                if kind.is_file() {
                    std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
                } else if kind.is_dir() {
                    copy_dir(&entry.path(), &to.join(entry.file_name()));
                }
            }
        }
        copy_dir(from, to);
        Engine::open(to).unwrap()
    }

    /// Applies skip the WAL: until a flush, the log is their only durable
    /// record, so a purge of the log must flush the state machine first.
    #[test]
    fn applies_survive_a_crash_once_a_purge_removed_their_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let e = Engine::open(&path).unwrap();
        e.append_log([(1u64, b"e1".to_vec()), (2, b"e2".to_vec())])
            .unwrap();
        let mut apply = e.apply_batch();
        apply.put(b"k", b"v");
        apply.put_meta("last_applied", b"2");
        apply.commit().unwrap();
        // A synced log append after the apply does not carry it.
        e.append_log([(3u64, b"e3".to_vec())]).unwrap();
        let crashed = crash_copy(&path, &dir.path().join("crash-1"));
        assert_eq!(crashed.get(b"k").unwrap(), None);
        assert_eq!(crashed.sm_meta("last_applied").unwrap(), None);
        assert_eq!(
            crashed.log_entries(..).unwrap().len(),
            3,
            "the log holds it"
        );
        drop(crashed);

        e.purge_log(2, ("last_purged", b"2")).unwrap();
        let crashed = crash_copy(&path, &dir.path().join("crash-2"));
        assert_eq!(crashed.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(
            crashed.sm_meta("last_applied").unwrap().as_deref(),
            Some(&b"2"[..])
        );
        assert_eq!(crashed.first_log_index().unwrap(), Some(3));
    }

    #[test]
    fn log_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let e = Engine::open(&path).unwrap();
            e.append_log([(1u64, b"a".to_vec()), (2, b"b".to_vec())])
                .unwrap();
            e.put_raft_meta("vote", b"v1").unwrap();
        }
        let e = Engine::open(&path).unwrap();
        assert_eq!(e.log_entries(..).unwrap().len(), 2);
        assert_eq!(e.raft_meta("vote").unwrap().as_deref(), Some(&b"v1"[..]));
    }
}
