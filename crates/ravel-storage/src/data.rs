//! The state machine's column families: user key-value data and the
//! state-machine metadata (last applied log id, membership) that must change
//! together with it.

use std::collections::HashSet;

use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::engine::{Engine, CF_DATA, CF_SM_META};
use crate::error::Result;
use crate::layout::{self, LAYOUT_PARTITIONS};

/// The writes of one `apply` call: data changes plus state-machine metadata,
/// committed to RocksDB as a single atomic `WriteBatch`.
pub struct ApplyBatch<'a> {
    engine: &'a Engine,
    batch: WriteBatch,
}

impl ApplyBatch<'_> {
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.batch
            .put_cf(self.engine.cf(CF_DATA), layout::encode(key), value);
    }

    pub fn delete(&mut self, key: &[u8]) {
        self.batch
            .delete_cf(self.engine.cf(CF_DATA), layout::encode(key));
    }

    /// Deletes every key of the given partitions of a `count`-partition
    /// ring. With the layout's count, one range delete per partition (see
    /// `layout.rs`); with another, a delete per key found in the database.
    /// That search reads the database, not this batch: a caller that put
    /// keys of these partitions earlier in the batch commits it first.
    pub fn delete_partitions(&mut self, count: u32, partitions: &[u32]) -> Result<()> {
        let cf = self.engine.cf(CF_DATA);
        if count == LAYOUT_PARTITIONS {
            for p in layout::layout_partitions_for(count, partitions) {
                let (lo, hi) = layout::partition_range(p);
                self.batch.delete_range_cf(cf, lo, hi);
            }
            return Ok(());
        }
        let wanted: HashSet<u32> = partitions.iter().copied().collect();
        for item in self.engine.db().iterator_cf(cf, IteratorMode::Start) {
            let (stored, _) = item.map_err(|e| self.engine.rocks_err(e))?;
            let key = self.engine.user_key(&stored)?;
            if wanted.contains(&ravel_proto::partition_of(key, count)) {
                self.batch.delete_cf(cf, &stored);
            }
        }
        Ok(())
    }

    pub fn put_meta(&mut self, key: &str, value: &[u8]) {
        self.batch
            .put_cf(self.engine.cf(CF_SM_META), key.as_bytes(), value);
    }

    pub fn delete_meta(&mut self, key: &str) {
        self.batch
            .delete_cf(self.engine.cf(CF_SM_META), key.as_bytes());
    }

    /// Number of operations gathered so far.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Commits the batch atomically, without RocksDB's WAL. The Raft log is
    /// the write-ahead log: entries are durable there before they are
    /// applied, and after a crash the state machine re-applies everything
    /// after its last durable `last_applied`, which is what the last
    /// (atomic) flush wrote. A purge of the log flushes first
    /// ([`Engine::purge_log`]), so the entries a lost apply came from are
    /// always still there. Writing each apply to the WAL as well wrote every
    /// byte twice (docs/benchmarks.md, "Applies without the WAL").
    pub fn commit(self) -> Result<()> {
        self.engine.write_unlogged(self.batch)
    }
}

