//! The Raft log in files of its own: append-only segments, each dropped
//! whole once every entry in it is purged.
//!
//! Kept in RocksDB, every log entry was written twice (the WAL, then a
//! memtable flushed to an SST file) and deleted by tombstones that
//! compaction had to clear: CPU and disk spent on data that lives for
//! seconds. Here an entry is written once, synced, read back with one
//! `pread` when a lagging follower needs it, and its file is unlinked
//! when the log is purged past it.
//!
//! ```text
//! <dir>/<first index, 20 digits>.log:
//!   header  = "RAVELLOG" | version u32 LE | flags u32 LE
//!   record* = payload length u32 LE | crc32(index LE | payload) u32 LE
//!             | index u64 LE | payload
//! ```
//!
//! A segment is preallocated to its full size when it is created
//! (`fallocate`, where the file system has it): the space past the last
//! record reads as zeros, and a record header of zeros ends the records.
//! An append then overwrites allocated space, so its `fdatasync` has no
//! file size to commit (on this machine kind's ext4, 0.13 against 0.19 ms
//! per sync; `docs/benchmarks.md`).
//!
//! Durability, the rule of the crate: every mutation is synced before it
//! returns.
//!
//! - An append writes its records in one `pwrite` at the end of the last
//!   segment and syncs the file (`fdatasync`); a new segment's directory
//!   entry is synced too. A crash during an append leaves a torn tail:
//!   opening stops at the first record of the last segment that is short,
//!   zeros or fails its checksum, and cuts the file there (then
//!   preallocates it again, so what follows reads as zeros). Such a
//!   record was never acknowledged (its sync had not returned).
//! - A truncation unlinks whole segments from the newest, syncs the
//!   directory, then cuts the segment holding the first removed entry and
//!   syncs it. A crash part way leaves a prefix of the old log longer than
//!   asked: a truncation that has not happened yet, never a hole.
//! - A purge is recorded by the caller (the lowest kept index, synced, in
//!   the same RocksDB batch as Raft's purge marker) before this module
//!   forgets the entries and unlinks the segments that hold only purged
//!   ones. A segment a crash brings back holds only entries below the
//!   recorded start: opening ignores them and unlinks it again.
//!
//! - The log's first entry is the recorded start, so a lost first segment
//!   is found at open like a lost middle one. The one exception is an
//!   append past the start into an empty log (openraft's storage suite
//!   does this; Raft itself resumes at the start): it begins a segment of
//!   its own whose header carries `STARTS_LOG`, which lets its first record
//!   open the log.
//! - The log's end is vouched for from outside its directory: once a new
//!   segment's first record is synced, the first index of that segment is
//!   recorded (by the engine, in RocksDB, synced), and lowered before a
//!   truncation unlinks it. At open, a log that ends before the recorded
//!   segment's first entry, when no purge has passed it, lost its newest
//!   segments (or all of them: a directory emptied or replaced) and is
//!   refused, where it would otherwise come back short, its acknowledged
//!   entries gone, and vote and replicate as if it never had them.
//!
//! A sync that fails poisons the log: the kernel may have dropped the
//! dirty pages it could not write, so what is on disk is unknown, and
//! every later write fails until the replica restarts and reads back what
//! the disk holds.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Result, StorageError};

const MAGIC: &[u8; 8] = b"RAVELLOG";
const VERSION: u32 = 1;
const HEADER: u64 = 16;
/// A header flag: this segment's first record may start the log past its
/// recorded start (written by an append past the start into an empty log).
const STARTS_LOG: u32 = 1;
/// A record's fixed part: length, checksum, index.
const RECORD_HEADER: usize = 16;
/// A new segment starts once the last one holds this many bytes. A purge
/// frees whole segments only, so this is about what a replica's disk holds
/// of purged entries (a Raft snapshot, and a purge, come every 10,000
/// entries or 64 MiB by default); a rotation costs one directory sync.
pub(crate) const SEGMENT_BYTES: u64 = 8 << 20;
/// A length field above this is damage, not an entry (openraft entries are
/// bounded far below it by the node's request limits).
const MAX_RECORD: u32 = 1 << 30;

/// Where one entry's record lies.
#[derive(Clone)]
struct Loc {
    file: Arc<File>,
    /// The record's first byte (its length field).
    offset: u64,
    /// The payload's length.
    len: u32,
}

impl Loc {
    fn end(&self) -> u64 {
        self.offset + RECORD_HEADER as u64 + u64::from(self.len)
    }
}

struct Segment {
    /// The index the file was created for: its name, and the index of its
    /// first record.
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of the header and the complete records.
    len: u64,
}

struct State {
    /// Oldest first; appends go to the last.
    segments: Vec<Segment>,
    /// The index of `locs[0]` (meaningless while the log is empty).
    base: u64,
    /// The lowest index not purged (0: never purged): where the log's
    /// start was last recorded.
    floor: u64,
    locs: VecDeque<Loc>,
    /// Set when a sync failed: see the module's documentation.
    poisoned: Option<String>,
    /// Counts truncations like a sequence lock: odd while one runs. A read
    /// that overlapped one (a deposed leader's replication reading entries
    /// its successor overwrites) reads again, instead of returning bytes
    /// from both sides of it or taking a cut file for damage.
    truncations: u64,
}

impl State {
    fn last_index(&self) -> Option<u64> {
        (self.locs.len() as u64)
            .checked_sub(1)
            .map(|n| self.base + n)
    }
}

/// Records, synced, where the newest segment starts (`None`: no segment
/// to vouch for), somewhere that outlives the log's directory: the engine
/// keeps it in RocksDB.
pub(crate) type RecordNewest = Box<dyn Fn(Option<u64>) -> Result<()> + Send + Sync>;

/// The Raft log of one replica in its directory of segments.
pub(crate) struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// Held by every mutation (append, truncate, purge) for its whole
    /// duration, I/O included, so mutations happen one at a time; `state`
    /// is held only briefly, so reads never wait for a sync.
    writer: Mutex<()>,
    state: Mutex<State>,
    /// Records, synced and outside this directory, the first index of the
    /// newest segment (see the module's documentation).
    record_newest: RecordNewest,
    /// Syncs run so far (tests check that every mutation syncs).
    #[cfg(test)]
    syncs: std::sync::atomic::AtomicU64,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends one record to `out`; `Err` names an entry too large to store.
