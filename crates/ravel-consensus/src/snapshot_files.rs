//! Snapshots as files: where they live, how they are named (the newest
//! sorts last), building one from a consistent view of the database,
//! installing a received one, and keeping a complete one under its final
//! name.
//!
//! One lock serialises everything that touches the directory or replaces
//! the state machine: a build (which runs on its own task) never sees a
//! half-installed state machine, and an install never prunes the file a
//! build or a reader is about to open. Files are opened under the lock, so
//! a later prune (unlink) cannot take them away.

use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use ravel_storage::Engine;

use crate::codec;
use crate::state_machine::{invalid, LAST_APPLIED, MEMBERSHIP};
use crate::types::{LogId, SnapshotMeta, StoredMembership};

const SNAPSHOT_SUFFIX: &str = ".snap";

/// Size of one write batch when installing a snapshot: what an install
/// holds in memory at once, whatever the snapshot's size.
pub(crate) const INSTALL_BATCH_BYTES: usize = 8 << 20;

/// Where snapshot files live and how they are chunked.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotDir {
    pub(crate) dir: PathBuf,
    pub(crate) chunk_bytes: usize,
    pub(crate) install_batch_bytes: usize,
    lock: Arc<Mutex<()>>,
    /// Told of each snapshot built or installed.
    pub(crate) observer: crate::observe::StorageObserver,
}

fn storage_err(e: ravel_storage::StorageError) -> std::io::Error {
    std::io::Error::other(e)
}

pub(crate) fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}")
}

