//! What a replicated command does to the state machine: the semantics of
//! every [`Command`], applied into one RocksDB batch per `apply` call.
//!
//! Reads go through an overlay of the batch's own writes, so a command sees
//! the effects of the commands before it in the same call (a `Batch` entry
//! holds many). Client sessions (exactly-once writes) are in
//! [`crate::sessions`].

use std::collections::HashMap;

use ravel_storage::{ApplyBatch, Engine};

use crate::sessions::Sessions;
use crate::types::{value_digest, Command, CommandResult, RaftStorageError};

/// One `apply` call's view of the state machine: the database, the batch
/// being filled, and what the batch has written so far.
pub(crate) struct Applier<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) batch: ApplyBatch<'a>,
    /// User keys written by this batch (`None`: deleted).
    data: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// State-machine metadata written by this batch (`None`: deleted).
    meta: HashMap<String, Option<Vec<u8>>>,
}

/// State-machine metadata: the ring fence (see [`Command::Fence`]). Kept
/// with the data, so snapshots carry it.
const FENCE: &str = "ring-fence";

pub(crate) fn read_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    openraft::StorageIOError::read_state_machine(&e).into()
}

pub(crate) fn write_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    openraft::StorageIOError::write_state_machine(&e).into()
}

impl<'a> Applier<'a> {
    pub(crate) fn new(engine: &'a Engine) -> Self {
        Self {
            engine,
            batch: engine.apply_batch(),
            data: HashMap::new(),
            meta: HashMap::new(),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RaftStorageError> {
        match self.data.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.engine.get(key).map_err(read_err),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.put(&key, &value);
        self.data.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.batch.delete(&key);
        self.data.insert(key, None);
    }

    /// Deletes every key of `partitions` of a `count`-partition ring: those
    /// in the database (by the storage layer), and those this batch wrote
    /// (not in the database yet), so the outcome does not depend on how
    /// entries were grouped into apply calls.
    fn delete_partitions(
        &mut self,
        count: u32,
        partitions: &[u32],
    ) -> Result<(), RaftStorageError> {
        if count == 0 {
            return Ok(()); // refused by the node before proposing; no partitions
        }
        self.batch
            .delete_partitions(count, partitions)
            .map_err(read_err)?;
        let wanted: std::collections::HashSet<u32> = partitions.iter().copied().collect();
        let written: Vec<Vec<u8>> = self
            .data
            .keys()
            .filter(|k| wanted.contains(&ravel_proto::partition_of(k, count)))
            .cloned()
            .collect();
        for key in written {
            self.delete(key);
        }
        Ok(())
    }

    /// A metadata value as this batch sees it.
    pub(crate) fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, RaftStorageError> {
        match self.meta.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.engine.sm_meta(key).map_err(read_err),
        }
    }

    /// Metadata changes are written into the batch once, at
    /// [`Applier::commit`], each key with its last value: a client session
    /// changes its state with every request, and a batch of writes from
    /// one session would otherwise put one version per request into the
    /// memtable and the WAL.
    pub(crate) fn put_meta(&mut self, key: String, value: Vec<u8>) {
        self.meta.insert(key, Some(value));
    }

    pub(crate) fn delete_meta(&mut self, key: String) {
        self.meta.insert(key, None);
    }

    /// Writes the batch (data and the metadata's final values) atomically.
    pub(crate) fn commit(self) -> ravel_storage::Result<()> {
        self.into_batch().commit()
    }

    fn into_batch(mut self) -> ApplyBatch<'a> {
        for (key, value) in &self.meta {
            match value {
                Some(v) => self.batch.put_meta(key, v),
                None => self.batch.delete_meta(key),
            }
        }
        self.batch
    }

    /// Metadata keys starting with `prefix`, as this batch sees them.
    pub(crate) fn meta_keys(&self, prefix: &str) -> Result<Vec<String>, RaftStorageError> {
        let mut keys: Vec<String> = self
            .engine
            .sm_meta_keys(prefix)
            .map_err(read_err)?
            .into_iter()
            .filter(|k| !matches!(self.meta.get(k), Some(None)))
            .collect();
        for (k, v) in &self.meta {
            if v.is_some() && k.starts_with(prefix) && !keys.contains(k) {
                keys.push(k.clone());
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// The generation below which writes are refused (0: never fenced).
    pub(crate) fn fence(&self) -> Result<u64, RaftStorageError> {
        match self.meta(FENCE)? {
            None => Ok(0),
            Some(raw) => crate::codec::decode(&raw).map_err(read_err),
        }
    }

    /// Applies one command and returns its result.
    pub(crate) fn execute(&mut self, cmd: Command) -> Result<CommandResult, RaftStorageError> {
        Ok(match cmd {
            Command::Set { key, value } => {
                self.put(key, value);
                CommandResult::Done
            }
            Command::Delete { key } => {
                self.delete(key);
                CommandResult::Done
            }
            Command::GetAndDelete { key } => {
                let current = self.get(&key)?;
                self.delete(key);
                CommandResult::Value(current)
            }
            Command::SetIfAbsent { key, value } => {
                let absent = self.get(&key)?.is_none();
                if absent {
                    self.put(key, value);
                }
                CommandResult::Applied(absent)
            }
            Command::DeleteIfEqual { key, value } => {
                let equal = self.get(&key)?.as_deref() == Some(value.as_slice());
                if equal {
                    self.delete(key);
                }
                CommandResult::Applied(equal)
            }
            Command::DeleteIfDigest { key, digest } => {
                let equal = self
                    .get(&key)?
                    .is_some_and(|current| value_digest(&current) == digest);
                if equal {
                    self.delete(key);
                }
                CommandResult::Applied(equal)
            }
            Command::DeletePartitions { count, partitions } => {
                self.delete_partitions(count, &partitions)?;
                CommandResult::Done
            }
            Command::Batch(cmds) => CommandResult::Batch(
                cmds.into_iter()
                    .map(|c| self.execute(c))
                    .collect::<Result<_, _>>()?,
            ),
            Command::Once { id, at_ms, cmd } => Sessions::execute_once(self, id, at_ms, *cmd)?,
            Command::Fenced { epoch, cmd } => {
                let fence = self.fence()?;
                if epoch < fence {
                    CommandResult::Fenced { fence }
                } else {
                    self.execute(*cmd)?
                }
            }
            Command::Fence { epoch } => {
                if epoch > self.fence()? {
                    let raw = crate::codec::encode(&epoch).map_err(write_err)?;
                    self.put_meta(FENCE.to_string(), raw);
                }
                CommandResult::Done
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RequestId;

    #[test]
    fn a_sessions_state_is_written_once_per_batch() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path().join("db")).unwrap();
        let mut a = Applier::new(&engine);
        let n = 20u64;
        for seq in 1..=n {
            let once = Command::Once {
                id: RequestId {
                    session: 7,
                    seq,
                    acked_below: 0,
                },
                at_ms: 1_000 + seq,
                cmd: Box::new(Command::Set {
                    key: format!("k{seq}").into_bytes(),
                    value: b"v".to_vec(),
                }),
            };
            assert_eq!(a.execute(once).unwrap(), CommandResult::Done);
        }
        // One put per data key and per recorded result; the session's
        // state and the log clock once each, though every request changed
        // them.
        assert_eq!(a.into_batch().len(), (2 * n + 2) as usize);
    }
}
