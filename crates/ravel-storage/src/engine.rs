//! Opening a data directory: column families, the on-disk format version and
//! the error classification for locked, missing and corrupt directories.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rocksdb::statistics::{StatsLevel, Ticker};
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor,
    DBCompressionType, Options, WriteBatch, WriteOptions, DB,
};

use crate::error::{Result, StorageError};
use crate::segments::{RecordNewest, SegmentLog};

/// Version of the on-disk layout (column families, key encodings). Bump it
/// whenever a change makes old directories unreadable, and upgrade them on
/// open ([`upgrade_v1`]).
///
/// - 1: user keys as they are, in the `data` column family.
/// - 2: user keys behind their partition (`layout.rs`), in `kv`.
/// - 3: the Raft log in segment files (`segments.rs`), not in `raft_log`:
///   a build that reads 2 would find the log empty, so it must refuse.
pub const FORMAT_VERSION: u32 = 3;
/// Format 2, which [`upgrade_v1`] writes and [`migrate_log`] upgrades.
const FORMAT_V2: u32 = 2;

/// Where the Raft log lived before format 3 moved it to files of its own
/// (`segments.rs`): still opened (RocksDB opens a database only with all
/// its column families), and emptied by [`migrate_log`].
pub(crate) const CF_LOG: &str = "raft_log";
pub(crate) const CF_RAFT_META: &str = "raft_meta";
pub(crate) const CF_DATA: &str = "kv";
/// Format 1's user data: read once by the upgrade, then dropped.
const CF_DATA_V1: &str = "data";
pub(crate) const CF_SM_META: &str = "sm_meta";
const ALL_CFS: [&str; 4] = [CF_LOG, CF_RAFT_META, CF_DATA, CF_SM_META];

const FORMAT_KEY: &[u8] = b"format_version";
/// `raft_meta` key: the lowest index the Raft log keeps (big-endian
/// `u64`), written by each purge; absent until the first.
pub(crate) const LOG_START_KEY: &[u8] = b"log_start";
/// `raft_meta` key: the first index of the Raft log's newest segment
/// (big-endian `u64`), written (synced) when a segment's first record is,
/// lowered before a truncation unlinks it; absent when no segment is
/// vouched for. At open, a log ending before it lost segments.
const LOG_NEWEST_KEY: &[u8] = b"log_newest_segment";
/// The Raft log's directory, inside the database's.
const LOG_DIR: &str = "raft-log";

/// One node's storage: a RocksDB holding Raft metadata, user data and
/// state-machine metadata, each in its own column family, and the Raft log
/// in segment files beside them. Cheap to clone; every clone shares the
/// same database.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shared with the log, which records its newest segment in it.
    db: Arc<DB>,
    /// The Raft log, in segment files beside the database's.
    log: SegmentLog,
    path: PathBuf,
    /// The block cache every column family shares (index and filter
    /// blocks included).
    cache: Cache,
    /// The options the database was opened with: they hold its statistics
    /// (see [`Engine::stats`]).
    opts: Options,
}

/// A handle that does not keep the database open (for observers such as
/// metrics, which must not hold the data directory past a node's
/// shutdown).
#[derive(Clone)]
pub struct WeakEngine(Weak<Inner>);

impl WeakEngine {
    /// The engine, if it is still open.
    pub fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(|inner| Engine { inner })
    }
}

/// What RocksDB reports about its own work: write stalls, flushes,
/// compactions and memory. Where writes slow down, the Raft log's synced
/// appends (the same database) slow down with them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Time writes have spent delayed or stopped by RocksDB's write
    /// controller since the database opened (too many L0 files, too many
    /// memtables waiting for a flush, or too much compaction debt).
    pub write_stall: Duration,
    /// The rate writes are held to now, in bytes per second; 0 when writes
    /// are not delayed.
    pub delayed_write_rate: u64,
    /// Whether writes are stopped now (each waits for a flush or a
    /// compaction).
    pub write_stopped: bool,
    /// L0 files of each column family (RocksDB slows writes down at 20 and
    /// stops them at 36, by default).
    pub l0_files: Vec<(&'static str, u64)>,
    /// Bytes compaction is estimated to have to rewrite, over all column
    /// families.
    pub pending_compaction_bytes: u64,
    /// Flushes and compactions running now.
    pub running_flushes: u64,
    pub running_compactions: u64,
    /// Bytes in memtables, over all column families (at most the memtable
    /// budget, plus memtables being flushed).
    pub memtable_bytes: u64,
    /// Bytes held by the shared block cache.
    pub block_cache_bytes: u64,
    /// Bytes of the Raft log's segment files (outside RocksDB).
    pub raft_log_bytes: u64,
}

/// What a replica's RocksDB may hold in memory, beyond a few MiB of
/// bookkeeping: memtables of all column families together, plus one block
/// cache that every column family shares, with the index and filter blocks
/// of the files in it (not held apart per open file). The bound does not
/// grow with the data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Memtables of all column families together; RocksDB flushes the
    /// largest when the sum reaches it.
    pub memtables: usize,
    /// The shared block cache (uncompressed blocks, index and filter
    /// blocks).
    pub block_cache: usize,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget {
            memtables: MEMTABLE_BUDGET,
            block_cache: BLOCK_CACHE,
        }
    }
}

