//! Installing a snapshot file as the whole state machine, in bounded
//! batches, so that a replica catches up on a data set larger than its
//! memory, and crash-safe by redo.
//!
//! 1. **Verify**: read the file once, checking every checksum, the entry
//!    framing and the trailer, writing nothing: a damaged or truncated file
//!    changes nothing.
//! 2. **Begin**: one synced batch clears `data` and `sm_meta` and records
//!    the file's path as `import_pending` in `raft_meta`.
//! 3. **Copy**: the entries, in write batches of about `batch_bytes`
//!    (unsynced: the marker makes them redoable).
//! 4. **Finish**: one synced batch removes the marker.
//!
//! A crash (or an error) between 2 and 4 leaves a partial state machine and
//! the marker; [`Engine::pending_import`] names the file, and the consensus
//! layer redoes the import (it clears first, so redoing is idempotent)
//! before the replica applies or serves anything.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use rocksdb::{IteratorMode, WriteBatch};

use crate::engine::{Engine, CF_DATA, CF_RAFT_META, CF_SM_META};
use crate::error::{Result, StorageError};
use crate::layout;
use crate::snapshot::{
    bad, read_exact, read_header, read_u32, read_u8, take, SnapshotStats, CF_TAG_DATA,
    CF_TAG_SM_META, MAX_FRAME, TAG_CHUNK, TAG_END,
};

/// `raft_meta` key naming the snapshot file of an unfinished import.
const IMPORT_PENDING: &[u8] = b"import_pending";

/// Reads a snapshot stream, checking everything, and hands each entry
/// (column family, key, value) to `entry`, and the running totals to
/// `chunk_done` after each chunk. Returns the header.
fn scan<R: Read>(
    input: &mut R,
    mut entry: impl FnMut(&'static str, &[u8], &[u8]) -> Result<()>,
    mut chunk_done: impl FnMut(&SnapshotStats) -> Result<()>,
) -> Result<(Vec<u8>, SnapshotStats)> {
    let header = read_header(input)?;
    let mut stats = SnapshotStats::default();
    loop {
        match read_u8(input)? {
            TAG_CHUNK => {
                let len = read_u32(input)?;
                let crc = read_u32(input)?;
                if len > MAX_FRAME {
                    return Err(bad(format!("chunk of {len} bytes exceeds the limit")));
                }
                let payload = read_exact(input, len as usize)?;
                if crc32fast::hash(&payload) != crc {
                    return Err(bad(format!("checksum mismatch in chunk {}", stats.chunks)));
                }
                let mut p = &payload[..];
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
                    entry(cf, k, v)?;
                    stats.entries += 1;
                }
                stats.chunks += 1;
                stats.bytes += u64::from(len);
                chunk_done(&stats)?;
            }
            TAG_END => {
                let trailer = read_exact(input, 16)?;
                let crc = read_u32(input)?;
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
                return Ok((header, stats));
            }
            other => return Err(bad(format!("unknown frame tag {other:#x}"))),
        }
    }
}

