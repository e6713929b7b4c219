//! Snapshots: taking one (a pinned, consistent view of the database: no
//! copy), and installing a received one from a file that is deleted once
//! its import is complete.
//!
//! A replica keeps no snapshot files at rest: the state machine itself is
//! the snapshot, and a view of it is streamed when a peer needs it. The
//! only files here are transfers being received and the file of an import
//! under way (kept until the import is complete, so a crash can redo it).
//!
//! One lock serialises taking views and installs: a view never sees a
//! half-installed state machine.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use ravel_storage::Engine;

use crate::codec;
use crate::state_machine::{invalid, LAST_APPLIED, MEMBERSHIP};
use crate::types::{LogId, SnapshotData, SnapshotMeta, StoredMembership};

const SNAPSHOT_SUFFIX: &str = ".snap";

/// Size of one write batch when installing a snapshot: what an install
/// holds in memory at once, whatever the snapshot's size.
pub(crate) const INSTALL_BATCH_BYTES: usize = 8 << 20;

/// Where received snapshots live and how snapshot streams are chunked.
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

    /// Removes what an earlier run left: partial transfers, and snapshot
    /// files of older versions (which kept one at rest). The file of an
    /// interrupted install stays: [`SnapshotDir::redo_pending_install`]
    /// needs it.
    pub(crate) fn clean(&self, engine: &Engine) -> std::io::Result<()> {
        let _serial = self.lock();
        // By name, as the redo finds it. Files only: whatever else is here
        // (a file system's `lost+found`) is not ours.
        let pending = engine.pending_import().map_err(storage_err)?;
        let keep = pending.as_deref().and_then(Path::file_name);
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() && Some(entry.file_name().as_os_str()) != keep {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Takes a snapshot: pins a consistent view of the state machine and
    /// reads its metadata from the same view (no last log id before
    /// anything was applied).
    pub(crate) fn pin(&self, engine: &Engine) -> std::io::Result<(SnapshotMeta, SnapshotData)> {
        let view = {
            let _serial = self.lock();
            engine.pin_view().map_err(storage_err)?
        };
        let meta = snapshot_meta(view.sm_meta())?;
        let header = codec::encode(&meta).map_err(|e| invalid(e.to_string()))?;
        let data = SnapshotData::view(view, header, self.chunk_bytes, self.observer.clone());
        Ok((meta, data))
    }

    /// Writes a view out to a new file here, to be installed (a snapshot
    /// handed over in process, as openraft's test suite does); its path.
    pub(crate) fn write_out(&self, data: SnapshotData) -> std::io::Result<PathBuf> {
        let path = self.dir.join(format!("local-{}.part", unique()));
        let file = std::fs::File::create(&path)?;
        let res = data
            .export(BufWriter::new(file))
            .and_then(|(w, _)| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all());
        if let Err(e) = res {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    /// Installs the received snapshot file `from` as the whole state
    /// machine, after checking all of it against what openraft announced:
    /// keeps it under its final name, imports it in bounded batches, then
    /// deletes it. A crash during the import is redone from the kept file
    /// by [`SnapshotDir::redo_pending_install`].
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
        self.import(engine, &path, size.bytes)?;
        Self::discard(&path);
        Ok(())
    }

    /// Deletes the file of a complete import: the state machine holds it
    /// all now. A file left by a failed delete goes at the next open.
    fn discard(path: &Path) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "removing an installed snapshot file");
        }
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
        let Some(recorded) = engine.pending_import().map_err(storage_err)? else {
            return Ok(());
        };
        // Kept here under its name (`keep`): the recorded path may name
        // this directory another way, or where it was before a move.
        let path = match recorded.file_name() {
            Some(name) => self.dir.join(name),
            None => recorded,
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
        self.import(engine, &path, size)?;
        Self::discard(&path);
        Ok(())
    }

    /// Moves a complete snapshot file to its final name, durably; the final
    /// path. Called with the lock held.
    fn keep(&self, from: &Path, meta: &SnapshotMeta) -> std::io::Result<PathBuf> {
        let to = self.final_path(meta);
        std::fs::rename(from, &to)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(to)
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
    // Two views with the same last log id hold the same state: the id
    // names the state, not the moment it was taken.
    let snapshot_id = match last_log_id {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "0-0-0".to_string(),
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

    /// Takes a snapshot of `sm` and writes its stream to a file in `dir`.
    fn export(dir: &Path, sm: &StateMachine) -> (SnapshotMeta, PathBuf) {
        let (meta, data) = sm.snapshots.pin(sm.engine()).unwrap();
        let path = dir.join(format!("export-{}", unique()));
        let (out, _) = data.export(std::fs::File::create(&path).unwrap()).unwrap();
        out.sync_all().unwrap();
        (meta, path)
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

    /// A snapshot taken while an install is replacing the state machine
    /// (in small batches) holds the old state or the new one, never a mix:
    /// the directory lock serialises the two. Without it, a view pinned
    /// mid-install exported some of the new keys under either header.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_during_an_install_sees_the_old_or_the_new_state() {
        let dir = tempfile::tempdir().unwrap();
        let src = filled(dir.path(), "src", "new", 3000).await;
        let (meta, built) = export(dir.path(), &src);
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
            let (_, data) = snapshots.pin(&engine).unwrap();
            let copy = dir.path().join(format!("copy-{}", seen.len()));
            data.export(std::fs::File::create(&copy).unwrap()).unwrap();
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
                "snapshot {i} saw applied {applied:?} with {} keys",
                keys.len()
            );
        }
        assert_eq!(
            seen.last().unwrap().0,
            Some(3000),
            "{} snapshots",
            seen.len()
        );
        // Installed: the received file is gone, the state machine holds it.
        let left: Vec<_> = std::fs::read_dir(&snapshots.dir).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// A crash in the middle of an install: reopening the state machine
    /// redoes the install from the kept file before anything reads it,
    /// then deletes the file, even when the directory moved since; other
    /// leftovers (an older version's snapshot file, a partial transfer) are
    /// deleted at once, and what is not a file is left alone.
    #[tokio::test]
    async fn reopening_redoes_an_interrupted_install() {
        let dir = tempfile::tempdir().unwrap();
        let src = filled(dir.path(), "src", "new", 2000).await;
        let (meta, built) = export(dir.path(), &src);
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
        let stale = [
            snap_dir.join("snapshot-00000000000000000007-1-7-abc.snap"),
            snap_dir.join("incoming-abc.part"),
        ];
        for f in &stale {
            std::fs::write(f, b"left over").unwrap();
        }

        // The snapshot directory moved since the import recorded its file's
        // path: the file is found here by name.
        let moved = dir.path().join("moved-snap");
        std::fs::rename(&snap_dir, &moved).unwrap();
        let snap_dir = moved;
        std::fs::create_dir(snap_dir.join("lost+found")).unwrap();
        let mut sm =
            StateMachine::open(Engine::open(&engine_dir).unwrap(), &snap_dir, 4096).unwrap();
        assert_eq!(sm.engine().pending_import().unwrap(), None);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2000));
        assert_eq!(sm.engine().scan(b"", usize::MAX).unwrap().len(), 2000);
        assert_eq!(sm.engine().get(b"old00001").unwrap(), None);
        let left: Vec<_> = std::fs::read_dir(&snap_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lost+found"], "only what is not ours is left");
    }

    /// Taking a snapshot copies nothing: the snapshot directory stays empty,
    /// and the snapshot is the state machine as applied, the same whenever
    /// it is taken until the next apply.
    #[tokio::test]
    async fn taking_a_snapshot_copies_nothing() {
        use openraft::RaftSnapshotBuilder;
        let dir = tempfile::tempdir().unwrap();
        let mut sm = filled(dir.path(), "sm", "k", 50).await;
        assert!(sm.get_current_snapshot().await.unwrap().is_some());
        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(50));
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);
        let left: Vec<_> = std::fs::read_dir(&sm.snapshots.dir).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        // The export is the state as of the snapshot.
        let copy = dir.path().join("copy");
        current
            .snapshot
            .export(std::fs::File::create(&copy).unwrap())
            .unwrap();
        let (applied, keys) = contents(dir.path(), &copy);
        assert_eq!((applied, keys.len()), (Some(50), 50));
    }

    /// A transfer that fails before the install leaves no partial file.
    #[tokio::test]
    async fn an_abandoned_transfer_deletes_its_partial_file() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let mut sm = filled(dir.path(), "sm", "k", 1).await;
        let mut incoming = sm.begin_receiving_snapshot().await.unwrap();
        incoming.write_all(b"half a snapshot").await.unwrap();
        let path = incoming.path().unwrap().to_path_buf();
        assert!(path.is_file());
        drop(incoming);
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