impl Drop for Inner {
    /// A clean close flushes the state machine (its applies skip the WAL)
    /// and keeps even the unsynced tail of the WAL, so a graceful restart
    /// re-applies nothing. Then RocksDB's background work (flushes,
    /// compactions, periodic tasks) is stopped and waited for before the
    /// database is closed: see [`quiesce`].
    fn drop(&mut self) {
        if let Err(e) = flush_state_machine(&self.db) {
            tracing::warn!(path = %self.path.display(), error = %e, "flushing the state machine on close failed");
        }
        if let Err(e) = self.db.flush_wal(true) {
            tracing::warn!(path = %self.path.display(), error = %e, "syncing the WAL on close failed");
        }
        quiesce(&self.db);
    }
}

/// Flushes the state machine's families, `kv` and `sm_meta` (atomically,
/// with the database's `atomic_flush`), and waits for the files. Applies
/// skip the WAL: until this, the Raft log is their only durable record.
fn flush_state_machine(db: &DB) -> std::result::Result<(), rocksdb::Error> {
    let mut wait = rocksdb::FlushOptions::default();
    wait.set_wait(true);
    let cfs: Vec<_> = [CF_DATA, CF_SM_META]
        .iter()
        .filter_map(|name| db.cf_handle(name))
        .collect();
    db.flush_cfs_opt(&cfs, &wait)
}

/// Stops RocksDB's background work on `db` and waits for it, so that no
/// background thread still runs for this database while it is closed.
/// Otherwise a close that races the process's exit can abort it with
/// `pthread lock: Invalid argument` (facebook/rocksdb#11349): a background
/// or periodic task locks a RocksDB mutex that exit has already destroyed
/// (5 of 400 runs of this crate's test binary aborted so).
fn quiesce(db: &DB) {
    db.cancel_all_background_work(true);
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn db_options(create: bool, budget: &MemoryBudget) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(create);
    opts.create_missing_column_families(create);
    opts.set_compression_type(DBCompressionType::Lz4);
    // Fail loudly on damaged files instead of serving what might be wrong.
    opts.set_paranoid_checks(true);
    opts.set_keep_log_file_num(4);
    // Unsynced writes (the committed hint) stay in RocksDB's WAL buffer
    // until the next synced write or `sync()`, which then writes and syncs
    // everything before it in order. This makes a killed process lose
    // exactly what a power cut would lose: the crash test relies on that to
    // prove that every acknowledged log append was synced.
    opts.set_manual_wal_flush(true);
    // State-machine applies skip the WAL (`ApplyBatch::commit`): the Raft
    // log is their write-ahead log. What survives a crash of them is what
    // the last flush wrote, so every flush writes all column families as
    // of one instant: `kv` and `sm_meta` (which holds `last_applied` and
    // the sessions) never disagree after a restart, and the replica
    // re-applies its log from the recovered `last_applied`.
    opts.set_atomic_flush(true);
    // One memory budget for every column family's memtables: RocksDB
    // flushes the largest when the sum reaches it. Without it each of the
    // four families may hold two 64 MiB memtables, and a replica's memory
    // grows with the write rate (the log and the data families both fill).
    opts.set_db_write_buffer_size(budget.memtables);
    opts
}

