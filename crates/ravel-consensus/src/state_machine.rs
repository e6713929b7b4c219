//! `RaftStateMachine` over ravel-storage: applying entries, taking and installing snapshots.
//!
//! Applying a batch of entries is one RocksDB `WriteBatch`: the data, the
//! last applied log id and the membership change together or not at all.
//! A snapshot is a pinned, consistent view of the state machine (see
//! `snapshot_files.rs`): taking one copies nothing, and its stream is
//! exported only when a peer needs it.

use std::path::PathBuf;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use ravel_storage::Engine;

use crate::apply::Applier;
use crate::codec;
use crate::log_store::blocking;
use crate::recent::RecentEntries;
use crate::snapshot_files::{unique, SnapshotDir};
use crate::types::{
    CommandResult, Entry, LogId, RaftStorageError, SnapshotData, SnapshotMeta, StoredMembership,
    TypeConfig,
};

pub(crate) const LAST_APPLIED: &str = "last_applied";
pub(crate) const MEMBERSHIP: &str = "membership";

/// Default size of one snapshot chunk on disk and on the wire.
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// The replicated key-value state machine of one replica.
#[derive(Debug)]
pub struct StateMachine {
    engine: Engine,
    pub(crate) snapshots: SnapshotDir,
    /// The log's in-memory entries, told what was applied (they are not
    /// read again, but by a lagging follower's replication).
    recent: Option<RecentEntries>,
}

/// Builds snapshots for openraft; shares the database with the state machine.
#[derive(Debug, Clone)]
pub struct SnapshotBuilder {
    engine: Engine,
    snapshots: SnapshotDir,
}

fn sm_read_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::write_state_machine(&e).into()
}

pub(crate) fn snap_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

pub(crate) fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

impl StateMachine {
    /// Opens the state machine over `engine`, receiving snapshots in
    /// `snapshot_dir` (created if needed; leftovers of transfers and older
    /// versions' snapshot files are removed, an interrupted install is
    /// redone).
    pub fn open(
        engine: Engine,
        snapshot_dir: impl Into<PathBuf>,
        chunk_bytes: usize,
    ) -> std::io::Result<Self> {
        let dir = snapshot_dir.into();
        std::fs::create_dir_all(&dir)?;
        let snapshots = SnapshotDir::new(dir, chunk_bytes);
        snapshots.clean(&engine)?;
        snapshots.redo_pending_install(&engine)?;
        Ok(Self {
            engine,
            snapshots,
            recent: None,
        })
    }

    /// Tells `recent` (the log store's in-memory entries) what is applied.
    pub fn with_recent(mut self, recent: RecentEntries) -> Self {
        self.recent = Some(recent);
        self
    }