fn encode_record(out: &mut Vec<u8>, index: u64, payload: &[u8]) -> Result<u32, String> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_RECORD)
        .ok_or_else(|| {
            format!(
                "log entry {index} has {} bytes, more than {MAX_RECORD}",
                payload.len()
            )
        })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(index, payload).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(len)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir_io(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

fn sync_dir(dir: &Path) -> Result<()> {
    sync_dir_io(dir).map_err(io_err(dir))
}

/// Allocates `[from, to)` of `file` and extends it to `to`, the new space
/// reading as zeros (see the module's documentation). Best effort: where
/// the file system cannot (no `fallocate`, or a full disk) the file stays
/// as it is, and appends grow it, as they would without this.
fn preallocate(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    if to <= from {
        return;
    }
    let (Ok(offset), Ok(len)) = (
        libc::off_t::try_from(from),
        libc::off_t::try_from(to - from),
    ) else {
        return;
    };
    // SAFETY: `fallocate` on a descriptor this `File` owns and keeps open
    // for the call; it touches no memory of ours.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "log segment not preallocated");
    }
}

/// What reading one segment at open found.
struct Scanned {
    /// (index, offset, payload length) of each complete record.
    records: Vec<(u64, u64, u32)>,
    /// Where the complete records end.
    valid_len: u64,
    /// The header's flags (0 when the header is short).
    flags: u32,
    /// Why reading stopped before the file's end, if it did.
    torn: Option<String>,
}

fn scan_segment(path: &Path, file: &File) -> Result<Scanned> {
    let size = file.metadata().map_err(io_err(path))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER as usize];
    if size < HEADER {
        return Ok(Scanned {
            records: Vec::new(),
            valid_len: 0,
            flags: 0,
            torn: Some(format!("{size} bytes, shorter than the header")),
        });
    }
    reader.read_exact(&mut header).map_err(io_err(path))?;
    if header.iter().all(|b| *b == 0) {
        // Created and preallocated, then a crash before its first write
        // was synced: it never held an acknowledged entry.
        return Ok(Scanned {
            records: Vec::new(),
            valid_len: 0,
            flags: 0,
            torn: Some("a header of zeros (never written)".into()),
        });
    }
    if &header[..8] != MAGIC {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: "not a Ravel log segment (bad magic)".into(),
        });
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("log segment version {version}; this build reads {VERSION}"),
        });
    }
    let flags = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    let mut records = Vec::new();
    let mut offset = HEADER;
    let mut payload = Vec::new();
    let torn = loop {
        if offset == size {
            break None;
        }
        let mut head = [0u8; RECORD_HEADER];
        let have = (size - offset).min(RECORD_HEADER as u64) as usize;
        reader.read_exact(&mut head[..have]).map_err(io_err(path))?;
        if head.iter().all(|b| *b == 0) {
            // The preallocated space past the last record.
            break None;
        }
        if have < RECORD_HEADER {
            break Some(format!("a partial record header at byte {offset}"));
        }
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let body = offset + RECORD_HEADER as u64;
        if len > MAX_RECORD || size - body < u64::from(len) {
            break Some(format!(
                "a record at byte {offset} claims {len} bytes, past the end"
            ));
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload).map_err(io_err(path))?;
        if checksum(index, &payload) != crc {
            break Some(format!("a record at byte {offset} fails its checksum"));
        }
        records.push((index, offset, len));
        offset = body + u64::from(len);
    };
    Ok(Scanned {
        records,
        valid_len: offset,
        flags,
        torn,
    })
}

impl SegmentLog {
    /// Opens (creating it if need be) the log in `dir`. `start` is the
    /// lowest index kept, as the last purge recorded it (`None`: never
    /// purged); entries below it are ignored and the segments holding only
    /// such entries unlinked. `newest` is the first index of the newest
    /// segment, as `record_newest` last recorded it: a log that ends before
    /// it (past `start`) lost segments, an error.
    pub(crate) fn open(
        dir: &Path,
        start: Option<u64>,
        newest: Option<u64>,
        record_newest: RecordNewest,
    ) -> Result<Self> {
        Self::open_with(dir, start, newest, record_newest, SEGMENT_BYTES)
    }