/// A column family's options: the database's, the shared block `cache`
/// (without one, RocksDB gives every column family a 32 MiB cache of its
/// own, and keeps each open file's index and filter blocks outside any
/// cache, so memory grows with the data), and
/// - `kv`: a Bloom filter (10 bits a key, about 1% false positives), so
///   a read of an absent key (a relocation's `SetIfAbsent` on the
///   destination; a read of a moving partition, which asks its new owner
///   first) skips the files that lack it instead of searching each one;
/// - `raft_log`: no compression. Entries are written once, rarely read
///   back and soon purged: compressing them when their memtable is flushed
///   spends CPU on data about to be deleted.
fn cf_options(name: &str, create: bool, budget: &MemoryBudget, cache: &Cache) -> Options {
    let mut opts = db_options(create, budget);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Index and filter blocks in the cache (RocksDB gives them high
    // priority there), and those of L0 files (the most read) kept there.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // Partitioned: a file's index and filter are cut into 4 KiB blocks
    // cached like data blocks, under a small top level kept in the cache.
    // Whole, a 64 MiB file's index is about 400 KiB: more than the share
    // of the cache it lands in (the cache has one shard per 512 KiB), so
    // it never stayed, and every point read of that file read and
    // decompressed all of it again (43% of the source replicas' CPU in a
    // 1M-key relocation, whose deletes read each key).
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_pin_top_level_index_and_filter(true);
    match name {
        CF_DATA => table.set_bloom_filter(10.0, false),
        CF_LOG => opts.set_compression_type(DBCompressionType::None),
        _ => {}
    }
    opts.set_block_based_table_factory(&table);
    opts
}

/// How old a file of the last level must be before RocksDB rewrites it
/// only to drop what a released snapshot protected (its "BottommostFiles"
/// compactions). Without a delay, every release of a pinned view (one per
/// Raft snapshot, about every 64 MiB of log) marked every last-level file
/// written since, and each was rewritten at once: in a 1M-key relocation
/// that was 558 MiB of the new owner's Raft log (entries about to be
/// purged) and 313 MiB of its data rewritten for nothing but zeroed
/// sequence numbers (docs/benchmarks.md, "Keys stored by partition").
/// Delayed, a log file is purged before its turn comes, and data files
/// are rewritten later, off the write's busy moment. What it trades: the
/// space of versions a released snapshot held stays up to this long.
pub const BOTTOMMOST_REWRITE_DELAY_SECS: u32 = 600;

/// Sets [`BOTTOMMOST_REWRITE_DELAY_SECS`] on every column family. The
/// Rust binding has no setter for it in `Options`; RocksDB takes it as a
/// dynamic option.
fn delay_bottommost_rewrites(db: &DB) -> std::result::Result<(), rocksdb::Error> {
    let delay = BOTTOMMOST_REWRITE_DELAY_SECS.to_string();
    for name in ALL_CFS {
        if let Some(cf) = db.cf_handle(name) {
            db.set_options_cf(cf, &[("bottommost_file_compaction_delay", delay.as_str())])?;
        }
    }
    Ok(())
}

/// Memtables of all column families together, at most (the default).
pub const MEMTABLE_BUDGET: usize = 32 << 20;
/// The shared block cache (the default).
pub const BLOCK_CACHE: usize = 32 << 20;

impl Engine {
    /// Opens the data directory at `path`, creating and initialising it when
    /// it does not exist yet (or is an empty directory).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, MemoryBudget::default())
    }

    /// [`Engine::open`] within a memory budget.
    pub fn open_with(path: impl AsRef<Path>, budget: MemoryBudget) -> Result<Self> {
        let path = path.as_ref();
        if !is_initialised(path) {
            ensure_empty_or_absent(path)?;
            Self::create(path)?;
        }
        Self::open_existing_with(path, budget)
    }

    /// Opens a data directory that must already hold a Ravel database.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_existing_with(path.as_ref(), MemoryBudget::default())
    }

    fn open_existing_with(path: &Path, budget: MemoryBudget) -> Result<Self> {
        if !path.exists() {
            return Err(StorageError::Missing {
                path: path.to_path_buf(),
            });
        }
        if !is_initialised(path) {
            return Err(StorageError::NotRavel {
                path: path.to_path_buf(),
                detail: "no RocksDB CURRENT file".into(),
            });
        }
        let cache = Cache::new_lru_cache(budget.block_cache);
        // A format-1 directory still has `data` (and, if an upgrade was
        // cut short, `kv`): open it too, and let RocksDB create `kv`.
        let existing = DB::list_cf(&Options::default(), path).unwrap_or_default();
        let legacy = existing.iter().any(|c| c == CF_DATA_V1);
        let names: Vec<&str> = ALL_CFS
            .iter()
            .copied()
            .chain(legacy.then_some(CF_DATA_V1))
            .collect();
        let cfs = names.iter().map(|name| {
            ColumnFamilyDescriptor::new(*name, cf_options(name, false, &budget, &cache))
        });
        let mut opts = db_options(false, &budget);
        opts.create_missing_column_families(legacy);
        // Tickers only (no histograms, no timers): per-core counters, cheap
        // enough to keep on. `stats` reads the write-stall time from them.
        opts.enable_statistics();
        opts.set_statistics_level(StatsLevel::ExceptHistogramOrTimers);
        let mut db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
            let text = e.to_string();
            if e.kind() == rocksdb::ErrorKind::InvalidArgument && text.contains("olumn famil") {
                StorageError::NotRavel {
                    path: path.to_path_buf(),
                    detail: text,
                }
            } else {
                StorageError::from_rocks(path, e)
            }
        })?;
        let raft_meta = db
            .cf_handle(CF_RAFT_META)
            .ok_or_else(|| StorageError::NotRavel {
                path: path.to_path_buf(),
                detail: "no raft_meta column family".into(),
            })?;
        let raw = db
            .get_cf(raft_meta, FORMAT_KEY)
            .map_err(|e| StorageError::from_rocks(path, e))?
            .ok_or_else(|| StorageError::NotRavel {
                path: path.to_path_buf(),
                detail: "no format version recorded".into(),
            })?;
        let found = <[u8; 4]>::try_from(raw.as_slice())
            .map(u32::from_be_bytes)
            .map_err(|_| StorageError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("format version has {} bytes, expected 4", raw.len()),
            })?;
        match found {
            1 if legacy => {
                let moved = upgrade_v1(&db).map_err(|e| StorageError::from_rocks(path, e))?;
                tracing::info!(path = %path.display(), keys = moved, "data directory upgraded from format 1 to 2 (keys stored by partition)");
            }
            FORMAT_V2 | FORMAT_VERSION => {}
            _ => {
                return Err(StorageError::FormatVersion {
                    path: path.to_path_buf(),
                    found,
                    expected: FORMAT_VERSION,
                })
            }
        }
        if legacy {
            // Upgraded (now or by a run that stopped before this): format 2
            // is recorded, so format 1's data is no longer read.
            db.drop_cf(CF_DATA_V1)
                .map_err(|e| StorageError::from_rocks(path, e))?;
        }
        delay_bottommost_rewrites(&db).map_err(|e| StorageError::from_rocks(path, e))?;
        let meta_u64 = |key: &[u8], what: &str| -> Result<Option<u64>> {
            let raw = db
                .get_cf(db.cf_handle(CF_RAFT_META).expect("opened above"), key)
                .map_err(|e| StorageError::from_rocks(path, e))?;
            raw.map(|raw| decode_be_u64(&raw, path, what)).transpose()
        };
        let start = meta_u64(LOG_START_KEY, "the log's start")?;
        let newest = meta_u64(LOG_NEWEST_KEY, "the log's newest segment")?;
        let db = Arc::new(db);
        let log = SegmentLog::open(
            &path.join(LOG_DIR),
            start,
            newest,
            record_newest(Arc::clone(&db), path),
        )?;
        if found != FORMAT_VERSION {
            let moved = migrate_log(&db, &log, path)?;
            tracing::info!(path = %path.display(), entries = moved, "data directory upgraded to format 3 (the Raft log moved from RocksDB to its own segment files)");
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                db,
                log,
                path: path.to_path_buf(),
                cache,
                opts,
            }),
        })
    }

    /// Creates a database at `path` atomically: built and stamped with its
    /// format version beside it (`<path>.creating`), then renamed into
    /// place, so a crash part way leaves nothing at `path` that a restart
    /// would refuse. The caller holds the data directory (the node's
    /// directory lock), so a leftover `.creating` is ours to remove.
    fn create(path: &Path) -> Result<()> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StorageError::Io { path: p, source }
        };
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".creating");
        let tmp = path.with_file_name(name);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        {
            // Only the initial records are written: the smallest budget.
            let budget = MemoryBudget {
                memtables: 1 << 20,
                block_cache: 1 << 20,
            };
            let cache = Cache::new_lru_cache(budget.block_cache);
            let cfs = ALL_CFS.iter().map(|name| {
                ColumnFamilyDescriptor::new(*name, cf_options(name, true, &budget, &cache))
            });
            let db = DB::open_cf_descriptors(&db_options(true, &budget), &tmp, cfs)
                .map_err(|e| StorageError::from_rocks(&tmp, e))?;
            #[cfg(test)]
            if tests::CRASH_AFTER_CREATE.with(|c| c.get()) {
                return Err(StorageError::Io {
                    path: tmp.clone(),
                    source: std::io::Error::other("crash after creating the database (test)"),
                });
            }
            let mut batch = WriteBatch::default();
            let cf = db.cf_handle(CF_RAFT_META).expect("created above");
            batch.put_cf(cf, FORMAT_KEY, FORMAT_VERSION.to_be_bytes());
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.write_opt(batch, &opts)
                .map_err(|e| StorageError::from_rocks(&tmp, e))?;
            quiesce(&db);
            // Closed here: everything is in synced files before the rename.
        }
        // Renaming over an empty directory replaces it (rename(2)).
        std::fs::rename(&tmp, path).map_err(io(path))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io(parent))?;
        }
        Ok(())
    }

    /// How many handles share this database. The directory stays locked
    /// until the last one is dropped.
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// The directory this engine lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Bytes held by the shared block cache now (at most
    /// [`MemoryBudget::block_cache`]).
    pub fn block_cache_usage(&self) -> usize {
        self.inner.cache.get_usage()
    }

    /// A handle that does not keep the database open.
    pub fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.inner))
    }

    /// RocksDB's own account of its work now (see [`EngineStats`]). A
    /// property RocksDB cannot report counts as 0.
    pub fn stats(&self) -> EngineStats {
        let db = &self.inner.db;
        let prop = |name: &str| db.property_int_value(name).ok().flatten().unwrap_or(0);
        let cf_prop = |cf: &str, name: &str| {
            db.property_int_value_cf(self.cf(cf), name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let over_cfs = |name: &str| ALL_CFS.iter().map(|cf| cf_prop(cf, name)).sum();
        EngineStats {
            write_stall: Duration::from_micros(
                self.inner.opts.get_ticker_count(Ticker::StallMicros),
            ),
            delayed_write_rate: prop("rocksdb.actual-delayed-write-rate"),
            write_stopped: prop("rocksdb.is-write-stopped") != 0,
            l0_files: ALL_CFS
                .iter()
                .map(|cf| (*cf, cf_prop(cf, "rocksdb.num-files-at-level0")))
                .collect(),
            pending_compaction_bytes: over_cfs("rocksdb.estimate-pending-compaction-bytes"),
            running_flushes: prop("rocksdb.num-running-flushes"),
            running_compactions: prop("rocksdb.num-running-compactions"),
            memtable_bytes: over_cfs("rocksdb.cur-size-all-mem-tables"),
            block_cache_bytes: self.block_cache_usage() as u64,
            raft_log_bytes: self.log_disk_bytes(),
        }
    }

    pub(crate) fn db(&self) -> &DB {
        &self.inner.db
    }

    pub(crate) fn log(&self) -> &SegmentLog {
        &self.inner.log
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // The four column families are opened (or created) in `open`, so a
        // missing handle is a programming error, not an input error.
        self.inner
            .db
            .cf_handle(name)
            .expect("column family opened with the engine")
    }

    pub(crate) fn rocks_err(&self, e: rocksdb::Error) -> StorageError {
        StorageError::from_rocks(&self.inner.path, e)
    }

    pub(crate) fn get_cf(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner
            .db
            .get_cf(self.cf(cf), key)
            .map_err(|e| self.rocks_err(e))
    }

    /// Writes a batch atomically; `sync` decides whether it is fsynced (WAL)
    /// before returning.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.write_with(batch, &opts)
    }

    /// Writes a batch of state-machine changes without the WAL: it lasts a
    /// crash only once a flush has written it ([`Self::persist_state_machine`]).
    pub(crate) fn write_unlogged(&self, batch: WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        self.write_with(batch, &opts)
    }

    fn write_with(&self, batch: WriteBatch, opts: &WriteOptions) -> Result<()> {
        self.inner
            .db
            .write_opt(batch, opts)
            .map_err(|e| self.rocks_err(e))
    }

    /// Makes every state-machine change so far durable: flushes `kv` and
    /// `sm_meta` (atomically, with the database's `atomic_flush`) and waits
    /// for the files. Applies skip the WAL, so this is what must precede
    /// removing the log entries they came from.
    pub fn persist_state_machine(&self) -> Result<()> {
        flush_state_machine(&self.inner.db).map_err(|e| self.rocks_err(e))
    }

    /// Reads a Raft metadata value (vote, committed index, node identity...).
    pub fn raft_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get_cf(CF_RAFT_META, key.as_bytes())
    }

    /// Stores a Raft metadata value durably (synced) before returning.
    pub fn put_raft_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_RAFT_META), key.as_bytes(), value);
        self.write(batch, true)
    }

    /// Stores a Raft metadata value without waiting for an fsync: for hints
    /// whose loss in a crash is harmless (e.g. the committed log id).
    pub fn put_raft_meta_unsynced(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_RAFT_META), key.as_bytes(), value);
        self.write(batch, false)
    }

    /// Forces everything written so far, synced or not, to stable storage:
    /// the state machine by a flush, the rest by syncing the WAL.
    pub fn sync(&self) -> Result<()> {
        self.persist_state_machine()?;
        self.inner.db.flush_wal(true).map_err(|e| self.rocks_err(e))
    }
}