impl SnapshotDir {
    pub(crate) fn new(dir: PathBuf, chunk_bytes: usize) -> Self {
        Self {
            dir,
            chunk_bytes: chunk_bytes.max(1),
            install_batch_bytes: INSTALL_BATCH_BYTES,
            lock: Arc::new(Mutex::new(())),
            observer: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn final_path(&self, meta: &SnapshotMeta) -> PathBuf {
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        // Zero-padded index first: lexical order is snapshot age.
        self.dir.join(format!(
            "snapshot-{index:020}-{}{SNAPSHOT_SUFFIX}",
            meta.snapshot_id
        ))
    }

    /// Exports a consistent snapshot into a new file, durably; the file is
    /// returned open.
    pub(crate) fn build(
        &self,
        engine: &Engine,
    ) -> std::io::Result<(SnapshotMeta, PathBuf, std::fs::File)> {
        let _serial = self.lock();
        let tmp = self.dir.join(format!("building-{}.part", unique()));
        let file = std::fs::File::create(&tmp)?;
        let mut meta_out = None;
        let mut writer = BufWriter::new(file);
        engine
            .export_snapshot(&mut writer, self.chunk_bytes, |sm_meta| {
                let meta = snapshot_meta(sm_meta);
                let header = match &meta {
                    Ok(m) => codec::encode(m).unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                meta_out = Some(meta);
                header
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let meta = meta_out.expect("export calls the header function")?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let path = self.keep(&tmp, &meta)?;
        let file = std::fs::File::open(&path)?;
        Ok((meta, path, file))
    }

    /// Installs the received snapshot file `from` as the whole state
    /// machine, after checking all of it against what openraft announced:
    /// keeps it under its final name (the state machine's source from now
    /// on), then imports it in bounded batches. A crash during the import is
    /// redone from the kept file by [`SnapshotDir::redo_pending_install`].
    pub(crate) fn install(
        &self,
        engine: &Engine,
        from: &Path,
        expected: &SnapshotMeta,
    ) -> std::io::Result<()> {
        let _serial = self.lock();
        let (header, size) = ravel_storage::verify_snapshot_file(from).map_err(storage_err)?;
        let got: SnapshotMeta = codec::decode(&header).map_err(|e| invalid(e.to_string()))?;
        if got.last_log_id != expected.last_log_id || got.snapshot_id != expected.snapshot_id {
            return Err(invalid(format!(
                "snapshot file holds {got:?}, openraft announced {expected:?}"
            )));
        }
        let path = self.keep(from, expected)?;
        self.import(engine, &path, size.bytes)
    }

    fn import(&self, engine: &Engine, path: &Path, total: u64) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let mut logged = started;
        let (_, stats) = engine
            .import_snapshot_file(path, self.install_batch_bytes, |so_far| {
                if logged.elapsed() >= std::time::Duration::from_secs(5) {
                    logged = std::time::Instant::now();
                    tracing::info!(bytes = so_far.bytes, of = total, "installing snapshot");
                }
                Ok(())
            })
            .map_err(storage_err)?;
        tracing::info!(
            bytes = stats.bytes,
            entries = stats.entries,
            batches = stats.batches,
            took = ?started.elapsed(),
            "installed snapshot"
        );
        Ok(())
    }

    /// Finishes an install that a crash interrupted: the state machine is
    /// partial until it is redone from the kept snapshot file.
    pub(crate) fn redo_pending_install(&self, engine: &Engine) -> std::io::Result<()> {
        let _serial = self.lock();
        let Some(path) = engine.pending_import().map_err(storage_err)? else {
            return Ok(());
        };
        if !path.is_file() {
            return Err(invalid(format!(
                "an interrupted snapshot install needs {}, which is gone: the state machine \
                 in {} is partial; remove the data directory and let the replica rejoin",
                path.display(),
                engine.path().display()
            )));
        }
        tracing::warn!(snapshot = %path.display(), "redoing an interrupted snapshot install");
        let size = std::fs::metadata(&path)?.len();
        self.import(engine, &path, size)
    }

    /// Moves a complete snapshot file to its final name, durably, and removes
    /// older snapshots; the final path. Called with the lock held.
    fn keep(&self, from: &Path, meta: &SnapshotMeta) -> std::io::Result<PathBuf> {
        let to = self.final_path(meta);
        std::fs::rename(from, &to)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path != to && path.extension().and_then(|e| e.to_str()) == Some("snap") && path < to
            {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(to)
    }

    /// The newest complete snapshot file, open, and its metadata.
    pub(crate) fn newest(&self) -> std::io::Result<Option<(SnapshotMeta, PathBuf, std::fs::File)>> {
        let _serial = self.lock();
        let mut snaps: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("snap"))
            .collect();
        snaps.sort();
        let Some(path) = snaps.pop() else {
            return Ok(None);
        };
        let file = std::fs::File::open(&path)?;
        let header = ravel_storage::read_snapshot_header(BufReader::new(&file))
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        let meta =
            codec::decode(&header).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        Ok(Some((meta, path, file)))
    }
}

/// The snapshot metadata for a state machine whose metadata column family
/// holds `sm_meta`.
fn snapshot_meta(sm_meta: &[(String, Vec<u8>)]) -> std::io::Result<SnapshotMeta> {
    let mut last_log_id = None;
    let mut last_membership = StoredMembership::default();
    for (k, v) in sm_meta {
        match k.as_str() {
            LAST_APPLIED => {
                last_log_id =
                    codec::decode::<Option<LogId>>(v).map_err(|e| invalid(e.to_string()))?
            }
            MEMBERSHIP => last_membership = codec::decode(v).map_err(|e| invalid(e.to_string()))?,
            _ => {}
        }
    }
    let snapshot_id = match last_log_id {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, unique()),
        None => format!("0-0-{}", unique()),
    };
    Ok(SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id,
    })
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::state_machine::StateMachine;
    use crate::types::{Command, Entry};

    /// A state machine in `dir/name` holding `n` keys `{prefix}{i}`, applied
    /// up to log index `n`.
    async fn filled(dir: &Path, name: &str, prefix: &str, n: u64) -> StateMachine {
        let engine = Engine::open(dir.join(name)).unwrap();
        let mut sm = StateMachine::open(engine, dir.join(format!("{name}-snap")), 4096).unwrap();
        let entries: Vec<Entry> = (1..=n)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(Command::Set {
                    key: format!("{prefix}{i:05}").into_bytes(),
                    value: vec![b'v'; 200],
                }),
            })
            .collect();
        sm.apply(entries).await.unwrap();
        sm
    }

