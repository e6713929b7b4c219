//! The log entries appended but not yet applied, kept in memory.
//!
//! openraft 0.9 reads every committed entry back from the log store to apply
//! it, on the Raft core's own task, and the leader's replication tasks read
//! each new entry back to send it. Without this cache each of those reads is
//! a RocksDB lookup plus a decode of the whole entry, for an entry that was
//! encoded from memory a moment before. With it, a read of entries still
//! here is a clone, and RocksDB is read only for older ones (a follower far
//! behind, a restart).
//!
//! What it holds is always the log's newest entries, contiguous: an append
//! adds at the back when it is handed to the log's writer, a truncation cuts
//! the back (before the log is cut), and entries leave from the front once
//! applied, purged, or when the cache is over its byte bound, but never
//! before the writer has made them durable. So the entries it holds are the
//! log's, and everything older than them is on disk: a read takes what it
//! can from here and the rest from disk.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::types::Entry;

/// Default bound on the encoded bytes of entries kept: entries wait here
/// only between their append and their apply, so this is reached only when
/// the state machine falls behind (a follower catching up). Entries not yet
/// durable are kept whatever the bound.
pub const DEFAULT_RECENT_ENTRIES_BYTES: usize = 32 << 20;

/// The newest log entries, shared by a [`crate::LogStore`], its readers and
/// the [`crate::StateMachine`] that tells it what was applied.
#[derive(Clone, Debug)]
pub struct RecentEntries {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Each entry with its encoded size; indices are contiguous.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
    max_bytes: usize,
    /// The first index of each append handed to the writer and not yet
    /// durable, oldest first (the writer finishes them in this order).
    unwritten: VecDeque<u64>,
}

impl Inner {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    /// Drops the oldest entry unless it is not yet durable (then only the
    /// cache has it). Returns whether it dropped one.
    fn pop_front(&mut self) -> bool {
        let Some(first) = self.first() else {
            return false;
        };
        if self.unwritten.iter().any(|&from| from <= first) {
            return false;
        }
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
        true
    }

    fn pop_back(&mut self) {
        if let Some((_, size)) = self.entries.pop_back() {
            self.bytes -= size;
        }
    }

    /// Drops the oldest durable entries while over the byte bound.
    fn shrink(&mut self) {
        while self.bytes > self.max_bytes && self.pop_front() {}
    }

    /// Position of `index` in `entries`, if held.
    fn position(&self, index: u64) -> Option<usize> {
        let first = self.first()?;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        (at < self.entries.len()).then_some(at)
    }
}

impl Default for RecentEntries {
    fn default() -> Self {
        Self::new(DEFAULT_RECENT_ENTRIES_BYTES)
    }
}

impl RecentEntries {
    /// A cache keeping at most `max_bytes` of encoded entries (0: none).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: VecDeque::new(),
                bytes: 0,
                max_bytes,
                unwritten: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing here panics while holding the lock but an allocation
        // failure; the contents stay consistent either way.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records entries just handed to the log's writer, at the log's end,
    /// with their encoded sizes: they stay here at least until
    /// [`RecentEntries::written`] says they are durable. An append that does
    /// not follow the newest held entry (after a snapshot install, or over
    /// entries not yet truncated) first drops what it would contradict.
    pub(crate) fn appended(&self, entries: Vec<(Entry, usize)>) {
        let mut c = self.lock();
        if let Some((first, _)) = entries.first() {
            c.unwritten.push_back(first.log_id.index);
            // Held entries from `first` on are replaced; the rest is kept
            // only if it leads up to `first` (no gap).
            let keep = match c.position(first.log_id.index) {
                Some(at) => at,
                None if c.entries.back().map(|(e, _)| e.log_id.index + 1)
                    == Some(first.log_id.index) =>
                {
                    c.entries.len()
                }
                None => 0,
            };
            while c.entries.len() > keep {
                c.pop_back();
            }
        }
        for (entry, size) in entries {
            c.bytes += size;
            c.entries.push_back((entry, size));
        }
        c.shrink();
    }

    /// The oldest append not yet durable is now durable (the writer
    /// finishes appends in the order they were handed to it).
    pub(crate) fn written(&self) {
        let mut c = self.lock();
        c.unwritten.pop_front();
        c.shrink();
    }

    /// The log id of the newest entry held, if any: the log's last.
    pub(crate) fn last_log_id(&self) -> Option<crate::types::LogId> {
        self.lock().entries.back().map(|(e, _)| e.log_id)
    }

    /// The first index held, if any: every older entry is on disk.
    pub(crate) fn first_index(&self) -> Option<u64> {
        self.lock().first()
    }

    /// Drops entries with index `>= since` (a truncated suffix).
    pub(crate) fn truncated(&self, since: u64) {
        let mut c = self.lock();
        while c
            .entries
            .back()
            .is_some_and(|(e, _)| e.log_id.index >= since)
        {
            c.pop_back();
        }
    }

    /// Drops entries with index `<= upto`: applied (the state machine has
    /// them) or purged (gone from the log).
    /// Entries not yet durable stay (a leader may apply an entry that its
    /// followers made durable before it did).
    pub fn forget_upto(&self, upto: u64) {
        let mut c = self.lock();
        while c.first().is_some_and(|i| i <= upto) && c.pop_front() {}
    }

    /// Entries `start..end` (`end`: exclusive, `None`: to the log's end),
    /// if every one of them is held.
    #[cfg(test)]
    pub(crate) fn range(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let c = self.lock();
        let from = c.position(start)?;
        let to = match end {
            None => c.entries.len(),
            Some(end) if end <= start => return Some(Vec::new()),
            Some(end) => c.position(end - 1)? + 1,
        };
        Some(c.entries.range(from..to).map(|(e, _)| e.clone()).collect())
    }