/// Rewrites a format-1 directory's user data in format 2: every key of
/// `data` stored behind its partition in `kv`, in unsynced batches of
/// about 4 MiB, then format 2 recorded in one synced batch. Redone from the
/// start after a crash before that (it clears `kv` first: format 1 is
/// still recorded, so `data` is still whole). The caller drops `data`.
/// Returns the number of keys rewritten.
fn upgrade_v1(db: &DB) -> std::result::Result<u64, rocksdb::Error> {
    let cf = |name| {
        db.cf_handle(name)
            .expect("opened with the upgrade's families")
    };
    let (old, new) = (cf(CF_DATA_V1), cf(CF_DATA));
    let mut batch = WriteBatch::default();
    // Stored keys start with a partition below 2^16 - 1.
    batch.delete_range_cf(new, &[][..], &[0xff_u8, 0xff][..]);
    let mut moved = 0u64;
    let mut opts = rocksdb::ReadOptions::default();
    opts.fill_cache(false);
    for item in db.iterator_cf_opt(old, opts, rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        batch.put_cf(new, crate::layout::encode(&k), v);
        moved += 1;
        if batch.size_in_bytes() >= 4 << 20 {
            db.write_opt(std::mem::take(&mut batch), &WriteOptions::default())?;
        }
    }
    batch.put_cf(cf(CF_RAFT_META), FORMAT_KEY, FORMAT_V2.to_be_bytes());
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync)?;
    Ok(moved)
}

