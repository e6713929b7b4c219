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
}
