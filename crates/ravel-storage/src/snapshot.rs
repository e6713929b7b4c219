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
//! snapshot metadata there. Import verifies every checksum while it fills one
//! `WriteBatch`, and commits it (synced) only once the trailer checks out: a
//! truncated or damaged stream changes nothing.

use std::io::{Read, Write};

use rocksdb::{IteratorMode, ReadOptions, WriteBatch};

use crate::engine::{Engine, CF_DATA, CF_SM_META, FORMAT_VERSION};
use crate::error::{Result, StorageError};

const MAGIC: &[u8; 8] = b"RVLSNAP\0";
const TAG_CHUNK: u8 = b'C';
const TAG_END: u8 = b'E';
const CF_TAG_DATA: u8 = 0;
const CF_TAG_SM_META: u8 = 1;
/// Upper bound on one chunk or header, so a damaged length cannot make us
/// allocate without limit.
const MAX_FRAME: u32 = 256 << 20;

/// What an export or import moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotStats {
    pub chunks: u64,
    pub entries: u64,
    pub bytes: u64,
}

fn bad(msg: impl Into<String>) -> StorageError {
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

    /// Replaces the whole state machine (data and metadata) with the
    /// snapshot read from `input`, atomically and durably, and returns the
    /// snapshot's header. On any error nothing has changed.
    pub fn import_snapshot<R: Read>(&self, mut input: R) -> Result<(Vec<u8>, SnapshotStats)> {
        let header = read_header(&mut input)?;
        let mut batch = WriteBatch::default();
        for cf in [CF_DATA, CF_SM_META] {
            self.clear_cf(&mut batch, cf)?;
        }
        let mut stats = SnapshotStats::default();
        loop {
            match read_u8(&mut input)? {
                TAG_CHUNK => {
                    let len = read_u32(&mut input)?;
                    let crc = read_u32(&mut input)?;
                    if len > MAX_FRAME {
                        return Err(bad(format!("chunk of {len} bytes exceeds the limit")));
                    }
                    let payload = read_exact(&mut input, len as usize)?;
                    if crc32fast::hash(&payload) != crc {
                        return Err(bad(format!("checksum mismatch in chunk {}", stats.chunks)));
                    }
                    stats.entries += self.decode_chunk(&payload, &mut batch)?;
                    stats.chunks += 1;
                    stats.bytes += u64::from(len);
                }
                TAG_END => {
                    let trailer = read_exact(&mut input, 16)?;
                    let crc = read_u32(&mut input)?;
                    if crc32fast::hash(&trailer) != crc {
                        return Err(bad("checksum mismatch in trailer"));
                    }
                    let chunks = u64::from_be_bytes(trailer[..8].try_into().expect("8 bytes"));
                    let entries = u64::from_be_bytes(trailer[8..].try_into().expect("8 bytes"));
                    if (chunks, entries) != (stats.chunks, stats.entries) {
                        return Err(bad(format!(
                            "trailer says {chunks} chunks / {entries} entries, stream had {} / {}",
                            stats.chunks, stats.entries
                        )));
                    }
                    self.write(batch, true)?;
                    return Ok((header, stats));
                }
                other => return Err(bad(format!("unknown frame tag {other:#x}"))),
            }
        }
    }

    /// Adds to `batch` the deletion of every key of `cf`. A range delete up
    /// to just past the current last key covers all of them, whatever bytes
    /// the keys hold.
    fn clear_cf(&self, batch: &mut WriteBatch, cf: &str) -> Result<()> {
        let mut iter = self.db().iterator_cf(self.cf(cf), IteratorMode::End);
        if let Some(item) = iter.next() {
            let (last, _) = item.map_err(|e| self.rocks_err(e))?;
            let mut end = last.into_vec();
            end.push(0);
            batch.delete_range_cf(self.cf(cf), &[][..], &end[..]);
        }
        Ok(())
    }

    fn decode_chunk(&self, mut p: &[u8], batch: &mut WriteBatch) -> Result<u64> {
        let mut n = 0;
        while !p.is_empty() {
            let cf = take(&mut p, 1)?[0];
            let klen = u32::from_be_bytes(take(&mut p, 4)?.try_into().expect("4 bytes"));
            let k = take(&mut p, klen as usize)?;
            let vlen = u32::from_be_bytes(take(&mut p, 4)?.try_into().expect("4 bytes"));
            let v = take(&mut p, vlen as usize)?;
            let cf = match cf {
                CF_TAG_DATA => CF_DATA,
                CF_TAG_SM_META => CF_SM_META,
                other => return Err(bad(format!("unknown column family tag {other}"))),
            };
            batch.put_cf(self.cf(cf), k, v);
            n += 1;
        }
        Ok(n)
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

fn read_header<R: Read>(input: &mut R) -> Result<Vec<u8>> {
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

fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if p.len() < n {
        return Err(bad("chunk payload ends inside an entry"));
    }
    let (head, tail) = p.split_at(n);
    *p = tail;
    Ok(head)
}

fn read_exact<R: Read>(input: &mut R, n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0; n];
    input.read_exact(&mut buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad("stream ends early (truncated snapshot)"),
        _ => bad(format!("reading snapshot stream: {e}")),
    })?;
    Ok(buf)
}