/// Upgrades a format-2 directory to format 3: the entries of `raft_log`
/// appended to the segment files of `log` (synced), then, in one synced
/// batch, the log's start recorded, `raft_log` emptied and format 3
/// recorded. A crash before that batch leaves format 2 whole, and the
/// next open redoes it (`log` is cleared first: nothing was appended to it
/// since, as this runs before the engine is handed out). Returns the
/// number of entries moved.
fn migrate_log(db: &DB, log: &SegmentLog, path: &Path) -> Result<u64> {
    let rocks = |e| StorageError::from_rocks(path, e);
    let cf = db.cf_handle(CF_LOG).expect("opened with the engine");
    let mut entries = db.iterator_cf(cf, rocksdb::IteratorMode::Start).peekable();
    let first = match entries.peek() {
        None => None,
        Some(Err(e)) => return Err(rocks(e.clone())),
        Some(Ok((k, _))) => Some(decode_be_u64(k, path, "a Raft log key")?),
    };
    log.clear()?;
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    let mut moved = 0u64;
    for item in entries {
        let (k, v) = item.map_err(rocks)?;
        bytes += v.len();
        chunk.push((decode_be_u64(&k, path, "a Raft log key")?, v));
        moved += 1;
        if bytes >= 4 << 20 {
            log.append(chunk.drain(..))?;
            bytes = 0;
        }
    }
    log.append(chunk)?;
    let mut batch = WriteBatch::default();
    let meta = db.cf_handle(CF_RAFT_META).expect("opened with the engine");
    if let Some(first) = first {
        batch.put_cf(meta, LOG_START_KEY, first.to_be_bytes());
    }
    batch.delete_range_cf(cf, &[][..], &[0xFFu8; 9][..]);
    batch.put_cf(meta, FORMAT_KEY, FORMAT_VERSION.to_be_bytes());
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync).map_err(rocks)?;
    Ok(moved)
}

/// How the log records its newest segment: in `raft_meta`, synced.
fn record_newest(db: Arc<DB>, path: &Path) -> RecordNewest {
    let path = path.to_path_buf();
    Box::new(move |first| {
        let meta = db.cf_handle(CF_RAFT_META).expect("opened with the engine");
        let mut batch = WriteBatch::default();
        match first {
            Some(first) => batch.put_cf(meta, LOG_NEWEST_KEY, first.to_be_bytes()),
            None => batch.delete_cf(meta, LOG_NEWEST_KEY),
        }
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        db.write_opt(batch, &sync)
            .map_err(|e| StorageError::from_rocks(&path, e))
    })
}