    pub(crate) fn open_with(
        dir: &Path,
        start: Option<u64>,
        newest: Option<u64>,
        record_newest: RecordNewest,
        segment_bytes: u64,
    ) -> Result<Self> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut named = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            let name = item.file_name();
            if let Some(first) = name.to_str().and_then(parse_segment_name) {
                named.push((first, item.path()));
            }
        }
        named.sort();
        let start = start.unwrap_or(0);
        let mut state = State {
            segments: Vec::new(),
            base: start,
            floor: start,
            locs: VecDeque::new(),
            poisoned: None,
            truncations: 0,
        };
        let mut doomed = Vec::new();
        let count = named.len();
        for (n, (first, path)) in named.into_iter().enumerate() {
            let last_file = n + 1 == count;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let scanned = scan_segment(&path, &file)?;
            if let Some(why) = &scanned.torn {
                if !last_file {
                    return Err(StorageError::Corrupt {
                        path: path.clone(),
                        detail: format!("log segment damaged before its end: {why}"),
                    });
                }
                // The tail of the last append, cut short by a crash: it was
                // never acknowledged.
                tracing::warn!(path = %path.display(), reason = %why, "cutting the torn tail of the Raft log");
            }
            if let Some((index, _, _)) = scanned.records.first() {
                if *index != first {
                    return Err(StorageError::Corrupt {
                        path: path.clone(),
                        detail: format!("first record holds entry {index}, the name says {first}"),
                    });
                }
            }
            let file = Arc::new(file);
            let mut kept = 0usize;
            for (index, offset, len) in scanned.records {
                if index < start {
                    continue;
                }
                // The first kept entry is the recorded start, unless an
                // append past the start began this segment (and the log);
                // after it, none may be missing.
                let expected = if !state.locs.is_empty() {
                    state.base + state.locs.len() as u64
                } else if index == first && scanned.flags & STARTS_LOG != 0 {
                    index
                } else if index != start {
                    return Err(StorageError::Corrupt {
                        path: path.clone(),
                        detail: format!(
                            "the log's first entry is {index}, its recorded start {start}: entries {start}..{index} missing (a lost segment file?)"
                        ),
                    });
                } else {
                    start
                };
                if index != expected {
                    return Err(StorageError::Corrupt {
                        path: path.clone(),
                        detail: format!(
                            "entry {index} at byte {offset} where entry {expected} was expected (entries missing)"
                        ),
                    });
                }
                if state.locs.is_empty() {
                    state.base = index;
                }
                state.locs.push_back(Loc {
                    file: file.clone(),
                    offset,
                    len,
                });
                kept += 1;
            }
            if kept == 0 {
                // Only purged entries (or none, or a torn header): gone,
                // once the log is known whole (below).
                doomed.push(path);
                continue;
            }
            if last_file {
                // Whatever lies past the last record (a torn append, or
                // the bytes of one a crash left after a header of zeros)
                // goes, and the segment is preallocated again, so the next
                // append's tail reads as zeros after it.
                let size = file.metadata().map_err(io_err(&path))?.len();
                if scanned.torn.is_some() || size > scanned.valid_len {
                    file.set_len(scanned.valid_len).map_err(io_err(&path))?;
                    preallocate(&file, scanned.valid_len, segment_bytes);
                    file.sync_data().map_err(io_err(&path))?;
                }
            }
            state.segments.push(Segment {
                first,
                path,
                file,
                len: scanned.valid_len,
            });
        }
        if let Some(newest) = newest.filter(|n| *n >= start) {
            if state.last_index().is_none_or(|last| last < newest) {
                let held = match state.last_index() {
                    Some(last) => format!("ends at entry {last}"),
                    None => "holds no entry".to_string(),
                };
                return Err(StorageError::Corrupt {
                    path: dir.to_path_buf(),
                    detail: format!(
                        "the Raft log {held}, but a segment starting at entry {newest} was written and not purged: its newest segments are missing (a lost, emptied or replaced log directory?)"
                    ),
                });
            }
        }
        for path in &doomed {
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        if !doomed.is_empty() {
            sync_dir(dir)?;
        }
        // What opened is what the next open checks against (a directory
        // from before the record existed, or a truncation cut short after
        // lowering it).
        let found = state.segments.last().map(|seg| seg.first);
        if found.is_some() && found != newest {
            record_newest(found)?;
        }
        Ok(SegmentLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            writer: Mutex::new(()),
            state: Mutex::new(state),
            record_newest,
            #[cfg(test)]
            syncs: Default::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent (every
        // change to it is one assignment after the I/O succeeded).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, ()>> {
        let guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &self.state().poisoned {
            return Err(StorageError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(format!(
                    "the Raft log failed a sync earlier ({why}); restart the replica"
                )),
            });
        }
        Ok(guard)
    }

    /// Runs a sync; a failure poisons the log.
    fn synced(&self, path: &Path, result: std::io::Result<()>) -> Result<()> {
        #[cfg(test)]
        self.syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        result.map_err(|source| {
            self.state().poisoned = Some(format!("{}: {source}", path.display()));
            StorageError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Appends entries with consecutive indexes, synced. An entry at or
    /// below the last index replaces it and everything after it (a
    /// truncation first); an entry further than one past the last is an
    /// error (entries would be missing), as is a batch with a gap, unless
    /// every entry held is below the purged start.
    pub(crate) fn append<I, V>(&self, entries: I) -> Result<()>
    where
        I: IntoIterator<Item = (u64, V)>,
        V: AsRef<[u8]>,
    {
        let _writer = self.lock_writer()?;
        let mut buf = Vec::new();
        let mut lens = Vec::new();
        let mut first = None;
        for (index, payload) in entries {
            match first {
                None => first = Some(index),
                Some(f) if f + lens.len() as u64 != index => {
                    return Err(self.invalid(format!(
                        "append of entry {index} after entry {} in one batch",
                        f + lens.len() as u64 - 1
                    )))
                }
                Some(_) => {}
            }
            lens.push(
                encode_record(&mut buf, index, payload.as_ref()).map_err(|e| self.invalid(e))?,
            );
        }
        let Some(first) = first else {
            return Ok(());
        };
        let (last, base, floor) = {
            let s = self.state();
            (s.last_index(), s.base, s.floor)
        };
        match last {
            Some(last) if first <= last => self.truncate_locked(first)?,
            // Entries all below the purged start are dead already (openraft
            // purges to the state machine's last applied entry when the log
            // ends before it; its storage suite then appends past that).
            Some(last) if first != last + 1 && last < floor => self.truncate_locked(base)?,
            Some(last) if first != last + 1 => {
                return Err(self.invalid(format!(
                    "append of entry {first} after entry {last}: entries missing"
                )))
            }
            _ => {}
        }
        // Where the records go: the last segment, or a new one. An append
        // past the start into an empty log begins a segment flagged so
        // (the module's documentation).
        let (current, offset, flags) = {
            let s = self.state();
            let past_start = s.locs.is_empty() && first > s.floor;
            match s.segments.last() {
                _ if past_start => (None, HEADER, STARTS_LOG),
                Some(seg) if seg.len < self.segment_bytes => {
                    (Some((seg.file.clone(), seg.path.clone())), seg.len, 0)
                }
                _ => (None, HEADER, 0),
            }
        };
        let (file, path, created) = match current {
            Some((file, path)) => (file, path, false),
            None => {
                let path = self.dir.join(segment_name(first));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                preallocate(&file, 0, self.segment_bytes);
                (Arc::new(file), path, true)
            }
        };
        let written = if created {
            let mut whole = Vec::with_capacity(HEADER as usize + buf.len());
            whole.extend_from_slice(MAGIC);
            whole.extend_from_slice(&VERSION.to_le_bytes());
            whole.extend_from_slice(&flags.to_le_bytes());
            whole.extend_from_slice(&buf);
            file.write_all_at(&whole, 0)
        } else {
            file.write_all_at(&buf, offset)
        };
        if let Err(e) = written {
            // A full disk, say: nothing of it may stay past the segment's
            // end, where a later segment would make it look like damage.
            let _ = file.set_len(if created { 0 } else { offset });
            return Err(io_err(&path)(e));
        }
        self.synced(&path, file.sync_data())?;
        if created {
            self.synced(&self.dir, sync_dir_io(&self.dir))?;
            // Its first record is durable: from now on the log may not end
            // before it. A failure poisons the log like a failed sync (the
            // segment is on disk, the record of it unknown).
            if let Err(e) = (self.record_newest)(Some(first)) {
                self.state().poisoned =
                    Some(format!("recording the new segment {}: {e}", path.display()));
                return Err(e);
            }
        }
        let mut s = self.state();
        if created {
            s.segments.push(Segment {
                first,
                path,
                file: file.clone(),
                len: HEADER,
            });
        }
        if s.locs.is_empty() {
            s.base = first;
        }
        let mut at = offset;
        for len in lens {
            s.locs.push_back(Loc {
                file: file.clone(),
                offset: at,
                len,
            });
            at += RECORD_HEADER as u64 + u64::from(len);
        }
        s.segments.last_mut().expect("written to above").len = at;
        Ok(())
    }

    fn invalid(&self, detail: String) -> StorageError {
        StorageError::Io {
            path: self.dir.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, detail),
        }
    }

    /// Removes every entry with index `>= since`, synced.
    pub(crate) fn truncate(&self, since: u64) -> Result<()> {
        let _writer = self.lock_writer()?;
        self.truncate_locked(since)
    }

    fn truncate_locked(&self, since: u64) -> Result<()> {
        self.state().truncations += 1;
        let result = self.truncate_files(since);
        self.state().truncations += 1;
        result
    }

    fn truncate_files(&self, since: u64) -> Result<()> {
        let (doomed, cut, kept) = {
            let s = self.state();
            let Some(last) = s.last_index() else {
                return Ok(());
            };
            if since > last {
                return Ok(());
            }
            let since = since.max(s.base);
            let loc = &s.locs[(since - s.base) as usize];
            let doomed: Vec<PathBuf> = s
                .segments
                .iter()
                .filter(|seg| seg.first >= since)
                .map(|seg| seg.path.clone())
                .collect();
            // The segment that keeps entries before `since`, cut at its
            // record (none when `since` starts a segment).
            let cut = s
                .segments
                .iter()
                .rev()
                .find(|seg| seg.first < since)
                .filter(|seg| Arc::ptr_eq(&seg.file, &loc.file))
                .map(|seg| (seg.file.clone(), seg.path.clone(), loc.offset));
            // The newest segment left, recorded before any is unlinked.
            let kept = s
                .segments
                .iter()
                .rev()
                .find(|seg| seg.first < since)
                .map(|seg| seg.first);
            (doomed, cut, kept)
        };
        if !doomed.is_empty() {
            (self.record_newest)(kept)?;
        }
        for path in doomed.iter().rev() {
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        if !doomed.is_empty() {
            self.synced(&self.dir, sync_dir_io(&self.dir))?;
        }
        if let Some((file, path, offset)) = &cut {
            file.set_len(*offset).map_err(io_err(path))?;
            preallocate(file, *offset, self.segment_bytes);
            self.synced(path, file.sync_data())?;
        }
        let mut s = self.state();
        s.segments.retain(|seg| !doomed.contains(&seg.path));
        if let Some((_, _, offset)) = cut {
            s.segments.last_mut().expect("the cut segment stays").len = offset;
        }
        let keep = since.saturating_sub(s.base) as usize;
        s.locs.truncate(keep);
        Ok(())
    }

    /// Forgets every entry with index `<= upto` and unlinks the segments
    /// that hold nothing else. The caller has already recorded, synced,
    /// that the log now starts at `upto + 1`.
    pub(crate) fn purge(&self, upto: u64) -> Result<()> {
        let _writer = self.lock_writer()?;
        let doomed = {
            let mut s = self.state();
            let start = upto.saturating_add(1).max(s.floor);
            s.floor = start;
            if !s.locs.is_empty() && start > s.base {
                let drop = ((start - s.base) as usize).min(s.locs.len());
                s.locs.drain(..drop);
                s.base = start;
            }
            // A segment is purged whole once the one after it starts at or
            // below the new start (or, for the last, once nothing is left).
            let mut doomed = Vec::new();
            let n = s.segments.len();
            let mut keep_from = n;
            for i in 0..n {
                let next_first = s.segments.get(i + 1).map(|seg| seg.first);
                let whole = match next_first {
                    Some(next) => next <= start,
                    None => s.locs.is_empty(),
                };
                if !whole {
                    keep_from = i;
                    break;
                }
            }
            for seg in s.segments.drain(..keep_from) {
                doomed.push(seg.path);
            }
            doomed
        };
        // Not synced: a segment that comes back holds only entries below
        // the recorded start, and opening unlinks it again.
        for path in &doomed {
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        Ok(())
    }

    /// The log's start once purged up to `upto`: past `upto`, and never
    /// below where a purge put it already (a purge does not move it back).
    pub(crate) fn start_after_purge(&self, upto: u64) -> u64 {
        upto.saturating_add(1).max(self.state().floor)
    }

    /// The lowest index held, if any.
    pub(crate) fn first_index(&self) -> Option<u64> {
        let s = self.state();
        (!s.locs.is_empty()).then_some(s.base)
    }

    /// The highest index held and its entry, if any.
    pub(crate) fn last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let last = {
            let s = self.state();
            s.last_index()
        };
        match last {
            None => Ok(None),
            Some(last) => Ok(self
                .read(last, Some(last + 1), usize::MAX)?
                .into_iter()
                .next()),
        }
    }

    /// Entries from `start` (inclusive) to `end` (exclusive; `None`: to the
    /// last), in order, stopping once they add up to `max_bytes` (always at
    /// least one entry when the range holds any).
    pub(crate) fn read(
        &self,
        start: u64,
        end: Option<u64>,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        // A read that overlapped a truncation may hold bytes from both
        // sides of it (or fail on a cut file): it reads again, so what it
        // returns is one version of the log, as a RocksDB iterator's was.
        loop {
            let generation = self.state().truncations;
            if generation % 2 == 1 {
                std::thread::sleep(std::time::Duration::from_micros(100));
                continue;
            }
            let result = self.read_once(start, end, max_bytes);
            if self.state().truncations == generation {
                return result;
            }
            tracing::debug!("a Raft log read overlapped a truncation; reading again");
        }
    }

    fn read_once(
        &self,
        start: u64,
        end: Option<u64>,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let (from, locs) = {
            let s = self.state();
            let Some(last) = s.last_index() else {
                return Ok(Vec::new());
            };
            let from = start.max(s.base);
            let to = end.map_or(last, |end| end.saturating_sub(1).min(last));
            if end == Some(0) || from > to {
                return Ok(Vec::new());
            }
            let mut locs = Vec::new();
            let mut bytes = 0usize;
            for loc in s
                .locs
                .range((from - s.base) as usize..=(to - s.base) as usize)
            {
                let len = loc.len as usize;
                if !locs.is_empty() && bytes.saturating_add(len) > max_bytes {
                    break;
                }
                bytes = bytes.saturating_add(len);
                locs.push(loc.clone());
            }
            (from, locs)
        };
        let mut out = Vec::with_capacity(locs.len());
        let mut i = 0;
        while i < locs.len() {
            // One read for each run of adjacent records in one file.
            let mut j = i + 1;
            while j < locs.len()
                && Arc::ptr_eq(&locs[j].file, &locs[i].file)
                && locs[j].offset == locs[j - 1].end()
            {
                j += 1;
            }
            let span_start = locs[i].offset;
            let mut span = vec![0u8; (locs[j - 1].end() - span_start) as usize];
            locs[i]
                .file
                .read_exact_at(&mut span, span_start)
                .map_err(io_err(&self.dir))?;
            for (k, loc) in locs[i..j].iter().enumerate() {
                let index = from + (i + k) as u64;
                let at = (loc.offset - span_start) as usize;
                let head = &span[at..at + RECORD_HEADER];
                let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
                let stored = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
                let payload = &span[at + RECORD_HEADER..at + RECORD_HEADER + loc.len as usize];
                if stored != index || checksum(index, payload) != crc {
                    return Err(StorageError::Corrupt {
                        path: self.dir.clone(),
                        detail: format!(
                            "Raft log entry {index} reads back damaged (record at byte {})",
                            loc.offset
                        ),
                    });
                }
                out.push((index, payload.to_vec()));
            }
            i = j;
        }
        Ok(out)
    }

    /// Bytes of the segment files.
    pub(crate) fn disk_bytes(&self) -> u64 {
        // Preallocated space counts: it is taken from the disk. The files
        // are looked at outside the lock, which readers share.
        let files: Vec<(Arc<File>, u64)> = {
            let s = self.state();
            s.segments
                .iter()
                .map(|seg| (seg.file.clone(), seg.len))
                .collect()
        };
        files
            .iter()
            .map(|(file, len)| file.metadata().map_or(*len, |m| m.len().max(*len)))
            .sum()
    }

    /// Unlinks every segment (a log being rebuilt from scratch).
    pub(crate) fn clear(&self) -> Result<()> {
        let _writer = self.lock_writer()?;
        let doomed: Vec<PathBuf> = {
            let mut s = self.state();
            s.locs.clear();
            s.base = 0;
            s.floor = 0;
            s.segments.drain(..).map(|seg| seg.path).collect()
        };
        if !doomed.is_empty() {
            (self.record_newest)(None)?;
        }
        for path in doomed.iter().rev() {
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        self.synced(&self.dir, sync_dir_io(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log with nothing recorded outside its directory.
    fn plain_with(dir: &Path, start: Option<u64>, segment_bytes: u64) -> Result<SegmentLog> {
        SegmentLog::open_with(dir, start, None, Box::new(|_| Ok(())), segment_bytes)
    }

    fn plain(dir: &Path, start: Option<u64>) -> Result<SegmentLog> {
        plain_with(dir, start, SEGMENT_BYTES)
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("entry-{i}-")
            .repeat((i % 7 + 1) as usize)
            .into_bytes()
    }

    fn indexes(got: &[(u64, Vec<u8>)]) -> Vec<u64> {
        got.iter().map(|(i, _)| *i).collect()
    }

    /// The indexes of every entry the log holds.
    fn held(log: &SegmentLog) -> Vec<u64> {
        indexes(&log.read(0, None, usize::MAX).unwrap())
    }

    fn append(log: &SegmentLog, range: std::ops::RangeInclusive<u64>) {
        log.append(range.map(|i| (i, payload(i)))).unwrap();
    }

    /// A log in `dir` with segments of 256 bytes, holding entries 1..=`n`
    /// appended one at a time (so they spread over many segments).
    fn small_segments(dir: &Path, n: u64) -> SegmentLog {
        let log = plain_with(dir, None, 256).unwrap();
        for i in 1..=n {
            append(&log, i..=i);
        }
        log
    }

    /// Where the last segment's records end.
    fn records_end(log: &SegmentLog) -> u64 {
        log.state().segments.last().expect("a segment").len
    }

    fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, offset).unwrap();
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn appends_rotate_segments_and_read_back_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = small_segments(dir.path(), 40);
        assert!(segment_files(dir.path()).len() > 3);
        let got = log.read(0, None, usize::MAX).unwrap();
        assert_eq!(indexes(&got), (1..=40).collect::<Vec<_>>());
        assert!(got.iter().all(|(i, p)| *p == payload(*i)));
        assert_eq!(log.first_index(), Some(1));
        assert_eq!(log.last().unwrap(), Some((40, payload(40))));
        // A byte budget stops a read, but never before its first entry.
        let some = log.read(5, Some(30), 60).unwrap();
        assert!(!some.is_empty() && some.len() < 25, "{}", some.len());
        assert_eq!(indexes(&log.read(39, Some(100), 0).unwrap()), vec![39]);
        assert!(log.read(41, None, usize::MAX).unwrap().is_empty());
        drop(log);
        let log = plain_with(dir.path(), None, 256).unwrap();
        assert_eq!(held(&log), (1..=40).collect::<Vec<_>>());
    }

    #[test]
    fn truncation_across_segments_does_not_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = plain_with(dir.path(), None, 256).unwrap();
        append(&log, 1..=40);
        for i in 41..=80 {
            append(&log, i..=i);
        }
        log.truncate(20).unwrap();
        assert_eq!(log.last().unwrap().unwrap().0, 19);
        // Overwriting from 15 with another term's payloads.
        log.append((15..=30).map(|i| (i, b"new".to_vec()))).unwrap();
        drop(log);
        let log = plain_with(dir.path(), None, 256).unwrap();
        let got = log.read(0, None, usize::MAX).unwrap();
        assert_eq!(indexes(&got), (1..=30).collect::<Vec<_>>());
        assert_eq!(got[13].1, payload(14));
        assert!(got[14..].iter().all(|(_, p)| p == b"new"));
        // Truncating everything, then appending again.
        log.truncate(0).unwrap();
        assert_eq!(log.last().unwrap(), None);
        append(&log, 1..=3);
        drop(log);
        let log = plain_with(dir.path(), None, 256).unwrap();
        assert_eq!(held(&log), vec![1, 2, 3]);
    }

    #[test]
    fn purges_drop_whole_segments_and_hold_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = small_segments(dir.path(), 60);
        let before = segment_files(dir.path()).len();
        log.purge(30).unwrap();
        assert_eq!(log.first_index(), Some(31));
        assert!(segment_files(dir.path()).len() < before);
        assert_eq!(log.read(0, Some(31), usize::MAX).unwrap(), vec![]);
        drop(log);
        // The caller recorded start 31: the entries below it that share a
        // segment with kept ones stay hidden.
        let log = plain_with(dir.path(), Some(31), 256).unwrap();
        assert_eq!(log.first_index(), Some(31));
        assert_eq!(held(&log), (31..=60).collect::<Vec<_>>());
        // Purged past the end (a snapshot installed beyond the log): empty,
        // no segment left, and the next append starts past the purge.
        log.purge(100).unwrap();
        assert_eq!(log.last().unwrap(), None);
        assert!(segment_files(dir.path()).is_empty());
        log.append([(101u64, b"x"), (102, b"y")]).unwrap();
        drop(log);
        let log = plain_with(dir.path(), Some(101), 256).unwrap();
        assert_eq!(held(&log), vec![101, 102]);
    }

    /// A segment a crash brings back after a purge unlinked it holds only
    /// entries below the recorded start: opening ignores it.
    #[test]
    fn a_purged_segment_that_reappears_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let log = small_segments(dir.path(), 30);
        let first = dir.path().join(segment_name(1));
        let saved = std::fs::read(&first).unwrap();
        log.purge(30).unwrap();
        append(&log, 31..=32);
        drop(log);
        std::fs::write(&first, saved).unwrap();
        let log = plain_with(dir.path(), Some(31), 256).unwrap();
        assert_eq!(held(&log), vec![31, 32]);
        assert!(!first.exists());
    }

    /// A lost first segment leaves the log starting past its recorded
    /// start: an error at open, as a lost middle segment is, not a log
    /// with its oldest unapplied entries silently gone.
    #[test]
    fn a_lost_first_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = plain_with(dir.path(), None, 256).unwrap();
        for i in 0..=60 {
            append(&log, i..=i);
        }
        log.purge(20).unwrap();
        drop(log);
        let files = segment_files(dir.path());
        assert!(files.len() > 2, "{files:?}");
        std::fs::remove_file(dir.path().join(&files[0])).unwrap();
        let err = plain_with(dir.path(), Some(21), 256)
            .err()
            .expect("a lost first segment must not open");
        assert!(
            matches!(&err, StorageError::Corrupt { detail, .. } if detail.contains("entries 21..")),
            "{err}"
        );
        // Never purged: the log must start at entry 0.
        let dir = tempfile::tempdir().unwrap();
        let log = plain_with(dir.path(), None, 256).unwrap();
        for i in 0..=60 {
            append(&log, i..=i);
        }
        drop(log);
        std::fs::remove_file(dir.path().join(segment_name(0))).unwrap();
        let err = plain_with(dir.path(), None, 256)
            .err()
            .expect("a lost first segment must not open");
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }

    /// The record of the newest segment, kept here as the engine keeps it
    /// in RocksDB.
    type Newest = Arc<Mutex<Option<u64>>>;

    /// A log in `dir` whose newest segment is recorded in `newest`.
    fn recorded(dir: &Path, start: Option<u64>, newest: &Newest) -> Result<SegmentLog> {
        let cell = newest.clone();
        let now = *newest.lock().unwrap();
        SegmentLog::open_with(
            dir,
            start,
            now,
            Box::new(move |first| {
                *cell.lock().unwrap() = first;
                Ok(())
            }),
            256,
        )
    }

    /// Entries 0..=60 appended one at a time, over many segments.
    fn recorded_segments(dir: &Path, newest: &Newest) -> SegmentLog {
        let log = recorded(dir, None, newest).unwrap();
        for i in 0..=60 {
            append(&log, i..=i);
        }
        log
    }

    fn refused(dir: &Path, start: Option<u64>, newest: &Newest) -> String {
        match recorded(dir, start, newest) {
            Err(StorageError::Corrupt { detail, .. }) => detail,
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(log) => panic!(
                "a log missing its newest segments opened, holding {:?}",
                log.last().unwrap().map(|(i, _)| i)
            ),
        }
    }

    /// A log directory emptied of every segment, or missing its newest
    /// ones, would open as a shorter log: its acknowledged entries gone
    /// with nothing to say so. The newest segment, recorded outside the
    /// directory, makes it an error at open.
    #[test]
    fn lost_newest_segments_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let newest = Newest::default();
        let log = recorded_segments(dir.path(), &newest);
        drop(log);
        let files = segment_files(dir.path());
        assert!(files.len() > 2, "{files:?}");
        let last = parse_segment_name(files.last().unwrap()).unwrap();
        assert_eq!(*newest.lock().unwrap(), Some(last));

        // Reopened whole: fine, and the record is unchanged.
        drop(recorded(dir.path(), None, &newest).unwrap());
        assert_eq!(*newest.lock().unwrap(), Some(last));

        // The newest segment lost.
        let saved = std::fs::read(dir.path().join(&files[files.len() - 1])).unwrap();
        std::fs::remove_file(dir.path().join(&files[files.len() - 1])).unwrap();
        let detail = refused(dir.path(), None, &newest);
        assert!(
            detail.contains(&format!("ends at entry {}", last - 1))
                && detail.contains(&format!("starting at entry {last}")),
            "{detail}"
        );
        // Nothing was unlinked by the refused open; put back, it opens.
        assert_eq!(segment_files(dir.path()).len(), files.len() - 1);
        std::fs::write(dir.path().join(&files[files.len() - 1]), saved).unwrap();
        let log = recorded(dir.path(), None, &newest).unwrap();
        assert_eq!(log.last().unwrap().unwrap().0, 60);
        drop(log);

        // Every segment lost.
        for name in segment_files(dir.path()) {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        let detail = refused(dir.path(), None, &newest);
        assert!(detail.contains("holds no entry"), "{detail}");
        // And with a recorded start below the newest segment.
        let detail = refused(dir.path(), Some(5), &newest);
        assert!(detail.contains("holds no entry"), "{detail}");
    }

    /// A truncation that unlinks the newest segments lowers the record
    /// first; a purge past every entry leaves a record below the start,
    /// which no longer binds; a directory from before the record existed
    /// gets one at open.
    #[test]
    fn truncations_purges_and_old_directories_keep_the_record_true() {
        let dir = tempfile::tempdir().unwrap();
        let newest = Newest::default();
        let log = recorded_segments(dir.path(), &newest);
        let before = *newest.lock().unwrap();
        log.truncate(30).unwrap();
        let kept = log.state().segments.last().unwrap().first;
        assert!(kept < 30 && Some(kept) < before);
        assert_eq!(*newest.lock().unwrap(), Some(kept));
        // A truncation within the newest segment leaves it as it is.
        log.truncate(29).unwrap();
        assert_eq!(*newest.lock().unwrap(), Some(kept));
        drop(log);
        let log = recorded(dir.path(), None, &newest).unwrap();
        assert_eq!(log.last().unwrap().unwrap().0, 28);

        // Purged past every entry: no segment left, nothing refused.
        log.purge(28).unwrap();
        drop(log);
        assert!(segment_files(dir.path()).is_empty());
        let log = recorded(dir.path(), Some(29), &newest).unwrap();
        assert_eq!(log.last().unwrap(), None);
        // The next append records its segment again.
        append(&log, 29..=29);
        assert_eq!(*newest.lock().unwrap(), Some(29));
        drop(log);

        // A directory with segments and no record: recorded at open.
        let none = Newest::default();
        drop(recorded(dir.path(), Some(29), &none).unwrap());
        assert_eq!(*none.lock().unwrap(), Some(29));
    }

    /// A failed record of a new segment fails the append and poisons the
    /// log, as a failed sync does.
    #[test]
    fn a_failed_record_poisons_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open_with(
            dir.path(),
            None,
            None,
            Box::new(|_| {
                Err(StorageError::Io {
                    path: PathBuf::from("meta"),
                    source: std::io::Error::other("disk gone"),
                })
            }),
            256,
        )
        .unwrap();
        assert!(log.append([(0u64, b"a")]).is_err());
        let err = log.append([(0u64, b"a")]).unwrap_err().to_string();
        assert!(err.contains("restart the replica"), "{err}");
    }

    /// An append past the start into an empty log (openraft's storage
    /// suite) opens again: its segment carries the flag that lets it
    /// start the log, and only the first record of that segment may.
    #[test]
    fn an_append_past_the_start_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let log = plain_with(dir.path(), None, 256).unwrap();
        append(&log, 0..=5);
        log.purge(5).unwrap();
        log.append([(9u64, &b"nine"[..]), (10, &b"ten"[..])])
            .unwrap();
        drop(log);
        let log = plain_with(dir.path(), Some(6), 256).unwrap();
        assert_eq!(held(&log), vec![9, 10]);
        // Replacing the flagged segment's first entry flags its successor.
        log.append([(9u64, b"NINE")]).unwrap();
        drop(log);
        let log = plain_with(dir.path(), Some(6), 256).unwrap();
        assert_eq!(
            log.read(0, None, usize::MAX).unwrap(),
            vec![(9, b"NINE".to_vec())]
        );
        // An append at the start does not need the flag, and does not set it.
        let dir = tempfile::tempdir().unwrap();
        let log = plain_with(dir.path(), None, 256).unwrap();
        log.purge(5).unwrap();
        for i in 6..=40 {
            append(&log, i..=i);
        }
        drop(log);
        let files = segment_files(dir.path());
        std::fs::remove_file(dir.path().join(&files[0])).unwrap();
        assert!(plain_with(dir.path(), Some(6), 256).is_err());
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = plain(dir.path(), None).unwrap();
        append(&log, 1..=10);
        let good = records_end(&log);
        drop(log);
        let path = dir.path().join(segment_name(1));
        let size = std::fs::metadata(&path).unwrap().len();
        // Half a record, as a crash in the middle of an append leaves it.
        let mut torn = Vec::new();
        encode_record(&mut torn, 11, b"never acknowledged").unwrap();
        torn.truncate(torn.len() - 5);
        write_at(&path, good, &torn);
        let log = plain(dir.path(), None).unwrap();
        assert_eq!(log.last().unwrap().unwrap().0, 10);
        assert_eq!(records_end(&log), good);
        // Cut, and preallocated again: what follows the records is zeros.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[good as usize..].iter().all(|b| *b == 0));
        append(&log, 11..=12);
        let end = records_end(&log);
        drop(log);
        // A complete record whose bytes were not all written: its checksum.
        write_at(&path, end - 2, b"\xff");
        let log = plain(dir.path(), None).unwrap();
        assert_eq!(log.last().unwrap().unwrap().0, 11);
    }

    /// The bytes of a record a crash left after a header of zeros must go
    /// at open: appends would leave them after their own records, and the
    /// segment, once full, would read as damaged before its end.
    #[test]
    fn bytes_past_a_header_of_zeros_are_cleared_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = plain_with(dir.path(), None, 256).unwrap();
        append(&log, 1..=1);
        append(&log, 2..=2);
        let end = records_end(&log);
        drop(log);
        let mut orphan = Vec::new();
        encode_record(&mut orphan, 3, &[0x5a; 1000]).unwrap();
        orphan[..RECORD_HEADER].fill(0);
        write_at(&dir.path().join(segment_name(1)), end, &orphan);
        let log = plain_with(dir.path(), None, 256).unwrap();
        for i in 3..=20 {
            append(&log, i..=i);
        }
        assert!(segment_files(dir.path()).len() > 2);
        drop(log);
        let log = plain_with(dir.path(), None, 256).unwrap();
        assert_eq!(held(&log), (1..=20).collect::<Vec<_>>());
    }

    /// A new segment takes its full size at once, so appends overwrite
    /// allocated space; its zeros end the records when it is read again,
    /// and appends after a reopen go on in it.
    #[test]
    fn segments_are_preallocated_and_zeros_end_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = plain_with(dir.path(), None, 64 << 10).unwrap();
        append(&log, 0..=3);
        let path = dir.path().join(segment_name(0));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 10);
        assert!(log.disk_bytes() >= 64 << 10);
        drop(log);
        let log = plain_with(dir.path(), None, 64 << 10).unwrap();
        assert_eq!(held(&log), vec![0, 1, 2, 3]);
        append(&log, 4..=5);
        assert_eq!(segment_files(dir.path()).len(), 1);
        // A truncation leaves zeros after the records it keeps.
        log.truncate(2).unwrap();
        let end = records_end(&log);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 64 << 10);
        assert!(bytes[end as usize..].iter().all(|b| *b == 0));
        drop(log);
        let log = plain_with(dir.path(), None, 64 << 10).unwrap();
        assert_eq!(held(&log), vec![0, 1]);
        // A segment created and preallocated, then never written (a crash
        // before its first sync): no entries, and removed on open.
        append(&log, 2..=2);
        drop(log);
        let empty = dir.path().join(segment_name(3));
        let f = File::create(&empty).unwrap();
        preallocate(&f, 0, 64 << 10);
        drop(f);
        let log = plain_with(dir.path(), None, 64 << 10).unwrap();
        assert_eq!(log.last().unwrap().unwrap().0, 2);
        assert!(!empty.exists());
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error_not_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let log = small_segments(dir.path(), 40);
        drop(log);
        let first = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[HEADER as usize + RECORD_HEADER] ^= 0xff;
        std::fs::write(&first, &bytes).unwrap();
        let err = plain_with(dir.path(), None, 256)
            .err()
            .expect("damage is reported");
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
        // A segment lost from the middle: entries missing.
        let dir = tempfile::tempdir().unwrap();
        let log = small_segments(dir.path(), 40);
        drop(log);
        let second = segment_files(dir.path())[1].clone();
        std::fs::remove_file(dir.path().join(second)).unwrap();
        let err = plain_with(dir.path(), None, 256)
            .err()
            .expect("the hole is reported");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    /// Raft counts an entry once `append` returns, and a truncated entry
    /// must not come back: each returns only after a sync of its own.
    #[test]
    fn every_append_and_truncation_syncs_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let log = plain_with(dir.path(), None, 256).unwrap();
        let syncs = || log.syncs.load(std::sync::atomic::Ordering::Relaxed);
        for i in 1..=40 {
            let before = syncs();
            append(&log, i..=i);
            assert!(syncs() > before, "append of {i} returned unsynced");
        }
        for since in [35, 12] {
            let before = syncs();
            log.truncate(since).unwrap();
            assert!(syncs() > before, "truncation at {since} returned unsynced");
        }
    }

    /// openraft's storage suite: the state machine applied past the log's
    /// end, openraft purged to it, then entries arrive below and past it.
    #[test]
    fn entries_below_the_purged_start_give_way_to_the_log_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = plain(dir.path(), None).unwrap();
        log.purge(2).unwrap();
        log.append([(1u64, b"stale")]).unwrap();
        log.append([(3u64, b"three")]).unwrap();
        assert_eq!(held(&log), vec![3]);
        let err = log.append([(5u64, b"five")]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        drop(log);
        let log = plain(dir.path(), Some(3)).unwrap();
        assert_eq!(held(&log), vec![3]);
    }

    #[test]
    fn a_gap_in_an_append_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = plain(dir.path(), None).unwrap();
        append(&log, 1..=3);
        let err = log.append([(5u64, b"x")]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let err = log.append([(4u64, b"x"), (6, b"y")]).unwrap_err();
        assert!(err.to_string().contains("one batch"), "{err}");
        assert_eq!(log.last().unwrap().unwrap().0, 3);
    }

    /// A deposed leader may still read entries its successor overwrites:
    /// a read returns one version of the log, never a mix.
    #[test]
    fn a_read_that_overlaps_a_truncation_returns_one_version() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(plain_with(dir.path(), None, 2048).unwrap());
        let tagged =
            |round: u64| (50..=120u64).map(move |i| (i, format!("round {round} entry {i}")));
        log.append((1..50u64).map(|i| (i, format!("stable {i}"))))
            .unwrap();
        log.append(tagged(0)).unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (log, done) = (log.clone(), done.clone());
            std::thread::spawn(move || {
                for round in 1..=150u64 {
                    log.truncate(50).unwrap();
                    log.append(tagged(round)).unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || reads < 10 {
            let got = log.read(40, None, usize::MAX).unwrap();
            assert_eq!(indexes(&got)[..10], (40..50).collect::<Vec<_>>());
            let rounds: std::collections::BTreeSet<&str> = got[10..]
                .iter()
                .map(|(_, p)| std::str::from_utf8(p).unwrap().split(' ').nth(1).unwrap())
                .collect();
            assert!(rounds.len() <= 1, "a read mixed rounds {rounds:?}");
            reads += 1;
        }
        writer.join().unwrap();
    }

    #[test]
    fn reads_see_every_entry_while_appends_run() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(plain_with(dir.path(), None, 4096).unwrap());
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 1..=300u64 {
                    log.append([(i, payload(i))]).unwrap();
                }
            })
        };
        let mut seen = 0;
        while seen < 300 {
            let got = log.read(1, None, usize::MAX).unwrap();
            assert_eq!(indexes(&got), (1..=got.len() as u64).collect::<Vec<_>>());
            assert!(got.iter().all(|(i, p)| *p == payload(*i)));
            seen = got.len();
        }
        writer.join().unwrap();
    }
}
