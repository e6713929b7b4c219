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

use rocksdb::{IteratorMode, ReadOptions};

use crate::engine::{Engine, CF_DATA, CF_SM_META, FORMAT_VERSION};
use crate::error::{Result, StorageError};

const MAGIC: &[u8; 8] = b"RVLSNAP\0";
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

impl Engine {
    /// Writes a consistent snapshot of the state machine to `out`, in chunks
    /// of about `chunk_bytes`. `header` receives the state-machine metadata
    /// as of the snapshot (the same point in time as the data) and returns
    /// the opaque header to store in the stream.
    pub fn export_snapshot<W, H>(
        &self,
        out: W,
        chunk_bytes: usize,
        header: H,
    ) -> Result<SnapshotStats>
    where
        W: Write,
        H: FnOnce(&[(String, Vec<u8>)]) -> Vec<u8>,
    {
        let chunk_bytes = chunk_bytes.clamp(1, MAX_FRAME as usize / 2);
        let snap = self.db().snapshot();
        let read_opts = || {
            let mut o = ReadOptions::default();
            o.set_snapshot(&snap);
            o
        };

        let mut meta = Vec::new();
        for item in self
            .db()
            .iterator_cf_opt(self.cf(CF_SM_META), read_opts(), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.rocks_err(e))?;
            let k = String::from_utf8(k.into_vec())
                .map_err(|_| self.corrupt("state-machine metadata key is not UTF-8"))?;
            meta.push((k, v.into_vec()));
        }
        let header = header(&meta);
        if header.len() > MAX_FRAME as usize {
            return Err(bad("snapshot header too large"));
        }

        let mut w = CountingWriter {
            inner: out,
            bytes: 0,
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&FORMAT_VERSION.to_be_bytes());
        crc.update(&header);
        w.put(MAGIC)?;
        w.put(&FORMAT_VERSION.to_be_bytes())?;
        w.put(&(header.len() as u32).to_be_bytes())?;
        w.put(&header)?;
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
        for (k, v) in &meta {
            push(CF_TAG_SM_META, k.as_bytes(), v, &mut payload);
            stats.entries += 1;
        }
        for item in self
            .db()
            .iterator_cf_opt(self.cf(CF_DATA), read_opts(), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.rocks_err(e))?;
            push(CF_TAG_DATA, &k, &v, &mut payload);
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
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "snapshot format version {version}, this build reads {FORMAT_VERSION}"
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
