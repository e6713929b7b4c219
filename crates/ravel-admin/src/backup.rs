//! Backups: the file format `ravel backup` writes and `ravel restore`
//! reads, and the admin's side of both (`GET /v1/backup` streams a file,
//! `POST /v1/restore` writes one entries frame of it).
//!
//! ```text
//! file    = MAGIC frame*                MAGIC = "RAVELBK1"
//! frame   = kind:u8 len:u32 payload crc:u32     big-endian; crc32 of kind, len, payload
//! kind 1  header   JSON: format, creation time, the admin's registry and ring
//! kind 2  entries  cluster_len:u16 cluster count:u32 (key_len:u32 key value_len:u32 value)*
//! kind 3  trailer  JSON: entries in the file, crc32 of every byte before the trailer
//! kind 4  error    UTF-8: the admin failed while making the backup
//! ```
//!
//! A file is complete only with its trailer, as the last frame: a
//! truncated or reordered file, a flipped bit, an error frame are each
//! refused with what is wrong and where. Each cluster's entries are one
//! consistent cut (the leader's read index, then one storage snapshot):
//! every write acknowledged before the backup started is in it. The
//! clusters are read one after the other, and the backup fails if the ring
//! changed meanwhile, so every key is read from the one cluster that owns
//! it.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::StreamExt;
use ravel_proto::ext::BackupRequest;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::kv::TOMBSTONE;
use crate::router::{CallError, Router};
use crate::state::AdminState;

pub const MAGIC: &[u8; 8] = b"RAVELBK1";
/// The format version in the header.
pub const FORMAT: u32 = 1;
/// Largest frame: an entries frame holds one node page (about 1 MiB) or a
/// single entry of the largest value a node may hold (32 MiB).
pub const MAX_FRAME: u32 = 40 << 20;

const HEADER: u8 = 1;
const ENTRIES: u8 = 2;
const TRAILER: u8 = 3;
const ERROR: u8 = 4;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub format: u32,
    pub created_unix_ms: u64,
    /// Clusters whose data follows, in order.
    pub clusters: Vec<String>,
    /// The admin's registry (clusters, members, ring) when the backup
    /// began: a record of the system it came from. A restore routes keys
    /// by the ring of the system it restores into.
    pub registry: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Trailer {
    pub entries: u64,
    /// crc32 of every byte of the file before the trailer frame.
    pub crc32: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Header(Header),
    Entries {
        cluster: String,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Trailer(Trailer),
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("reading the backup: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a Ravel backup (it does not start with {MAGIC:?})")]
    NotABackup,
    #[error("the backup is damaged at byte {offset}: {reason}")]
    Damaged { offset: u64, reason: String },
    #[error("the backup is incomplete: it ends at byte {0} without its trailer")]
    Truncated(u64),
    #[error("the backup failed while it was made: {0}")]
    FailedWhileMade(String),
}

/// Builds the frames of a file, keeping the running checksum and count.
pub struct Writer {
    crc: crc32fast::Hasher,
    entries: u64,
}

impl Writer {
    /// A writer and the file's first bytes.
    pub fn new() -> (Writer, Vec<u8>) {
        let mut crc = crc32fast::Hasher::new();
        crc.update(MAGIC);
        (Writer { crc, entries: 0 }, MAGIC.to_vec())
    }

    pub fn header(&mut self, h: &Header) -> Vec<u8> {
        let f = frame(HEADER, &serde_json::to_vec(h).expect("a header serializes"));
        self.crc.update(&f);
        f
    }

    pub fn entries(&mut self, cluster: &str, entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let f = entries_frame(cluster, entries);
        self.crc.update(&f);
        self.entries += entries.len() as u64;
        f
    }

    /// The last frame.
    pub fn trailer(self) -> Vec<u8> {
        let t = Trailer {
            entries: self.entries,
            crc32: self.crc.finalize(),
        };
        frame(
            TRAILER,
            &serde_json::to_vec(&t).expect("a trailer serializes"),
        )
    }

    /// Ends a file that cannot be completed: readers refuse it with `why`.
    pub fn error(why: &str) -> Vec<u8> {
        frame(ERROR, why.as_bytes())
    }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 9);
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    let crc = crc32fast::hash(&f);
    f.extend_from_slice(&crc.to_be_bytes());
    f
}

/// One entries frame (also the body of `POST /v1/restore`).
pub fn entries_frame(cluster: &str, entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let size: usize = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut p = Vec::with_capacity(size + cluster.len() + 6);
    p.extend_from_slice(&(cluster.len() as u16).to_be_bytes());
    p.extend_from_slice(cluster.as_bytes());
    p.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (k, v) in entries {
        p.extend_from_slice(&(k.len() as u32).to_be_bytes());
        p.extend_from_slice(k);
        p.extend_from_slice(&(v.len() as u32).to_be_bytes());
        p.extend_from_slice(v);
    }
    frame(ENTRIES, &p)
}