fn read_u8<R: Read>(input: &mut R) -> Result<u8> {
    Ok(read_exact(input, 1)?[0])
}

fn read_u32<R: Read>(input: &mut R) -> Result<u32> {
    Ok(u32::from_be_bytes(
        read_exact(input, 4)?.try_into().expect("4 bytes"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(dir: &tempfile::TempDir, name: &str) -> Engine {
        Engine::open(dir.path().join(name)).unwrap()
    }

    fn fill(e: &Engine, n: u32, applied: &[u8]) {
        let mut b = e.apply_batch();
        for i in 0..n {
            b.put(format!("key{i:05}").as_bytes(), &[i as u8; 100]);
        }
        b.put_meta("last_applied", applied);
        b.commit().unwrap();
    }

    #[test]
    fn export_import_roundtrip_replaces_everything() {
        let dir = tempfile::tempdir().unwrap();
        let src = engine(&dir, "src");
        fill(&src, 1000, b"42");
        let mut stream = Vec::new();
        let stats = src
            .export_snapshot(&mut stream, 4096, |meta| {
                // The header sees the metadata of the same point in time.
                assert_eq!(meta, &[("last_applied".to_string(), b"42".to_vec())]);
                b"hdr".to_vec()
            })
            .unwrap();
        assert!(stats.chunks > 10, "{stats:?}");
        assert_eq!(stats.entries, 1001);
        assert_eq!(read_snapshot_header(&stream[..]).unwrap(), b"hdr");

        let dst = engine(&dir, "dst");
        let mut b = dst.apply_batch();
        b.put(b"stale", b"x");
        b.put(&[0xFF; 40], b"high key");
        b.put_meta("last_applied", b"1");
        b.put_meta("other", b"gone");
        b.commit().unwrap();

        let (hdr, istats) = dst.import_snapshot(&stream[..]).unwrap();
        assert_eq!(hdr, b"hdr");
        assert_eq!(
            (istats.chunks, istats.entries),
            (stats.chunks, stats.entries)
        );
        assert_eq!(dst.get(b"stale").unwrap(), None);
        assert_eq!(dst.get(&[0xFF; 40]).unwrap(), None);
        assert_eq!(dst.sm_meta("other").unwrap(), None);
        assert_eq!(
            dst.sm_meta("last_applied").unwrap().as_deref(),
            Some(&b"42"[..])
        );
        assert_eq!(
            dst.scan(b"", usize::MAX).unwrap(),
            src.scan(b"", usize::MAX).unwrap()
        );
    }

    #[test]
    fn damaged_or_truncated_stream_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = engine(&dir, "src");
        fill(&src, 200, b"9");
        let mut stream = Vec::new();
        src.export_snapshot(&mut stream, 512, |_| b"h".to_vec())
            .unwrap();

        let dst = engine(&dir, "dst");
        fill(&dst, 3, b"1");
        let before = dst.scan(b"", usize::MAX).unwrap();

        // Truncated anywhere after the header, including just before the trailer.
        for cut in [30, stream.len() / 2, stream.len() - 1] {
            let err = dst.import_snapshot(&stream[..cut]).unwrap_err();
            assert!(matches!(err, StorageError::Snapshot(_)), "{err}");
        }
        // One flipped bit in the middle of a chunk.
        let mut flipped = stream.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x10;
        let err = dst.import_snapshot(&flipped[..]).unwrap_err();
        assert!(
            err.to_string().contains("checksum") || err.to_string().contains("tag"),
            "{err}"
        );

        assert_eq!(dst.scan(b"", usize::MAX).unwrap(), before);
        assert_eq!(
            dst.sm_meta("last_applied").unwrap().as_deref(),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn empty_state_machine_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let src = engine(&dir, "src");
        let mut stream = Vec::new();
        let stats = src
            .export_snapshot(&mut stream, 1024, |m| {
                assert!(m.is_empty());
                Vec::new()
            })
            .unwrap();
        assert_eq!(stats.entries, 0);
        let dst = engine(&dir, "dst");
        fill(&dst, 5, b"3");
        dst.import_snapshot(&stream[..]).unwrap();
        assert!(dst.scan(b"", 10).unwrap().is_empty());
        assert_eq!(dst.sm_meta("last_applied").unwrap(), None);
    }
}