    /// The database behind this state machine, for local reads.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        let last_applied = match self.engine.sm_meta(LAST_APPLIED).map_err(sm_read_err)? {
            Some(raw) => codec::decode::<Option<LogId>>(&raw).map_err(sm_read_err)?,
            None => None,
        };
        let membership = match self.engine.sm_meta(MEMBERSHIP).map_err(sm_read_err)? {
            Some(raw) => codec::decode(&raw).map_err(sm_read_err)?,
            None => StoredMembership::default(),
        };
        Ok((last_applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applier = Applier::new(&self.engine);
        let mut results = Vec::new();
        let mut last = None;
        let mut membership = None;
        for entry in entries {
            last = Some(entry.log_id);
            results.push(match entry.payload {
                EntryPayload::Blank => CommandResult::Done,
                EntryPayload::Normal(cmd) => applier.execute(cmd)?,
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    CommandResult::Done
                }
            });
        }
        if let Some(last) = last {
            applier.put_meta(
                LAST_APPLIED.to_string(),
                codec::encode(&Some(last)).map_err(sm_write_err)?,
            );
            if let Some(m) = membership {
                applier.put_meta(
                    MEMBERSHIP.to_string(),
                    codec::encode(&m).map_err(sm_write_err)?,
                );
            }
            crate::failpoints::hit("apply", self.engine.path()).map_err(sm_write_err)?;
            applier.commit().map_err(sm_write_err)?;
            if let Some(recent) = &self.recent {
                recent.forget_upto(last.index);
            }
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            engine: self.engine.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, RaftStorageError> {
        let path = self
            .snapshots
            .dir
            .join(format!("incoming-{}.part", unique()));
        let file = tokio::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(SnapshotData::incoming(file, path)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), RaftStorageError> {
        crate::failpoints::hit("snapshot_install", self.engine.path()).map_err(snap_err)?;
        let engine = self.engine.clone();
        let snapshots = self.snapshots.clone();
        let expected = meta.clone();
        let incoming = match snapshot.into_incoming() {
            // Waits for any write still in flight on the tokio file.
            Ok((file, path)) => Ok((file.into_std().await, path)),
            Err(view) => Err(view),
        };
        blocking(move || {
            let started = std::time::Instant::now();
            let path = match incoming {
                Ok((file, path)) => {
                    if let Err(e) = file.sync_all() {
                        let _ = std::fs::remove_file(&path);
                        return Err(snap_err(e));
                    }
                    path
                }
                // A view handed over in process: written out first (a failed
                // write-out removes its own file).
                Err(view) => snapshots.write_out(view).map_err(snap_err)?,
            };
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let res = snapshots.install(&engine, &path, &expected);
            if res.is_ok() {
                snapshots
                    .observer
                    .report(|e| e.snapshot_installed(bytes, started.elapsed()));
            }
            if res.is_err() && path.exists() {
                // Not kept: a received file that failed its checks.
                let _ = std::fs::remove_file(&path);
            }
            res.map_err(snap_err)
        })
        .await
    }

    /// The state machine as applied, pinned: a snapshot costs nothing
    /// until a peer needs its stream.
    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let snapshots = self.snapshots.clone();
        let engine = self.engine.clone();
        let pinned = blocking(move || {
            snapshots
                .pin(&engine)
                .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
        })
        .await?;
        let (meta, data) = pinned;
        // Nothing applied yet: no snapshot.
        Ok(meta.last_log_id.is_some().then(|| Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Takes a snapshot: pins the state machine as applied. Nothing is
    /// copied. openraft then purges the log behind it, which is safe
    /// because a purge first flushes the state machine (`Engine::purge_log`):
    /// the state the snapshot stands for is durable by then. That flush
    /// runs on openraft's core task, which sends no heartbeat meanwhile, so
    /// the state machine is flushed here first, on this task of its own
    /// (openraft spawns it): the purge's flush then has only the applies
    /// since to write.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        crate::failpoints::hit("snapshot_build", self.engine.path()).map_err(snap_err)?;
        let engine = self.engine.clone();
        let snapshots = self.snapshots.clone();
        let started = std::time::Instant::now();
        let observer = self.snapshots.observer.clone();
        let (meta, data) = blocking(move || {
            let pinned = snapshots.pin(&engine).map_err(snap_err)?;
            engine.persist_state_machine().map_err(snap_err)?;
            Ok(pinned)
        })
        .await?;
        observer.report(|e| e.snapshot_built(started.elapsed()));
        tracing::info!(snapshot = %meta.snapshot_id, last = ?meta.last_log_id, "took snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;
    use crate::types::Command;

    fn entry(index: u64, cmd: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    /// Both forms of the conditional delete: by value (earlier versions'
    /// logs) and by digest (what nodes propose now).
    #[tokio::test]
    async fn conditional_commands_see_earlier_commands_of_the_same_batch() {
        let by_value = |v: &[u8]| Command::DeleteIfEqual {
            key: b"k".to_vec(),
            value: v.to_vec(),
        };
        let by_digest = |v: &[u8]| Command::delete_if_equal(b"k".to_vec(), v);
        conditional_commands_in_one_batch(by_value).await;
        conditional_commands_in_one_batch(by_digest).await;
    }

    async fn conditional_commands_in_one_batch(del: impl Fn(&[u8]) -> Command) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path().join("db")).unwrap();
        let mut sm = StateMachine::open(engine, dir.path().join("snap"), 1024).unwrap();
        let set = |v: &[u8]| Command::SetIfAbsent {
            key: b"k".to_vec(),
            value: v.to_vec(),
        };
        let results = sm
            .apply([entry(
                1,
                Command::Batch(vec![set(b"a"), set(b"b"), del(b"b"), del(b"a"), set(b"c")]),
            )])
            .await
            .unwrap();
        use CommandResult::Applied;
        assert_eq!(
            results,
            vec![CommandResult::Batch(vec![
                Applied(true),
                Applied(false),
                Applied(false),
                Applied(true),
                Applied(true)
            ])]
        );
        assert_eq!(sm.engine().get(b"k").unwrap().as_deref(), Some(&b"c"[..]));
        let r = sm
            .apply([entry(2, del(b"")), entry(3, del(b"c")), entry(4, del(b"c"))])
            .await
            .unwrap();
        assert_eq!(r, vec![Applied(false), Applied(true), Applied(false)]);
        assert_eq!(sm.engine().get(b"k").unwrap(), None);
    }

    /// Writes routed by a ring generation older than the fence are refused
    /// without effect, in log order (even within one batch); the fence never
    /// goes down, and survives a reopen (it is state-machine metadata, so
    /// snapshots carry it too).
    #[tokio::test]
    async fn the_ring_fence_refuses_older_generations_in_log_order() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path().join("db")).unwrap();
        let mut sm = StateMachine::open(engine, dir.path().join("snap"), 1024).unwrap();
        let set = |epoch: u64, v: &[u8]| Command::Fenced {
            epoch,
            cmd: Box::new(Command::Set {
                key: b"k".to_vec(),
                value: v.to_vec(),
            }),
        };
        let r = sm
            .apply([entry(
                1,
                Command::Batch(vec![
                    set(1, b"before"),
                    Command::Fence { epoch: 5 },
                    set(4, b"late"),
                    set(5, b"current"),
                    Command::Fence { epoch: 3 },
                    set(4, b"late again"),
                ]),
            )])
            .await
            .unwrap();
        use CommandResult::{Done, Fenced};
        assert_eq!(
            r,
            vec![CommandResult::Batch(vec![
                Done,
                Done,
                Fenced { fence: 5 },
                Done,
                Done,
                Fenced { fence: 5 },
            ])]
        );
        assert_eq!(
            sm.engine().get(b"k").unwrap().as_deref(),
            Some(&b"current"[..])
        );
        drop(sm);
        let engine = Engine::open(dir.path().join("db")).unwrap();
        let mut sm = StateMachine::open(engine, dir.path().join("snap"), 1024).unwrap();
        let r = sm.apply([entry(2, set(4, b"after reopen"))]).await.unwrap();
        assert_eq!(r, vec![Fenced { fence: 5 }]);
        // Writes without a generation (existing admins) are not fenced.
        let r = sm
            .apply([entry(
                3,
                Command::Set {
                    key: b"k".to_vec(),
                    value: b"unfenced".to_vec(),
                },
            )])
            .await
            .unwrap();
        assert_eq!(r, vec![Done]);
    }
}
