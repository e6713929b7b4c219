//! Snapshots: a consistent view of the state machine (user data plus its
//! metadata) written as a self-checking stream, and the atomic import of such
//! a stream.
//!
//! Stream layout (all integers big-endian):
//!
//! ```text
//! magic "RVLSNAP\0" | format u32 | header_len u32 | header | crc32(format, header)
//! chunk*:  'C' | len u32 | crc32(payload) u32 | payload
//!          payload = (cf u8 | key_len u32 | key | value_len u32 | value)*
//! trailer: 'E' | chunks u64 | entries u64 | crc32(chunks, entries) u32
//! ```
//!
//! (Over 400 lines: the writer, the reader and the tests of one format
//! belong together.)
//!
//! The header is opaque to this crate: the consensus layer stores the Raft
//! snapshot metadata there. Importing a snapshot file is in `import.rs`.

use std::io::{Read, Write};

use rocksdb::{IteratorMode, ReadOptions, SnapshotWithThreadMode, DB};

use crate::engine::{Engine, CF_DATA, CF_SM_META};
use crate::error::{Result, StorageError};

const MAGIC: &[u8; 8] = b"RVLSNAP\0";
/// Version of the stream's layout. Apart from the directory's
/// (`FORMAT_VERSION`): the stream carries user keys whatever the stored
/// layout, so a replica sends snapshots its peers of an older layout read.
pub(crate) const STREAM_FORMAT: u32 = 1;
pub(crate) const TAG_CHUNK: u8 = b'C';
pub(crate) const TAG_END: u8 = b'E';
pub(crate) const CF_TAG_DATA: u8 = 0;
pub(crate) const CF_TAG_SM_META: u8 = 1;
/// Upper bound on one chunk or header, so a damaged length cannot make us
/// allocate without limit.
pub(crate) const MAX_FRAME: u32 = 256 << 20;

/// What an export or import moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotStats {
    pub chunks: u64,
    pub entries: u64,
    pub bytes: u64,
    /// Import only: how many write batches it took, and the largest one's
    /// size (what the import held in memory at once).
    pub batches: u64,
    pub max_batch_bytes: u64,
}

pub(crate) fn bad(msg: impl Into<String>) -> StorageError {
    StorageError::Snapshot(msg.into())
}

struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> CountingWriter<W> {
    fn put(&mut self, buf: &[u8]) -> Result<()> {
        self.inner
            .write_all(buf)
            .map_err(|e| bad(format!("writing snapshot stream: {e}")))?;
        self.bytes += buf.len() as u64;
        Ok(())
    }
}

/// A job run against a pinned view, on the view's own thread.
type ViewJob = Box<dyn for<'a> FnOnce(&Engine, &SnapshotWithThreadMode<'a, DB>) + Send>;

/// A consistent view of the state machine, pinned (a RocksDB snapshot,
/// held on a thread of its own) from [`Engine::pin_view`] until it is
/// exported or dropped. Nothing is copied: the view costs what RocksDB
/// keeps alive for it (overwritten and deleted versions, for as long as it
/// lives).
pub struct PinnedView {
    sm_meta: Vec<(String, Vec<u8>)>,
    estimated_bytes: u64,
    jobs: std::sync::mpsc::SyncSender<ViewJob>,
}

impl std::fmt::Debug for PinnedView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedView")
            .field("estimated_bytes", &self.estimated_bytes)
            .finish_non_exhaustive()
    }
}

impl PinnedView {
    /// The state-machine metadata as of the view.
    pub fn sm_meta(&self) -> &[(String, Vec<u8>)] {
        &self.sm_meta
    }

    /// RocksDB's estimate of the user data's size when the view was pinned
    /// (what an export will write, roughly: for deadlines and progress).
    pub fn estimated_bytes(&self) -> u64 {
        self.estimated_bytes
    }

    /// Writes the view as a snapshot stream to `out` (see the module
    /// docs), blocking until it is written; gives `out` back.
    pub fn export<W: Write + Send + 'static>(
        self,
        out: W,
        chunk_bytes: usize,
        header: Vec<u8>,
    ) -> Result<(W, SnapshotStats)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let meta = self.sm_meta;
        let job: ViewJob = Box::new(move |engine, snap| {
            let mut out = out;
            let res = engine.write_stream(snap, &meta, &mut out, chunk_bytes, &header);
            let _ = tx.send(res.map(|stats| (out, stats)));
        });
        self.jobs
            .send(job)
            .map_err(|_| bad("the snapshot view's thread is gone"))?;
        rx.recv()
            .map_err(|_| bad("the snapshot view's thread ended without an answer"))?
    }
}