/// Reads a payload field by field, refusing to run past its end.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("an entries frame ends inside a field".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

fn parse_entries(payload: &[u8]) -> Result<Frame, String> {
    let mut f = Fields(payload);
    let n = u16::from_be_bytes(f.take(2)?.try_into().expect("2 bytes")) as usize;
    let cluster = String::from_utf8(f.take(n)?.to_vec())
        .map_err(|_| "a cluster id is not UTF-8".to_string())?;
    let count = f.u32()? as usize;
    // Every entry takes at least 8 bytes: a count beyond that is damage,
    // not a reason to allocate.
    if count > f.0.len() / 8 {
        return Err(format!("an entries frame claims {count} entries"));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let k = f.u32()? as usize;
        let key = f.take(k)?.to_vec();
        let v = f.u32()? as usize;
        entries.push((key, f.take(v)?.to_vec()));
    }
    if !f.0.is_empty() {
        return Err("an entries frame has bytes after its last entry".into());
    }
    Ok(Frame::Entries { cluster, entries })
}

/// Decodes one whole frame (`POST /v1/restore`'s body): checks its length
/// and checksum. Only entries frames are accepted.
pub fn parse_entries_frame(bytes: &[u8]) -> Result<Frame, String> {
    if bytes.len() < 9 {
        return Err("a frame has at least 9 bytes".into());
    }
    let len = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes")) as usize;
    if bytes[0] != ENTRIES || bytes.len() != len + 9 {
        return Err("not one entries frame of a Ravel backup".into());
    }
    let (body, crc) = bytes.split_at(len + 5);
    if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
        return Err("the frame's checksum does not match".into());
    }
    parse_entries(&body[5..])
}

/// Reads and checks a backup frame by frame.
pub struct Reader<R: Read> {
    input: R,
    crc: crc32fast::Hasher,
    entries: u64,
    offset: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> Result<Reader<R>, BackupError> {
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|_| BackupError::NotABackup)?;
        if &magic != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(MAGIC);
        Ok(Reader {
            input,
            crc,
            entries: 0,
            offset: 8,
            done: false,
        })
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame with its raw bytes; `None` after a trailer that
    /// checks out (and nothing after it).
    pub fn next_frame(&mut self) -> Result<Option<(Frame, Vec<u8>)>, BackupError> {
        if self.done {
            return Ok(None);
        }
        let at = self.offset;
        let damaged = |reason: String| BackupError::Damaged { offset: at, reason };
        let mut head = [0u8; 5];
        if !read_full(&mut self.input, &mut head)? {
            return Err(BackupError::Truncated(at));
        }
        let len = u32::from_be_bytes(head[1..5].try_into().expect("4 bytes"));
        if len > MAX_FRAME {
            return Err(damaged(format!("a frame claims {len} bytes")));
        }
        let mut raw = head.to_vec();
        raw.resize(5 + len as usize + 4, 0);
        if !read_full(&mut self.input, &mut raw[5..])? {
            return Err(BackupError::Truncated(at));
        }
        self.offset += raw.len() as u64;
        let (body, crc) = raw.split_at(5 + len as usize);
        if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
            return Err(damaged("a frame's checksum does not match".into()));
        }
        let payload = &body[5..];
        let frame = match head[0] {
            HEADER => Frame::Header(
                serde_json::from_slice(payload).map_err(|e| damaged(format!("header: {e}")))?,
            ),
            ENTRIES => parse_entries(payload).map_err(damaged)?,
            TRAILER => {
                let t: Trailer = serde_json::from_slice(payload)
                    .map_err(|e| damaged(format!("trailer: {e}")))?;
                let crc = std::mem::take(&mut self.crc).finalize();
                if t.crc32 != crc || t.entries != self.entries {
                    return Err(damaged(format!(
                        "the trailer says {} entries (crc32 {:08x}); the file holds {} (crc32 {crc:08x})",
                        t.entries, t.crc32, self.entries
                    )));
                }
                let mut rest = [0u8; 1];
                if read_full(&mut self.input, &mut rest)? {
                    return Err(damaged("bytes after the trailer".into()));
                }
                self.done = true;
                Frame::Trailer(t)
            }
            ERROR => {
                return Err(BackupError::FailedWhileMade(
                    String::from_utf8_lossy(payload).into_owned(),
                ))
            }
            k => return Err(damaged(format!("unknown frame kind {k}"))),
        };
        self.crc.update(&raw);
        if let Frame::Entries { entries, .. } = &frame {
            self.entries += entries.len() as u64;
        }
        Ok(Some((frame, raw)))
    }
}