/// A big-endian `u64` stored by this crate (a log index, the log's start).
fn decode_be_u64(raw: &[u8], path: &Path, what: &str) -> Result<u64> {
    <[u8; 8]>::try_from(raw)
        .map(u64::from_be_bytes)
        .map_err(|_| StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("{what} of {} bytes, expected 8", raw.len()),
        })
}

/// RocksDB writes `CURRENT` when it creates a database; its presence is how we
/// tell a restart from a first start.
fn is_initialised(path: &Path) -> bool {
    path.join("CURRENT").is_file()
}

/// A first start may use an absent or empty directory, never one with other
/// files in it: we will not mistake someone's directory for ours.
fn ensure_empty_or_absent(path: &Path) -> Result<()> {
    match std::fs::read_dir(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StorageError::Io {
            path: path.to_path_buf(),
            source,
        }),
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(StorageError::NotRavel {
                path: path.to_path_buf(),
                detail: "directory is not empty and holds no RocksDB database".into(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory as format 1 left it: user keys as they are in `data`;
    /// `half_upgraded` adds a `kv` family holding a stray key, as an
    /// upgrade cut short by a crash would leave it.
    fn format_1_directory(path: &Path, keys: u32, half_upgraded: bool) {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        let mut names = vec![CF_LOG, CF_RAFT_META, CF_DATA_V1, CF_SM_META];
        if half_upgraded {
            names.push(CF_DATA);
        }
        let db = DB::open_cf(&o, path, names).unwrap();
        let cf = |n| db.cf_handle(n).unwrap();
        db.put_cf(cf(CF_RAFT_META), FORMAT_KEY, 1u32.to_be_bytes())
            .unwrap();
        for i in 0..keys {
            db.put_cf(cf(CF_DATA_V1), format!("k{i:04}"), format!("v{i}"))
                .unwrap();
        }
        db.put_cf(cf(CF_SM_META), b"last_applied", b"L").unwrap();
        if half_upgraded {
            db.put_cf(cf(CF_DATA), crate::layout::encode(b"stray"), b"x")
                .unwrap();
        }
        db.flush_wal(true).unwrap();
    }

    /// A data directory whose `raft-log` was emptied (or replaced by an
    /// empty one) is refused at open, with the reason, instead of coming
    /// back as a replica that never had its acknowledged entries. A log
    /// purged past every entry still opens.
    #[test]
    fn an_emptied_raft_log_directory_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let e = Engine::open(&path).unwrap();
        e.append_log((1..=50u64).map(|i| (i, vec![7u8; 100])))
            .unwrap();
        drop(e);
        drop(Engine::open(&path).unwrap());
        std::fs::remove_dir_all(path.join(LOG_DIR)).unwrap();
        match Engine::open(&path) {
            Err(StorageError::Corrupt { path: at, detail }) => {
                assert_eq!(at, path.join(LOG_DIR));
                assert!(detail.contains("holds no entry"), "{detail}");
            }
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("an emptied log directory opened"),
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let e = Engine::open(&path).unwrap();
        e.append_log((1..=50u64).map(|i| (i, vec![7u8; 100])))
            .unwrap();
        e.purge_log(50, ("last_purged", b"50")).unwrap();
        drop(e);
        let e = Engine::open(&path).unwrap();
        assert_eq!(e.last_log().unwrap(), None);
        e.append_log([(51u64, b"next".to_vec())]).unwrap();
        drop(e);
        let e = Engine::open(&path).unwrap();
        assert_eq!(e.last_log().unwrap(), Some((51, b"next".to_vec())));
    }

    /// A format-2 directory, whose Raft log lives in `raft_log`: its
    /// entries move to the segment files on open, format 3 is recorded (so
    /// a format-2 build refuses it instead of finding the log empty), and
    /// what a later purge left out stays out.
    #[test]
    fn a_log_kept_in_rocksdb_moves_to_segment_files_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(Engine::open(&path).unwrap());
        {
            let db = DB::open_cf(&Options::default(), &path, ALL_CFS).unwrap();
            let cf = db.cf_handle(CF_LOG).unwrap();
            for i in 5..=900u64 {
                db.put_cf(cf, i.to_be_bytes(), format!("entry {i}"))
                    .unwrap();
            }
            db.put_cf(
                db.cf_handle(CF_RAFT_META).unwrap(),
                FORMAT_KEY,
                FORMAT_V2.to_be_bytes(),
            )
            .unwrap();
            db.flush_wal(true).unwrap();
        }
        {
            // What a move cut short by a crash leaves: part of the log in
            // segment files, format 2 still recorded.
            let partial =
                SegmentLog::open(&path.join(LOG_DIR), None, None, Box::new(|_| Ok(()))).unwrap();
            partial
                .append((5..=100u64).map(|i| (i, b"partial".to_vec())))
                .unwrap();
        }
        let e = Engine::open(&path).unwrap();
        assert_eq!(
            e.raft_meta("format_version").unwrap().as_deref(),
            Some(&FORMAT_VERSION.to_be_bytes()[..])
        );
        let got = e.log_entries(..).unwrap();
        assert_eq!(got.len(), 896);
        assert_eq!(got[0], (5, b"entry 5".to_vec()));
        assert!(got
            .iter()
            .all(|(i, v)| *v == format!("entry {i}").into_bytes()));
        assert_eq!(e.last_log().unwrap().unwrap().0, 900);
        assert!(e.log_disk_bytes() > 896 * 9);
        assert_eq!(
            e.db()
                .iterator_cf(e.cf(CF_LOG), rocksdb::IteratorMode::Start)
                .count(),
            0,
            "raft_log is emptied"
        );
        e.append_log([(901u64, b"after".to_vec())]).unwrap();
        e.purge_log(100, ("last_purged", b"100")).unwrap();
        drop(e);
        let e = Engine::open(&path).unwrap();
        assert_eq!(e.first_log_index().unwrap(), Some(101));
        assert_eq!(e.last_log().unwrap(), Some((901, b"after".to_vec())));
    }

    #[test]
    fn a_format_1_directory_is_upgraded_on_open_even_after_a_crash_part_way() {
        for half_upgraded in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            format_1_directory(&path, 700, half_upgraded);
            let want: Vec<(Vec<u8>, Vec<u8>)> = (0..700u32)
                .map(|i| {
                    (
                        format!("k{i:04}").into_bytes(),
                        format!("v{i}").into_bytes(),
                    )
                })
                .collect();
            {
                let e = Engine::open(&path).unwrap();
                assert_eq!(
                    e.scan(b"", usize::MAX).unwrap(),
                    want,
                    "half {half_upgraded}"
                );
                assert_eq!(e.get(b"k0042").unwrap().as_deref(), Some(&b"v42"[..]));
                assert_eq!(e.get(b"stray").unwrap(), None);
                assert_eq!(
                    e.sm_meta("last_applied").unwrap().as_deref(),
                    Some(&b"L"[..])
                );
            }
            let cfs = DB::list_cf(&Options::default(), &path).unwrap();
            assert!(!cfs.iter().any(|c| c == CF_DATA_V1), "{cfs:?}");
            // Reopened: format 2, nothing to upgrade, the same data.
            let e = Engine::open(&path).unwrap();
            assert_eq!(e.scan(b"", usize::MAX).unwrap(), want);
        }
    }

    /// Every column family reads through the one block cache of the
    /// budget, and it stays within it however much is read: with a cache
    /// per family (RocksDB's default), this one would stay empty.
    #[test]
    fn reads_go_through_one_bounded_block_cache() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemoryBudget {
            memtables: 1 << 20,
            block_cache: 1 << 20,
        };
        let engine = Engine::open_with(dir.path().join("db"), budget).unwrap();
        let value = |i: u32| -> Vec<u8> {
            (0..1024u32)
                .map(|j| (i.wrapping_mul(2_654_435_761) ^ j.wrapping_mul(40_503)) as u8)
                .collect()
        };
        for chunk in 0..8u32 {
            let mut batch = engine.apply_batch();
            for i in chunk * 1024..(chunk + 1) * 1024 {
                batch.put(&i.to_be_bytes(), &value(i));
            }
            batch.commit().unwrap();
        }
        engine.db().flush_cf(engine.cf(CF_DATA)).unwrap();
        for i in 0..8 * 1024u32 {
            assert_eq!(engine.get(&i.to_be_bytes()).unwrap(), Some(value(i)));
        }
        let used = engine.block_cache_usage();
        assert!(used > 0, "the reads did not use the shared cache");
        assert!(
            used <= budget.block_cache + (64 << 10),
            "{used} bytes cached, over the {} byte budget",
            budget.block_cache
        );
    }

    /// Files are written with a partitioned index (see `cf_options`): a
    /// whole index block larger than its cache shard was read again for
    /// every point read. A file of 16k entries of 1 KiB has an index of
    /// about 110 KiB, cut into 4 KiB parts.
    #[test]
    fn files_are_written_with_a_partitioned_index() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path().join("db")).unwrap();
        let key = |i: u64| format!("key-{i:012}").into_bytes();
        for chunk in 0..4u64 {
            let mut batch = engine.apply_batch();
            for i in chunk * 4096..(chunk + 1) * 4096 {
                batch.put(&key(i), &[i as u8; 1024]);
            }
            batch.commit().unwrap();
        }
        engine.db().flush_cf(engine.cf(CF_DATA)).unwrap();
        let props = engine
            .db()
            .property_value_cf(engine.cf(CF_DATA), "rocksdb.aggregated-table-properties")
            .unwrap()
            .expect("table properties");
        let partitions: u64 = props
            .split("; ")
            .find_map(|p| p.strip_prefix("# index partitions="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no index partition count in {props}"));
        assert!(partitions > 1, "index not partitioned: {props}");
        assert_eq!(
            engine.get(&key(4242)).unwrap(),
            Some(vec![4242u64 as u8; 1024])
        );
    }

    /// The newest OPTIONS file of the database at `path`: its name and text.
    fn newest_options(path: &Path) -> (String, String) {
        let newest = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("OPTIONS-"))
            .max_by_key(|n| n["OPTIONS-".len()..].parse::<u64>().unwrap())
            .expect("an OPTIONS file");
        let text = std::fs::read_to_string(path.join(&newest)).unwrap();
        (newest, text)
    }

    /// Applies skip the WAL, so only a flush that writes `kv` and `sm_meta`
    /// as of one instant keeps `last_applied` true to the data after a crash.
    #[test]
    fn flushes_are_atomic_across_column_families() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let engine = Engine::open(&path).unwrap();
        let (newest, text) = newest_options(&path);
        let db_options = text
            .split("[DBOptions]")
            .nth(1)
            .and_then(|s| s.split("[CFOptions").next())
            .unwrap_or_else(|| panic!("no DBOptions in {newest}"));
        assert!(
            db_options.contains("atomic_flush=true"),
            "{newest}: {db_options}"
        );
        drop(engine);
    }

    /// RocksDB records the options in force in its newest OPTIONS file:
    /// every column family has the delay, after a first open and a reopen.
    #[test]
    fn last_level_rewrites_wait_for_the_delay_in_every_column_family() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        for _ in 0..2 {
            let engine = Engine::open(&path).unwrap();
            let (newest, text) = newest_options(&path);
            let want = format!("bottommost_file_compaction_delay={BOTTOMMOST_REWRITE_DELAY_SECS}");
            for name in ALL_CFS {
                let section = text
                    .split("[CFOptions \"")
                    .find(|s| s.starts_with(&format!("{name}\"")))
                    .unwrap_or_else(|| panic!("no section for {name} in {newest}"));
                let section = section.split("[TableOptions").next().unwrap();
                assert!(section.contains(&want), "{name} in {newest}: {section}");
            }
            drop(engine);
        }
    }

    #[test]
    fn stats_report_memtables_l0_files_and_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path().join("db")).unwrap();
        let before = engine.stats();
        assert_eq!(before.write_stall, Duration::ZERO);
        assert!(!before.write_stopped);
        assert_eq!(before.delayed_write_rate, 0);
        let l0 = |s: &EngineStats| {
            s.l0_files
                .iter()
                .find(|(cf, _)| *cf == CF_DATA)
                .map(|(_, n)| *n)
                .expect("the data family is reported")
        };
        assert_eq!(l0(&before), 0);
        assert_eq!(before.l0_files.len(), ALL_CFS.len());
        for round in 0..2u32 {
            let mut batch = engine.apply_batch();
            for i in 0..256u32 {
                batch.put(&(round * 1000 + i).to_be_bytes(), &[7u8; 512]);
            }
            batch.commit().unwrap();
            let s = engine.stats();
            assert!(
                s.memtable_bytes >= 256 * 512,
                "{} bytes in memtables after writing 128 KiB",
                s.memtable_bytes
            );
            engine.db().flush_cf(engine.cf(CF_DATA)).unwrap();
            assert_eq!(l0(&engine.stats()), u64::from(round) + 1);
        }
        assert_eq!(
            engine.get(&5u32.to_be_bytes()).unwrap(),
            Some(vec![7u8; 512])
        );
        assert!(engine.stats().block_cache_bytes > 0);
    }

    #[test]
    fn a_weak_engine_does_not_hold_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let engine = Engine::open(&path).unwrap();
        let weak = engine.downgrade();
        assert!(weak.upgrade().is_some());
        assert_eq!(engine.handle_count(), 1, "a weak handle is not counted");
        drop(engine);
        assert!(weak.upgrade().is_none());
        Engine::open(&path).expect("the directory was released");
    }

    thread_local! {
        /// Makes `create` fail between creating the database and writing its
        /// format version, as a crash there would.
        pub(super) static CRASH_AFTER_CREATE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A first start interrupted between creating the database and writing
    /// its format version must not leave a directory refused forever as
    /// "not Ravel": the next start creates it afresh.
    #[test]
    fn an_interrupted_first_start_does_not_brick_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        CRASH_AFTER_CREATE.with(|c| c.set(true));
        let err = Engine::open(&path).unwrap_err();
        CRASH_AFTER_CREATE.with(|c| c.set(false));
        assert!(err.to_string().contains("crash after creating"), "{err}");
        let e = Engine::open(&path).expect("the next start succeeds");
        let mut b = e.apply_batch();
        b.put(b"k", b"v");
        b.commit().unwrap();
        drop(e);
        let e = Engine::open_existing(&path).unwrap();
        assert_eq!(e.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        // Nothing is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("db")]);
    }

    #[test]
    fn missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope");
        let err = Engine::open_existing(&path).unwrap_err();
        assert!(matches!(err, StorageError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn second_open_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _first = Engine::open(&path).unwrap();
        let err = Engine::open(&path).unwrap_err();
        assert!(matches!(err, StorageError::Locked { .. }), "{err}");
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    }

    #[test]
    fn other_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Engine::open(&path)
            .unwrap()
            .put_raft_meta("format_version", &99u32.to_be_bytes())
            .unwrap();
        let err = Engine::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::FormatVersion {
                    found: 99,
                    expected: FORMAT_VERSION,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn foreign_directory_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let err = Engine::open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::NotRavel { .. }), "{err}");
        assert!(dir.path().join("notes.txt").exists());
    }

    #[test]
    fn corrupt_manifest_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let e = Engine::open(&path).unwrap();
            e.put_raft_meta("vote", b"x").unwrap();
        }
        let manifest = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("MANIFEST-")
            })
            .unwrap();
        let len = std::fs::metadata(&manifest).unwrap().len() as usize;
        std::fs::write(&manifest, vec![0xA5u8; len.max(64)]).unwrap();
        let err = Engine::open(&path).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }
}