    /// What a snapshot file holds: (last applied index, every key).
    fn contents(dir: &Path, path: &Path) -> (Option<u64>, Vec<Vec<u8>>) {
        let probe = Engine::open(dir.join(format!("probe-{}", unique()))).unwrap();
        let (header, _) = probe
            .import_snapshot_file(path, 1 << 20, |_| Ok(()))
            .unwrap();
        let meta: SnapshotMeta = codec::decode(&header).unwrap();
        let keys = probe
            .scan(b"", usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        (meta.last_log_id.map(|l| l.index), keys)
    }

    /// A snapshot built while an install is replacing the state machine
    /// (in small batches) holds the old state or the new one, never a mix:
    /// the directory lock serialises the two. Without it, a build started
    /// mid-install exported some of the new keys under either header.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_build_during_an_install_sees_the_old_or_the_new_state() {
        let dir = tempfile::tempdir().unwrap();
        let src = filled(dir.path(), "src", "new", 3000).await;
        let (meta, built, _) = src.snapshots.build(src.engine()).unwrap();
        let dst = filled(dir.path(), "dst", "old", 500).await;
        let mut snapshots = dst.snapshots.clone();
        snapshots.install_batch_bytes = 4096;
        let incoming = snapshots.dir.join("incoming-test.part");
        std::fs::copy(&built, &incoming).unwrap();

        let engine = dst.engine().clone();
        let installer = {
            let (snapshots, engine) = (snapshots.clone(), engine.clone());
            std::thread::spawn(move || snapshots.install(&engine, &incoming, &meta))
        };
        let mut seen = Vec::new();
        loop {
            let finished = installer.is_finished();
            // Read through the open handle: a later install may prune the
            // file by name.
            let (_, _, mut file) = snapshots.build(&engine).unwrap();
            let copy = dir.path().join(format!("copy-{}", seen.len()));
            std::io::copy(&mut file, &mut std::fs::File::create(&copy).unwrap()).unwrap();
            seen.push(contents(dir.path(), &copy));
            if finished {
                break;
            }
        }
        installer.join().unwrap().unwrap();
        let new_keys: Vec<Vec<u8>> = (1..=3000u64)
            .map(|i| format!("new{i:05}").into_bytes())
            .collect();
        let old_keys: Vec<Vec<u8>> = (1..=500u64)
            .map(|i| format!("old{i:05}").into_bytes())
            .collect();
        for (i, (applied, keys)) in seen.iter().enumerate() {
            let whole = (*applied == Some(3000) && *keys == new_keys)
                || (*applied == Some(500) && *keys == old_keys);
            assert!(
                whole,
                "build {i} saw applied {applied:?} with {} keys",
                keys.len()
            );
        }
        assert_eq!(seen.last().unwrap().0, Some(3000), "{} builds", seen.len());
        // The newest snapshot is readable and is the installed one.
        let (newest, _, _) = snapshots.newest().unwrap().unwrap();
        assert_eq!(newest.last_log_id.map(|l| l.index), Some(3000));
    }

    /// A crash in the middle of an install: reopening the state machine
    /// redoes the install from the kept file before anything reads it.
    #[tokio::test]
    async fn reopening_redoes_an_interrupted_install() {
        let dir = tempfile::tempdir().unwrap();
        let src = filled(dir.path(), "src", "new", 2000).await;
        let (meta, built, _) = src.snapshots.build(src.engine()).unwrap();
        let dst = filled(dir.path(), "dst", "old", 100).await;
        // What the install does up to the crash: keep, then import part of it.
        let kept = {
            let _serial = dst.snapshots.lock();
            dst.snapshots.keep(&built, &meta).unwrap()
        };
        let mut batches = 0;
        dst.engine()
            .import_snapshot_file(&kept, 4096, |_| {
                batches += 1;
                if batches > 3 {
                    Err(ravel_storage::StorageError::Snapshot("crash".into()))
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        let engine_dir = dst.engine().path().to_path_buf();
        let snap_dir = dst.snapshots.dir.clone();
        drop(dst);

        let mut sm =
            StateMachine::open(Engine::open(&engine_dir).unwrap(), snap_dir, 4096).unwrap();
        assert_eq!(sm.engine().pending_import().unwrap(), None);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2000));
        assert_eq!(sm.engine().scan(b"", usize::MAX).unwrap().len(), 2000);
        assert_eq!(sm.engine().get(b"old00001").unwrap(), None);
    }

    /// After a crash the committed hint (not synced) can lag the newest
    /// snapshot (synced); openraft then refuses to start ("snapshot last
    /// log id <= committed" fails). Seen in the chaos test: a follower
    /// SIGKILLed just after building a snapshot never started again.
    /// Opening the data directory raises the hint to the snapshot.
    #[tokio::test]
    async fn reopening_raises_a_committed_hint_that_lags_the_snapshot() {
        use openraft::storage::RaftLogStorage;
        let dir = tempfile::tempdir().unwrap();
        let data = crate::DataDir::new(dir.path());
        {
            let (mut log, mut sm) = data.open(4096).unwrap();
            let entries: Vec<Entry> = (1..=10)
                .map(|i| Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                    payload: EntryPayload::Blank,
                })
                .collect();
            sm.apply(entries).await.unwrap();
            sm.snapshots.build(sm.engine()).unwrap();
            // The last hint that reached the disk before the crash.
            log.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 8)))
                .await
                .unwrap();
        }
        let (mut log, _sm) = data.open(4096).unwrap();
        let committed = log.read_committed().await.unwrap();
        assert_eq!(committed.map(|l| l.index), Some(10));
    }

    /// A transfer that fails before the install leaves no partial file.
    #[tokio::test]
    async fn an_abandoned_transfer_deletes_its_partial_file() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let mut sm = filled(dir.path(), "sm", "k", 1).await;
        let mut incoming = sm.begin_receiving_snapshot().await.unwrap();
        incoming.write_all(b"half a snapshot").await.unwrap();
        let path = incoming.path().to_path_buf();
        assert!(path.is_file());
        drop(incoming);
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