impl Engine {
    /// Pins a consistent view of the state machine for a later export. The
    /// view lives on a thread of its own (a RocksDB snapshot borrows the
    /// database), which ends when the view is exported or dropped.
    pub fn pin_view(&self) -> Result<PinnedView> {
        let (jobs, job_rx) = std::sync::mpsc::sync_channel::<ViewJob>(1);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let engine = self.clone();
        std::thread::Builder::new()
            .name("ravel-snapshot-view".into())
            .spawn(move || {
                let snap = engine.db().snapshot();
                let pinned = engine.read_sm_meta(&snap).map(|meta| {
                    let estimate = [
                        "rocksdb.estimate-live-data-size",
                        "rocksdb.cur-size-all-mem-tables",
                    ]
                    .iter()
                    .filter_map(|p| {
                        engine
                            .db()
                            .property_int_value_cf(engine.cf(CF_DATA), *p)
                            .ok()
                            .flatten()
                    })
                    .sum::<u64>();
                    (meta, estimate)
                });
                let ok = pinned.is_ok();
                if ready_tx.send(pinned).is_err() || !ok {
                    return;
                }
                // One job at most; none if the view is dropped unused.
                if let Ok(job) = job_rx.recv() {
                    job(&engine, &snap);
                }
            })
            .map_err(|e| bad(format!("starting a snapshot view's thread: {e}")))?;
        let (sm_meta, estimated_bytes) = ready_rx
            .recv()
            .map_err(|_| bad("the snapshot view's thread ended early"))??;
        Ok(PinnedView {
            sm_meta,
            estimated_bytes,
            jobs,
        })
    }

    /// Writes a consistent snapshot of the state machine to `out`, in chunks
    /// of about `chunk_bytes`. `header` receives the state-machine metadata
    /// as of the snapshot (the same point in time as the data) and returns
    /// the opaque header to store in the stream.
    pub fn export_snapshot<W, H>(
        &self,
        mut out: W,
        chunk_bytes: usize,
        header: H,
    ) -> Result<SnapshotStats>
    where
        W: Write,
        H: FnOnce(&[(String, Vec<u8>)]) -> Vec<u8>,
    {
        let snap = self.db().snapshot();
        let meta = self.read_sm_meta(&snap)?;
        let header = header(&meta);
        self.write_stream(&snap, &meta, &mut out, chunk_bytes, &header)
    }