fn open_file(path: &Path) -> Result<BufReader<std::fs::File>> {
    std::fs::File::open(path)
        .map(|f| BufReader::with_capacity(1 << 20, f))
        .map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Checks a whole snapshot file (every checksum, the framing, the trailer)
/// without writing anything; its header and size.
pub fn verify_snapshot_file(path: &Path) -> Result<(Vec<u8>, SnapshotStats)> {
    scan(&mut open_file(path)?, |_, _, _| Ok(()), |_| Ok(()))
}

impl Engine {
    /// Replaces the whole state machine (data and metadata) with the
    /// snapshot file at `path`, in write batches of about `batch_bytes`,
    /// and returns the snapshot's header. `progress` sees the totals after
    /// every batch written; an error from it stops the import (as a crash
    /// would: the import stays pending). On a damaged file nothing changes;
    /// once this returns `Ok` the new state is durable.
    pub fn import_snapshot_file(
        &self,
        path: &Path,
        batch_bytes: usize,
        mut progress: impl FnMut(&SnapshotStats) -> Result<()>,
    ) -> Result<(Vec<u8>, SnapshotStats)> {
        verify_snapshot_file(path)?;
        let path_bytes = path
            .to_str()
            .ok_or_else(|| bad(format!("snapshot path {} is not UTF-8", path.display())))?
            .as_bytes();

        let mut begin = WriteBatch::default();
        for cf in [CF_DATA, CF_SM_META] {
            self.clear_cf(&mut begin, cf)?;
        }
        begin.put_cf(self.cf(CF_RAFT_META), IMPORT_PENDING, path_bytes);
        self.write(begin, true)?;

        let batch_bytes = batch_bytes.max(1);
        let mut batch = WriteBatch::default();
        let mut written = SnapshotStats::default();
        let cell = std::cell::RefCell::new(&mut batch);
        let (header, mut stats) = scan(
            &mut open_file(path)?,
            |cf, k, v| {
                // The stream holds user keys; stored ones carry their
                // partition (`layout.rs`).
                if cf == CF_DATA {
                    cell.borrow_mut().put_cf(self.cf(cf), layout::encode(k), v);
                } else {
                    cell.borrow_mut().put_cf(self.cf(cf), k, v);
                }
                Ok(())
            },
            |so_far| {
                let mut batch = cell.borrow_mut();
                if batch.size_in_bytes() < batch_bytes {
                    return Ok(());
                }
                written.max_batch_bytes = written.max_batch_bytes.max(batch.size_in_bytes() as u64);
                self.write(std::mem::take(&mut **batch), false)?;
                written.batches += 1;
                let report = SnapshotStats {
                    batches: written.batches,
                    max_batch_bytes: written.max_batch_bytes,
                    ..*so_far
                };
                progress(&report)
            },
        )?;
        let mut last = std::mem::take(&mut batch);
        written.max_batch_bytes = written.max_batch_bytes.max(last.size_in_bytes() as u64);
        last.delete_cf(self.cf(CF_RAFT_META), IMPORT_PENDING);
        self.write(last, true)?;
        stats.batches = written.batches + 1;
        stats.max_batch_bytes = written.max_batch_bytes;
        Ok((header, stats))
    }

    /// The snapshot file of an import that was interrupted (a crash or an
    /// error after it began): the state machine is partial until the import
    /// is redone from that file.
    pub fn pending_import(&self) -> Result<Option<PathBuf>> {
        match self.get_cf(CF_RAFT_META, IMPORT_PENDING)? {
            None => Ok(None),
            Some(raw) => String::from_utf8(raw)
                .map(|p| Some(PathBuf::from(p)))
                .map_err(|_| StorageError::Corrupt {
                    path: self.path().to_path_buf(),
                    detail: "the pending snapshot import names a non-UTF-8 path".into(),
                }),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read_snapshot_header;

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

    fn export(e: &Engine, dir: &tempfile::TempDir, chunk: usize, hdr: &[u8]) -> PathBuf {
        let path = dir.path().join(format!("snap-{}", hdr.len()));
        let mut out = std::fs::File::create(&path).unwrap();
        e.export_snapshot(&mut out, chunk, |_| hdr.to_vec())
            .unwrap();
        path
    }

    /// Golden bytes of the snapshot stream (the file a replica keeps and
    /// sends to a peer): a changed layout fails here before a mixed-version
    /// cluster meets it. A deliberate change raises `STREAM_FORMAT`.
    #[test]
    fn the_snapshot_stream_format_is_pinned() {
        const GOLDEN: &str = "52564c534e4150000000000100000003686472dc8e9c30430000002e61b4b902010000000c6c6173745f6170706c696564000000014c000000000161000000013100000000026262000000023232450000000000000001000000000000000362c90eac";
        let dir = tempfile::tempdir().unwrap();
        let src = engine(&dir, "src");
        let mut b = src.apply_batch();
        b.put(b"a", b"1");
        b.put(b"bb", b"22");
        b.put_meta("last_applied", b"L");
        b.commit().unwrap();
        let mut stream = Vec::new();
        src.export_snapshot(&mut stream, 1 << 20, |_| b"hdr".to_vec())
            .unwrap();
        let hex: String = stream.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN, "the snapshot stream's layout changed");
        // And the pinned bytes import into a fresh replica.
        let path = dir.path().join("golden.snap");
        let raw: Vec<u8> = (0..GOLDEN.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&GOLDEN[i..i + 2], 16).unwrap())
            .collect();
        std::fs::write(&path, raw).unwrap();
        let dst = engine(&dir, "dst");
        let (header, _) = dst
            .import_snapshot_file(&path, 1 << 20, |_| Ok(()))
            .unwrap();
        assert_eq!(header, b"hdr");
        assert_eq!(dst.get(b"bb").unwrap().as_deref(), Some(&b"22"[..]));
        assert_eq!(
            dst.sm_meta("last_applied").unwrap().as_deref(),
            Some(&b"L"[..])
        );
    }

    #[test]
    fn export_import_roundtrip_replaces_everything_in_bounded_batches() {
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
        let file = dir.path().join("snap");
        std::fs::write(&file, &stream).unwrap();

        let dst = engine(&dir, "dst");
        let mut b = dst.apply_batch();
        b.put(b"stale", b"x");
        b.put(&[0xFF; 40], b"high key");
        b.put_meta("last_applied", b"1");
        b.put_meta("other", b"gone");
        b.commit().unwrap();

        let mut reports = 0;
        let (hdr, istats) = dst
            .import_snapshot_file(&file, 16 << 10, |_| {
                reports += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(hdr, b"hdr");
        assert_eq!(
            (istats.chunks, istats.entries),
            (stats.chunks, stats.entries)
        );
        // ~110 KB of entries in batches of ~16 KiB (plus at most one chunk).
        assert!(istats.batches >= 5, "{istats:?}");
        assert_eq!(reports, istats.batches - 1);
        assert!(
            istats.max_batch_bytes < (16 << 10) + 4096 + 1024,
            "{istats:?}"
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
        assert_eq!(dst.pending_import().unwrap(), None);
    }

    #[test]
    fn damaged_or_truncated_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = engine(&dir, "src");
        fill(&src, 200, b"9");
        let mut stream = Vec::new();
        src.export_snapshot(&mut stream, 512, |_| b"h".to_vec())
            .unwrap();

        let dst = engine(&dir, "dst");
        fill(&dst, 3, b"1");
        let before = dst.scan(b"", usize::MAX).unwrap();
        let file = dir.path().join("bad");

        // Truncated anywhere after the header, including just before the trailer.
        for cut in [30, stream.len() / 2, stream.len() - 1] {
            std::fs::write(&file, &stream[..cut]).unwrap();
            let err = dst
                .import_snapshot_file(&file, 1024, |_| Ok(()))
                .unwrap_err();
            assert!(matches!(err, StorageError::Snapshot(_)), "{err}");
        }
        // One flipped bit in the middle of a chunk.
        let mut flipped = stream.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x10;
        std::fs::write(&file, &flipped).unwrap();
        let err = dst
            .import_snapshot_file(&file, 1024, |_| Ok(()))
            .unwrap_err();
        assert!(
            err.to_string().contains("checksum") || err.to_string().contains("tag"),
            "{err}"
        );

        assert_eq!(dst.scan(b"", usize::MAX).unwrap(), before);
        assert_eq!(
            dst.sm_meta("last_applied").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(dst.pending_import().unwrap(), None);
    }

    #[test]
    fn an_interrupted_import_stays_pending_across_a_restart_and_redoes() {
        let dir = tempfile::tempdir().unwrap();
        let src = engine(&dir, "src");
        fill(&src, 1000, b"77");
        let file = export(&src, &dir, 2048, b"hdr");

        let dst = engine(&dir, "dst");
        fill(&dst, 10, b"5");
        let mut batches = 0;
        let err = dst
            .import_snapshot_file(&file, 8 << 10, |_| {
                batches += 1;
                if batches == 3 {
                    Err(bad("crash (test)"))
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert!(err.to_string().contains("crash (test)"), "{err}");
        // Partial: some of the new keys, none of the old state, the marker.
        assert_eq!(dst.pending_import().unwrap().as_deref(), Some(&*file));
        let partial = dst.scan(b"", usize::MAX).unwrap().len();
        assert!(partial > 0 && partial < 1000, "{partial}");
        drop(dst);

        let dst = Engine::open_existing(dir.path().join("dst")).unwrap();
        let pending = dst.pending_import().unwrap().expect("still pending");
        dst.import_snapshot_file(&pending, 8 << 10, |_| Ok(()))
            .unwrap();
        assert_eq!(dst.pending_import().unwrap(), None);
        assert_eq!(
            dst.scan(b"", usize::MAX).unwrap(),
            src.scan(b"", usize::MAX).unwrap()
        );
        assert_eq!(
            dst.sm_meta("last_applied").unwrap().as_deref(),
            Some(&b"77"[..])
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
        let file = dir.path().join("empty");
        std::fs::write(&file, &stream).unwrap();
        let dst = engine(&dir, "dst");
        fill(&dst, 5, b"3");
        dst.import_snapshot_file(&file, 1024, |_| Ok(())).unwrap();
        assert!(dst.scan(b"", 10).unwrap().is_empty());
        assert_eq!(dst.sm_meta("last_applied").unwrap(), None);
    }

    /// A pinned view exports the state as of the moment it was pinned, not
    /// what was written after: the stream is the same bytes an export at
    /// that moment would have written.
    #[test]
    fn a_pinned_view_exports_the_state_it_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let src = engine(&dir, "src");
        fill(&src, 300, b"7");
        let mut then = Vec::new();
        src.export_snapshot(&mut then, 1024, |_| b"h".to_vec())
            .unwrap();
        let view = src.pin_view().unwrap();
        assert_eq!(
            view.sm_meta(),
            &[("last_applied".to_string(), b"7".to_vec())]
        );
        assert!(view.estimated_bytes() > 0, "{view:?}");
        // Written after the pin: overwrites, deletes and new keys.
        let mut b = src.apply_batch();
        b.put(b"key00001", b"changed");
        b.delete(b"key00002");
        b.put(b"zz-new", b"new");
        b.put_meta("last_applied", b"8");
        b.commit().unwrap();
        let (later, stats) = view.export(Vec::new(), 1024, b"h".to_vec()).unwrap();
        assert_eq!(stats.entries, 301);
        assert!(
            later == then,
            "the view's stream differs from the export at its pin"
        );
        // Dropped unused: nothing to wait for.
        drop(src.pin_view().unwrap());
    }
}