/// Fills `buf`; false on end of input before the first byte. Ending
/// inside `buf` is an error.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> Result<bool, BackupError> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(BackupError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file ends inside a frame",
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Longest wait for one page of a cluster's backup stream.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a backup cannot start.
pub(crate) fn refuse_backup(state: &AdminState) -> Option<String> {
    let reg = state.registry.snapshot();
    if reg.ring.relocation.is_some() {
        return Some("a relocation is in progress: back up once it is over (ravel status)".into());
    }
    if reg.ring.members.is_empty() {
        return Some("no cluster serves keys yet".into());
    }
    None
}

/// `GET /v1/backup`'s body: the whole file, cluster after cluster. A
/// failure midway ends the body with an error frame (and no trailer).
pub(crate) fn backup_body(state: Arc<AdminState>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let (mut writer, magic) = Writer::new();
        let _ = tx.send(Ok(magic.into())).await;
        match write_backup(&state, &mut writer, &tx).await {
            Ok(()) => {
                let _ = tx.send(Ok(writer.trailer().into())).await;
                state.metrics.backup("ok");
            }
            Err(why) => {
                tracing::warn!(error = %why, "backup failed");
                let _ = tx.send(Ok(Writer::error(&why).into())).await;
                state.metrics.backup("failed");
            }
        }
    });
    Body::from_stream(tokio_stream_from(rx))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn write_backup(
    state: &AdminState,
    writer: &mut Writer,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), String> {
    let reg = state.registry.snapshot();
    let generation = reg.ring.generation;
    let clusters = reg.ring.members.clone();
    let header = Header {
        format: FORMAT,
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        clusters: clusters.clone(),
        registry: serde_json::to_value(&*reg).map_err(|e| e.to_string())?,
    };
    let send = |bytes: Vec<u8>| async move {
        tx.send(Ok(bytes.into()))
            .await
            .map_err(|_| "the client went away".to_string())
    };
    send(writer.header(&header)).await?;
    for cluster in &clusters {
        let deadline = Instant::now() + state.limits.request_timeout;
        let mut stream = state
            .router
            .call(cluster, deadline, |ch, _| async move {
                Router::ext(ch)
                    .backup(BackupRequest {})
                    .await
                    .map(|r| r.into_inner())
            })
            .await
            .map_err(|e| match e {
                CallError::Unavailable(m) => format!("cluster {cluster}: {m}"),
                CallError::Status(s) => format!("cluster {cluster}: {}", s.message()),
            })?;
        loop {
            let page = match tokio::time::timeout(PAGE_TIMEOUT, stream.next()).await {
                Err(_) => return Err(format!("cluster {cluster}: no page for {PAGE_TIMEOUT:?}")),
                Ok(None) => break,
                Ok(Some(Err(s))) => return Err(format!("cluster {cluster}: {}", s.message())),
                Ok(Some(Ok(p))) => p,
            };
            // Tombstones mark deleted keys while keys move; not data.
            let entries: Vec<(Vec<u8>, Vec<u8>)> = (page.entries.into_iter())
                .filter(|kv| kv.value != TOMBSTONE)
                .map(|kv| (kv.key, kv.value))
                .collect();
            if !entries.is_empty() {
                send(writer.entries(cluster, &entries)).await?;
            }
        }
    }
    if state.registry.snapshot().ring.generation != generation {
        return Err(
            "the ring changed during the backup (a cluster came or went): run it again".into(),
        );
    }
    Ok(())
}

/// `POST /v1/restore`: writes every entry of one entries frame through the
/// usual write path (routed by this system's ring, exactly once per
/// attempt), 32 at a time. Returns how many were written.
pub(crate) async fn restore_frame(state: &AdminState, body: &[u8]) -> Result<u64, RestoreError> {
    let Frame::Entries { entries, .. } = parse_entries_frame(body).map_err(RestoreError::Bad)?
    else {
        return Err(RestoreError::Bad("not an entries frame".into()));
    };
    let n = entries.len() as u64;
    let mut writes = futures::stream::iter(entries)
        .map(|(k, v)| async move { state.put(&k, &v).await })
        .buffer_unordered(32);
    while let Some(r) = writes.next().await {
        r.map_err(RestoreError::Write)?;
    }
    state.metrics.restored(n);
    Ok(n)
}