    /// Entries from `start` up to `end` (exclusive) or the last held,
    /// stopping once the entries' encoded sizes add up to `max_bytes` (at
    /// least one entry): what a replication RPC carries. `None` unless
    /// `start` is held.
    pub(crate) fn limited(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        let c = self.lock();
        let from = c.position(start)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (entry, size) in c.entries.range(from..) {
            if entry.log_id.index >= end
                || (!out.is_empty() && bytes.saturating_add(*size) > max_bytes)
            {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Some(out)
    }

    /// Encoded bytes of the entries held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::types::{Command, LogId};

    fn entry(index: u64) -> (Entry, usize) {
        let e = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Delete {
                key: index.to_be_bytes().to_vec(),
            }),
        };
        (e, 10)
    }

    fn entries(r: std::ops::Range<u64>) -> Vec<(Entry, usize)> {
        r.map(entry).collect()
    }

    fn indices(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn answers_only_ranges_it_holds_whole() {
        let c = RecentEntries::new(1000);
        assert_eq!(indices(c.range(1, None)), None);
        c.appended(entries(5..10));
        assert_eq!(indices(c.range(5, Some(10))), Some((5..10).collect()));
        assert_eq!(indices(c.range(7, None)), Some(vec![7, 8, 9]));
        assert_eq!(indices(c.range(6, Some(8))), Some(vec![6, 7]));
        assert_eq!(indices(c.range(9, Some(9))), Some(vec![]));
        // Older than the first held, or past the last: not answered.
        assert_eq!(indices(c.range(4, Some(8))), None);
        assert_eq!(indices(c.range(8, Some(11))), None);
        assert_eq!(indices(c.range(10, None)), None);
    }

    /// Appends entries and marks them durable.
    fn durable(c: &RecentEntries, r: std::ops::Range<u64>) {
        c.appended(entries(r));
        c.written();
    }

    #[test]
    fn applied_and_purged_entries_leave_from_the_front() {
        let c = RecentEntries::new(1000);
        durable(&c, 1..6);
        c.forget_upto(3);
        assert_eq!(indices(c.range(3, None)), None);
        assert_eq!(indices(c.range(4, None)), Some(vec![4, 5]));
        assert_eq!(c.bytes(), 20);
        c.forget_upto(100);
        assert_eq!(c.bytes(), 0);
        // An append after everything was forgotten starts afresh.
        durable(&c, 6..8);
        assert_eq!(indices(c.range(6, None)), Some(vec![6, 7]));
    }

    #[test]
    fn truncation_and_overwrites_never_leave_a_stale_entry() {
        let c = RecentEntries::new(1000);
        c.appended(entries(1..10));
        c.truncated(7);
        assert_eq!(indices(c.range(6, Some(7))), Some(vec![6]));
        assert_eq!(indices(c.range(6, Some(8))), None);
        // An append over held entries (no truncate first) replaces them.
        let mut newer = entries(5..7);
        for (e, _) in &mut newer {
            e.log_id.leader_id = CommittedLeaderId::new(2, 2);
        }
        c.appended(newer);
        let held = c.range(1, None).unwrap();
        assert_eq!(held.len(), 6);
        assert_eq!(held[4].log_id.leader_id, CommittedLeaderId::new(2, 2));
        assert_eq!(c.bytes(), 60);
        // An append with a gap (after a snapshot install) drops the rest.
        c.appended(entries(50..52));
        assert_eq!(indices(c.range(1, None)), None);
        assert_eq!(indices(c.range(50, None)), Some(vec![50, 51]));
    }

    #[test]
    fn stays_within_its_bytes_and_bounds_replication_reads() {
        let c = RecentEntries::new(45);
        durable(&c, 1..10);
        assert!(c.bytes() <= 45);
        assert_eq!(indices(c.range(6, None)), Some(vec![6, 7, 8, 9]));
        assert_eq!(indices(c.limited(6, 100, 25)), Some(vec![6, 7]));
        assert_eq!(indices(c.limited(6, 8, 1000)), Some(vec![6, 7]));
        // At least one entry, whatever the bound.
        assert_eq!(indices(c.limited(9, 100, 1)), Some(vec![9]));
        assert_eq!(indices(c.limited(2, 100, 1000)), None);
        let off = RecentEntries::new(0);
        durable(&off, 1..3);
        assert_eq!(indices(off.range(1, None)), None);
    }

    #[test]
    fn entries_not_yet_durable_stay_whatever_the_bound_or_apply() {
        let c = RecentEntries::new(25);
        durable(&c, 1..4);
        assert_eq!(c.first_index(), Some(2));
        // Two appends queued to the writer, neither durable yet.
        c.appended(entries(4..7));
        c.appended(entries(7..9));
        assert_eq!(c.first_index(), Some(4), "durable ones go first");
        c.forget_upto(8);
        assert_eq!(indices(c.range(4, None)), Some((4..9).collect()));
        assert_eq!(c.bytes(), 50);
        // The first is durable: it may go, the second may not.
        c.written();
        assert_eq!(c.first_index(), Some(7));
        c.forget_upto(8);
        assert_eq!(indices(c.range(7, None)), Some(vec![7, 8]));
        c.written();
        c.forget_upto(8);
        assert_eq!(c.first_index(), None);
        // With no room at all, entries stay only until durable.
        let off = RecentEntries::new(0);
        off.appended(entries(1..3));
        assert_eq!(indices(off.range(1, None)), Some(vec![1, 2]));
        off.written();
        assert_eq!(indices(off.range(1, None)), None);
    }
}
