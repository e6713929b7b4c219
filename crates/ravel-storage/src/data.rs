//! The state machine's column families: user key-value data and the
//! state-machine metadata (last applied log id, membership) that must change
//! together with it.

use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::engine::{Engine, CF_DATA, CF_SM_META};
use crate::error::Result;

/// The writes of one `apply` call: data changes plus state-machine metadata,
/// committed to RocksDB as a single atomic `WriteBatch`.
pub struct ApplyBatch<'a> {
    engine: &'a Engine,
    batch: WriteBatch,
}

impl ApplyBatch<'_> {
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.engine.cf(CF_DATA), key, value);
    }

    pub fn delete(&mut self, key: &[u8]) {
        self.batch.delete_cf(self.engine.cf(CF_DATA), key);
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

    /// Commits the batch atomically without an fsync of its own. The Raft log
    /// is the write-ahead log: entries are durable there before they are
    /// applied, and after a crash the state machine re-applies everything
    /// after its last durable `last_applied`. Any later synced write (a log
    /// append, a purge) also makes this batch durable, since all column
    /// families share one RocksDB WAL.
    pub fn commit(self) -> Result<()> {
        self.engine.write(self.batch, false)
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
        self.get_cf(CF_DATA, key)
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
        let iter = self.db().iterator_cf(
            self.cf(CF_DATA),
            IteratorMode::From(start, Direction::Forward),
        );
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in iter.take(limit) {
            let (k, v) = item.map_err(|e| self.rocks_err(e))?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Every user entry as of one point in time (a RocksDB snapshot taken
    /// on the call), in key order, handed to `page` in pages of about
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
            bytes += k.len() + v.len();
            entries.push((k.into_vec(), v.into_vec()));
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
        let keys: Vec<Vec<u8>> = pages.into_iter().flatten().map(|(k, _)| k).collect();
        assert_eq!(keys.first().unwrap(), b"k000");
        assert_eq!(keys.last().unwrap(), b"k099");
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "key order");
        // A reader that goes away stops the export.
        let mut seen = 0;
        let total = e.export_data(1000, |_| {
            seen += 1;
            false
        });
        assert_eq!((total.unwrap(), seen), (16, 1));
    }
}