#[derive(Debug)]
pub(crate) enum RestoreError {
    Bad(String),
    Write(crate::kv::KvError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let (mut w, mut file) = Writer::new();
        file.extend(w.header(&Header {
            format: FORMAT,
            created_unix_ms: 1,
            clusters: vec!["c1".into(), "c2".into()],
            registry: serde_json::json!({"ring": {}}),
        }));
        file.extend(w.entries(
            "c1",
            &[(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), vec![])],
        ));
        file.extend(w.entries("c2", &[(b"c".to_vec(), b"3".to_vec())]));
        file.extend(w.trailer());
        file
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Frame>, BackupError> {
        let mut r = Reader::new(bytes)?;
        let mut out = Vec::new();
        while let Some((f, _)) = r.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn a_file_reads_back_frame_by_frame() {
        let frames = read_all(&sample()).unwrap();
        assert_eq!(frames.len(), 4);
        assert_eq!(
            frames[1],
            Frame::Entries {
                cluster: "c1".into(),
                entries: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), vec![])]
            }
        );
        assert_eq!(
            frames[3],
            Frame::Trailer(Trailer {
                entries: 3,
                crc32: match &frames[3] {
                    Frame::Trailer(t) => t.crc32,
                    _ => unreachable!(),
                }
            })
        );
    }

    #[test]
    fn every_damage_is_refused() {
        let file = sample();
        // Any flipped bit past the magic.
        for i in (8..file.len()).step_by(7) {
            let mut bad = file.clone();
            bad[i] ^= 0x10;
            assert!(
                read_all(&bad).is_err(),
                "a flipped bit at {i} went unnoticed"
            );
        }
        // Any truncation.
        for cut in 0..file.len() {
            assert!(read_all(&file[..cut]).is_err(), "truncated at {cut}");
        }
        // A frame dropped, with the trailer intact.
        let (mut w, mut dropped) = Writer::new();
        dropped.extend(w.entries("c1", &[(b"a".to_vec(), b"1".to_vec())]));
        let _ = w.entries("c2", &[(b"c".to_vec(), b"3".to_vec())]);
        dropped.extend(w.trailer());
        let e = read_all(&dropped).unwrap_err().to_string();
        assert!(e.contains("trailer says 2 entries"), "{e}");
        // Bytes after the trailer, and an error frame.
        let mut extra = file.clone();
        extra.push(0);
        assert!(read_all(&extra).is_err());
        let (_, mut failed) = Writer::new();
        failed.extend(Writer::error("cluster c2: no leader"));
        let e = read_all(&failed).unwrap_err().to_string();
        assert!(
            e.contains("failed while it was made: cluster c2: no leader"),
            "{e}"
        );
        assert!(matches!(
            read_all(b"PK\x03\x04zip"),
            Err(BackupError::NotABackup)
        ));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The format's bytes, pinned: a change makes existing backups
    /// unreadable, so it needs a new MAGIC or FORMAT and a reader for the
    /// old one.
    #[test]
    fn golden_bytes() {
        let (mut w, mut file) = Writer::new();
        file.extend(w.header(&Header {
            format: FORMAT,
            created_unix_ms: 1_700_000_000_000,
            clusters: vec!["cluster-1".into()],
            registry: serde_json::json!({"v": 1}),
        }));
        file.extend(w.entries("cluster-1", &[(b"k".to_vec(), b"\"v\"".to_vec())]));
        file.extend(w.trailer());
        let want = concat!(
            "524156454c424b3101000000587b22666f726d6174223a312c22637265617465",
            "645f756e69785f6d73223a313730303030303030303030302c22636c75737465",
            "7273223a5b22636c75737465722d31225d2c227265676973747279223a7b2276",
            "223a317d7d07781d5d020000001b0009636c75737465722d3100000001000000",
            "016b00000003227622757a9b0903000000207b22656e7472696573223a312c22",
            "6372633332223a323031313138353635367d76e2e13b",
        );
        assert_eq!(hex(&file), want, "the backup format changed");
        assert_eq!(read_all(&file).unwrap().len(), 3);
    }

    #[test]
    fn a_restore_body_is_one_checked_entries_frame() {
        let f = entries_frame("c9", &[(b"k".to_vec(), b"v".to_vec())]);
        assert!(matches!(parse_entries_frame(&f), Ok(Frame::Entries { .. })));
        let mut bad = f.clone();
        bad[12] ^= 1;
        assert!(parse_entries_frame(&bad).is_err());
        assert!(parse_entries_frame(&f[..f.len() - 1]).is_err());
        // A count that the bytes cannot hold is refused before allocating.
        let mut p = vec![0u8, 0];
        p.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_entries_frame(&frame(ENTRIES, &p)).is_err());
    }
}