    /// The state-machine metadata as of `snap`.
    fn read_sm_meta(
        &self,
        snap: &SnapshotWithThreadMode<'_, DB>,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(snap);
        let mut meta = Vec::new();
        for item in self
            .db()
            .iterator_cf_opt(self.cf(CF_SM_META), opts, IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.rocks_err(e))?;
            let k = String::from_utf8(k.into_vec())
                .map_err(|_| self.corrupt("state-machine metadata key is not UTF-8"))?;
            meta.push((k, v.into_vec()));
        }
        Ok(meta)
    }

    /// Writes the stream of the view `snap`, whose metadata is `meta`.
    fn write_stream<W: Write>(
        &self,
        snap: &SnapshotWithThreadMode<'_, DB>,
        meta: &[(String, Vec<u8>)],
        out: W,
        chunk_bytes: usize,
        header: &[u8],
    ) -> Result<SnapshotStats> {
        let chunk_bytes = chunk_bytes.clamp(1, MAX_FRAME as usize / 2);
        if header.len() > MAX_FRAME as usize {
            return Err(bad("snapshot header too large"));
        }

        let mut w = CountingWriter {
            inner: out,
            bytes: 0,
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&STREAM_FORMAT.to_be_bytes());
        crc.update(header);
        w.put(MAGIC)?;
        w.put(&STREAM_FORMAT.to_be_bytes())?;
        w.put(&(header.len() as u32).to_be_bytes())?;
        w.put(header)?;
        w.put(&crc.finalize().to_be_bytes())?;

        let mut stats = SnapshotStats::default();
        let mut payload = Vec::with_capacity(chunk_bytes + 1024);
        let flush = |payload: &mut Vec<u8>,
                     w: &mut CountingWriter<W>,
                     stats: &mut SnapshotStats|
         -> Result<()> {
            if payload.is_empty() {
                return Ok(());
            }
            w.put(&[TAG_CHUNK])?;
            w.put(&(payload.len() as u32).to_be_bytes())?;
            w.put(&crc32fast::hash(payload).to_be_bytes())?;
            w.put(payload)?;
            stats.chunks += 1;
            payload.clear();
            Ok(())
        };
        let push = |cf: u8, k: &[u8], v: &[u8], payload: &mut Vec<u8>| {
            payload.push(cf);
            payload.extend_from_slice(&(k.len() as u32).to_be_bytes());
            payload.extend_from_slice(k);
            payload.extend_from_slice(&(v.len() as u32).to_be_bytes());
            payload.extend_from_slice(v);
        };
        for (k, v) in meta {
            push(CF_TAG_SM_META, k.as_bytes(), v, &mut payload);
            stats.entries += 1;
        }
        let mut opts = ReadOptions::default();
        opts.set_snapshot(snap);
        // A full scan: do not evict the working set from the block cache.
        opts.fill_cache(false);
        for item in self
            .db()
            .iterator_cf_opt(self.cf(CF_DATA), opts, IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.rocks_err(e))?;
            push(CF_TAG_DATA, self.user_key(&k)?, &v, &mut payload);
            stats.entries += 1;
            if payload.len() >= chunk_bytes {
                flush(&mut payload, &mut w, &mut stats)?;
            }
        }
        flush(&mut payload, &mut w, &mut stats)?;

        let mut trailer = Vec::with_capacity(16);
        trailer.extend_from_slice(&stats.chunks.to_be_bytes());
        trailer.extend_from_slice(&stats.entries.to_be_bytes());
        w.put(&[TAG_END])?;
        w.put(&trailer)?;
        w.put(&crc32fast::hash(&trailer).to_be_bytes())?;
        w.inner
            .flush()
            .map_err(|e| bad(format!("flushing snapshot stream: {e}")))?;
        stats.bytes = w.bytes;
        Ok(stats)
    }

    fn corrupt(&self, detail: &str) -> StorageError {
        StorageError::Corrupt {
            path: self.path().to_path_buf(),
            detail: detail.into(),
        }
    }
}

/// Reads and checks only the header of a snapshot stream.
pub fn read_snapshot_header<R: Read>(mut input: R) -> Result<Vec<u8>> {
    read_header(&mut input)
}

pub(crate) fn read_header<R: Read>(input: &mut R) -> Result<Vec<u8>> {
    let magic = read_exact(input, MAGIC.len())?;
    if magic != MAGIC {
        return Err(bad("not a Ravel snapshot (bad magic)"));
    }
    let version = read_u32(input)?;
    if version != STREAM_FORMAT {
        return Err(bad(format!(
            "snapshot format version {version}, this build reads {STREAM_FORMAT}"
        )));
    }
    let len = read_u32(input)?;
    if len > MAX_FRAME {
        return Err(bad(format!("header of {len} bytes exceeds the limit")));
    }
    let header = read_exact(input, len as usize)?;
    let crc = read_u32(input)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&version.to_be_bytes());
    h.update(&header);
    if h.finalize() != crc {
        return Err(bad("checksum mismatch in header"));
    }
    Ok(header)
}

pub(crate) fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if p.len() < n {
        return Err(bad("chunk payload ends inside an entry"));
    }
    let (head, tail) = p.split_at(n);
    *p = tail;
    Ok(head)
}

pub(crate) fn read_exact<R: Read>(input: &mut R, n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0; n];
    input.read_exact(&mut buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad("stream ends early (truncated snapshot)"),
        _ => bad(format!("reading snapshot stream: {e}")),
    })?;
    Ok(buf)
}

pub(crate) fn read_u8<R: Read>(input: &mut R) -> Result<u8> {
    Ok(read_exact(input, 1)?[0])
}

pub(crate) fn read_u32<R: Read>(input: &mut R) -> Result<u32> {
    Ok(u32::from_be_bytes(
        read_exact(input, 4)?.try_into().expect("4 bytes"),
    ))
}
