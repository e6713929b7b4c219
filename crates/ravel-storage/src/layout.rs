//! How user keys are laid out in the `kv` column family: each behind its
//! partition, so that a partition is one contiguous key range.
//!
//! ```text
//! stored key = partition_of(key, LAYOUT_PARTITIONS) as u16, big-endian | key
//! ```
//!
//! A relocation moves whole partitions. Stored in user-key order, a
//! partition's keys are spread evenly over the whole key space (the
//! partition is a hash), so removing a moved partition from its old owner
//! took a point read and a tombstone per key, and the tombstones, spread
//! over every file, made RocksDB rewrite the whole data set (35% of the
//! source's CPU in a 1M-key move; docs/benchmarks.md). Stored behind its
//! partition, a moved partition is one range: listed by one seek, removed
//! by one range delete, dropped by compaction file by file.
//!
//! The layout uses the admin's default partition count
//! ([`LAYOUT_PARTITIONS`], 271, `ring.partitions`). A deployment that
//! chose another count works the same, only without the shortcut: its
//! partitions are found and removed key by key.
//!
//! Listings still come in user-key order (a k-way merge of the partitions'
//! ranges): a cursor means the same on every version of a node, so a
//! listing that resumes on another replica misses nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rocksdb::{DBRawIteratorWithThreadMode, ReadOptions, DB};

use crate::engine::{Engine, CF_DATA};
use crate::error::Result;

/// Partitions of the stored layout: the admin's default `ring.partitions`.
pub const LAYOUT_PARTITIONS: u32 = 271;

/// Bytes of the partition prefix.
const PREFIX: usize = 2;

/// The layout partition of a user key.
pub fn layout_partition(key: &[u8]) -> u32 {
    ravel_proto::partition_of(key, LAYOUT_PARTITIONS)
}

fn prefix(partition: u32) -> [u8; PREFIX] {
    // LAYOUT_PARTITIONS < 2^16: the cast keeps every partition.
    (partition as u16).to_be_bytes()
}

/// The stored key of a user key.
pub(crate) fn encode(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX + key.len());
    out.extend_from_slice(&prefix(layout_partition(key)));
    out.extend_from_slice(key);
    out
}

/// The user key of a stored key, or `None` when it is too short to hold
/// a prefix (a damaged database).
pub(crate) fn decode(stored: &[u8]) -> Option<&[u8]> {
    stored.get(PREFIX..)
}

/// The stored range `[start, end)` of a layout partition.
pub(crate) fn partition_range(partition: u32) -> ([u8; PREFIX], [u8; PREFIX]) {
    (prefix(partition), prefix(partition + 1))
}

/// Which layout partitions can hold keys of the given partitions of a
/// `count`-partition ring: exactly those when `count` is the layout's,
/// all of them otherwise.
pub(crate) fn layout_partitions_for(count: u32, partitions: &[u32]) -> Vec<u32> {
    if count == LAYOUT_PARTITIONS {
        let mut ps: Vec<u32> = partitions
            .iter()
            .copied()
            .filter(|p| *p < LAYOUT_PARTITIONS)
            .collect();
        ps.sort_unstable();
        ps.dedup();
        ps
    } else {
        (0..LAYOUT_PARTITIONS).collect()
    }
}

/// One partition's cursor in a merged scan.
struct Cursor<'a> {
    iter: DBRawIteratorWithThreadMode<'a, DB>,
}

impl Engine {
    /// Visits user entries in user-key order, from `start` (excluded when
    /// `after` is set), over the layout partitions `partitions` (all when
    /// `None`), as of `opts` (a snapshot, cache hints), until `visit`
    /// returns false or the entries run out. Returns whether they ran out.
    pub(crate) fn scan_merged(
        &self,
        partitions: Option<&[u32]>,
        start: &[u8],
        after: bool,
        opts: impl Fn() -> ReadOptions,
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<bool> {
        let all: Vec<u32>;
        let partitions = match partitions {
            Some(p) => p,
            None => {
                all = (0..LAYOUT_PARTITIONS).collect();
                &all
            }
        };
        let mut cursors = Vec::with_capacity(partitions.len());
        // Min-heap of (user key, cursor index).
        let mut heap: BinaryHeap<Reverse<(Vec<u8>, usize)>> = BinaryHeap::new();
        for &p in partitions {
            let (lo, hi) = partition_range(p);
            let mut o = opts();
            o.set_iterate_upper_bound(hi.to_vec());
            let mut iter = self.db().raw_iterator_cf_opt(self.cf(CF_DATA), o);
            let mut from = lo.to_vec();
            from.extend_from_slice(start);
            iter.seek(&from);
            if after && iter.key() == Some(&from[..]) {
                iter.next();
            }
            iter.status().map_err(|e| self.rocks_err(e))?;
            if let Some(k) = iter.key() {
                heap.push(Reverse((self.user_key(k)?.to_vec(), cursors.len())));
            }
            cursors.push(Cursor { iter });
        }
        while let Some(Reverse((key, i))) = heap.pop() {
            let c = &mut cursors[i];
            let value = c.iter.value().expect("a positioned cursor has a value");
            if !visit(&key, value) {
                return Ok(false);
            }
            c.iter.next();
            c.iter.status().map_err(|e| self.rocks_err(e))?;
            if let Some(k) = c.iter.key() {
                heap.push(Reverse((self.user_key(k)?.to_vec(), i)));
            }
        }
        Ok(true)
    }

    /// The user key of a stored key; a stored key too short for its prefix
    /// is corruption.
    pub(crate) fn user_key<'k>(&self, stored: &'k [u8]) -> Result<&'k [u8]> {
        decode(stored).ok_or_else(|| crate::StorageError::Corrupt {
            path: self.path().to_path_buf(),
            detail: format!(
                "a data key of {} bytes has no partition prefix",
                stored.len()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_keys_group_by_partition_and_decode_back() {
        let keys: Vec<Vec<u8>> = (0..2000).map(|i| format!("key-{i}").into_bytes()).collect();
        let mut stored: Vec<Vec<u8>> = keys.iter().map(|k| encode(k)).collect();
        stored.sort();
        // Sorted stored keys: partitions ascending, each one contiguous.
        let parts: Vec<u32> = stored
            .iter()
            .map(|s| layout_partition(decode(s).unwrap()))
            .collect();
        assert!(parts.windows(2).all(|w| w[0] <= w[1]));
        for s in &stored {
            let (lo, hi) = partition_range(layout_partition(decode(s).unwrap()));
            assert!(s.as_slice() >= &lo[..] && s.as_slice() < &hi[..]);
        }
        let mut back: Vec<Vec<u8>> = stored.iter().map(|s| decode(s).unwrap().to_vec()).collect();
        back.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(back, want);
        // The empty key has a partition too.
        assert_eq!(decode(&encode(b"")).unwrap(), b"");
        assert_eq!(decode(b"x"), None);
        // The last partition's range ends below the prefix space's end.
        assert!(LAYOUT_PARTITIONS < u32::from(u16::MAX));
    }

    #[test]
    fn only_the_layouts_count_narrows_the_partitions_to_scan() {
        assert_eq!(layout_partitions_for(271, &[9, 3, 3, 300]), vec![3, 9]);
        assert_eq!(layout_partitions_for(17, &[3]).len(), 271);
    }
}