impl Engine {
    /// Starts a batch of state-machine writes.
    pub fn apply_batch(&self) -> ApplyBatch<'_> {
        ApplyBatch {
            engine: self,
            batch: WriteBatch::default(),
        }
    }

    /// Reads a user key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_cf(CF_DATA, &layout::encode(key))
    }

    /// Reads a state-machine metadata value.
    pub fn sm_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get_cf(CF_SM_META, key.as_bytes())
    }

    /// The state-machine metadata keys that start with `prefix`, in order.
    pub fn sm_meta_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let iter = self.db().iterator_cf(
            self.cf(CF_SM_META),
            IteratorMode::From(prefix.as_bytes(), Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, _) = item.map_err(|e| self.rocks_err(e))?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }

    /// Up to `limit` user entries with keys `>= start`, in key order, for
    /// paging through the data.
    pub fn scan(&self, start: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::with_capacity(limit.min(1024));
        if limit > 0 {
            self.scan_merged(None, start, false, rocksdb::ReadOptions::default, |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                out.len() < limit
            })?;
        }
        Ok(out)
    }

    /// Visits user entries in key order, after `after` (exclusive; from
    /// the first when `None`), until `visit` returns false: those of the
    /// given partitions of a `count`-partition ring with `wanted` true, and
    /// where the layout cannot tell them apart (another count), those of
    /// other partitions with `wanted` false (their number bounds the work
    /// of a call). Returns whether the entries ran out.
    pub fn scan_partitions(
        &self,
        count: u32,
        partitions: &[u32],
        after: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], &[u8], bool) -> bool,
    ) -> Result<bool> {
        let wanted: HashSet<u32> = partitions.iter().copied().collect();
        let layout_parts = layout::layout_partitions_for(count, partitions);
        let exact = count == LAYOUT_PARTITIONS;
        self.scan_merged(
            Some(&layout_parts),
            after.unwrap_or_default(),
            after.is_some(),
            rocksdb::ReadOptions::default,
            |k, v| {
                visit(
                    k,
                    v,
                    exact || wanted.contains(&ravel_proto::partition_of(k, count)),
                )
            },
        )
    }

    /// Every user entry as of one point in time (a RocksDB snapshot taken
    /// on the call), in stored order (by layout partition, then key), handed to `page` in pages of about
    /// `page_bytes` of keys and values. Stops early, without error, when
    /// `page` returns false (its reader went away). Returns the number of
    /// entries handed over. Blocking: call it off the async runtime.
    pub fn export_data(
        &self,
        page_bytes: usize,
        mut page: impl FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> bool,
    ) -> Result<u64> {
        let snap = self.db().snapshot();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_snapshot(&snap);
        // A one-off full scan: keep it out of the block cache.
        opts.fill_cache(false);
        let iter = self
            .db()
            .iterator_cf_opt(self.cf(CF_DATA), opts, IteratorMode::Start);
        let (mut entries, mut bytes, mut total) = (Vec::new(), 0usize, 0u64);
        for item in iter {
            let (k, v) = item.map_err(|e| self.rocks_err(e))?;
            let k = self.user_key(&k)?.to_vec();
            bytes += k.len() + v.len();
            entries.push((k, v.into_vec()));
            if bytes >= page_bytes {
                total += entries.len() as u64;
                if !page(std::mem::take(&mut entries)) {
                    return Ok(total);
                }
                bytes = 0;
            }
        }
        total += entries.len() as u64;
        if !entries.is_empty() {
            page(entries);
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use crate::Engine;

    #[test]
    fn apply_is_atomic_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path().join("db")).unwrap();
        let mut b = e.apply_batch();
        b.put(b"k1", b"v1");
        b.put(b"k2", b"v2");
        b.delete(b"k1");
        b.put_meta("last_applied", b"7");
        assert_eq!(b.len(), 4);
        b.commit().unwrap();
        assert_eq!(e.get(b"k1").unwrap(), None);
        assert_eq!(e.get(b"k2").unwrap().as_deref(), Some(&b"v2"[..]));
        assert_eq!(
            e.sm_meta("last_applied").unwrap().as_deref(),
            Some(&b"7"[..])
        );
        let page = e.scan(b"", 10).unwrap();
        assert_eq!(page, vec![(b"k2".to_vec(), b"v2".to_vec())]);
    }

    #[test]
    fn export_data_reads_one_point_in_time_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path().join("db")).unwrap();
        let mut b = e.apply_batch();
        for i in 0..100u32 {
            b.put(format!("k{i:03}").as_bytes(), &[7u8; 60]);
        }
        b.commit().unwrap();
        let mut pages = Vec::new();
        let total = e
            .export_data(1000, |p| {
                if pages.is_empty() {
                    // Written after the export began: not in it.
                    let mut b = e.apply_batch();
                    b.put(b"k999-late", b"x");
                    b.delete(b"k000");
                    b.commit().unwrap();
                }
                pages.push(p);
                true
            })
            .unwrap();
        assert_eq!(total, 100);
        assert!(pages.len() > 5, "pages of ~1000 bytes: {}", pages.len());
        let mut keys: Vec<Vec<u8>> = pages.into_iter().flatten().map(|(k, _)| k).collect();
        keys.sort();
        let want: Vec<Vec<u8>> = (0..100u32)
            .map(|i| format!("k{i:03}").into_bytes())
            .collect();
        assert_eq!(keys, want, "every key once, as of the export's start");
        // A reader that goes away stops the export.
        let mut seen = 0;
        let total = e.export_data(1000, |_| {
            seen += 1;
            false
        });
        assert_eq!((total.unwrap(), seen), (16, 1));
    }

    fn filled(n: u32) -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path().join("db")).unwrap();
        let mut b = e.apply_batch();
        for i in 0..n {
            b.put(format!("key-{i:05}").as_bytes(), format!("v{i}").as_bytes());
        }
        b.commit().unwrap();
        (dir, e)
    }

    #[test]
    fn scans_come_in_user_key_order_across_partitions() {
        let (_dir, e) = filled(3000);
        let all = e.scan(b"", usize::MAX).unwrap();
        assert_eq!(all.len(), 3000);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "key order");
        let page = e.scan(b"key-01000", 5).unwrap();
        let keys: Vec<&[u8]> = page.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys[0], b"key-01000");
        assert_eq!(keys[4], b"key-01004");
        assert_eq!(e.scan(b"", 0).unwrap(), vec![]);
    }

    /// A partition listing resumes after its cursor and sees each key of
    /// the wanted partitions once, in key order, with the layout's count
    /// (a range per partition) and with another (a filter).
    #[test]
    fn partition_scans_resume_after_their_cursor() {
        let (_dir, e) = filled(3000);
        for count in [crate::LAYOUT_PARTITIONS, 17] {
            let wanted = [2u32, 5, 11];
            let want: Vec<Vec<u8>> = (0..3000u32)
                .map(|i| format!("key-{i:05}").into_bytes())
                .filter(|k| wanted.contains(&ravel_proto::partition_of(k, count)))
                .collect();
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut cursor: Option<Vec<u8>> = None;
            loop {
                let mut page = Vec::new();
                let done = e
                    .scan_partitions(count, &wanted, cursor.as_deref(), |k, _, wanted| {
                        if wanted {
                            page.push(k.to_vec());
                        }
                        page.len() < 7
                    })
                    .unwrap();
                cursor = page.last().cloned().or(cursor);
                got.extend(page);
                if done {
                    break;
                }
            }
            assert_eq!(got, want, "count {count}");
        }
    }

    #[test]
    fn deleting_partitions_removes_exactly_their_keys() {
        for count in [crate::LAYOUT_PARTITIONS, 17] {
            let (_dir, e) = filled(2000);
            let gone = [1u32, 4, 9];
            let mut b = e.apply_batch();
            b.delete_partitions(count, &gone).unwrap();
            b.commit().unwrap();
            let left = e.scan(b"", usize::MAX).unwrap();
            let want: Vec<Vec<u8>> = (0..2000u32)
                .map(|i| format!("key-{i:05}").into_bytes())
                .filter(|k| !gone.contains(&ravel_proto::partition_of(k, count)))
                .collect();
            assert!(want.len() < 2000 && !want.is_empty(), "{}", want.len());
            let left: Vec<Vec<u8>> = left.into_iter().map(|(k, _)| k).collect();
            assert_eq!(left, want, "count {count}");
            for k in &want {
                assert!(e.get(k).unwrap().is_some());
            }
        }
    }
}
