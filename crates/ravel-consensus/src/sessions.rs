//! Client sessions: exactly-once writes (the Raft dissertation, §6.3).
//!
//! A write whose outcome a client did not learn (a timeout, a leader that
//! died mid-request) may be retried, through another leader, while the
//! first attempt is still in some log. Without deduplication both could
//! apply: a `set` applied twice around another client's `set`, a `delete`
//! that removes someone else's newer value. So writes carry a
//! [`RequestId`]: a session (one client process's lifetime, random), a
//! sequence number per request, and the client's watermark (`acked_below`:
//! every lower sequence number has been answered or given up, and will
//! never be retried). The state machine records each session's results
//! until the watermark passes them, returns the recorded result for a
//! duplicate, and refuses a request below the watermark as stale (an
//! abandoned attempt that reached the log late never takes effect).
//!
//! All of it is state-machine metadata, changed in the same batch as the
//! data, included in snapshots, and a pure function of the log: sessions
//! idle for [`SESSION_TTL_MS`] of log time (the proposing leaders' clocks,
//! carried in each command) are forgotten at deterministic points, so every
//! replica forgets the same sessions at the same log index. Exactly-once
//! holds for retries within that time (the admin and nodes retry within a
//! request deadline of seconds).

use serde::{Deserialize, Serialize};

use crate::apply::{read_err, write_err, Applier};
use crate::codec;
use crate::types::{Command, CommandResult, RaftStorageError, RequestId};

/// A session idle this long (by log time) is forgotten.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// Expired sessions are looked for whenever log time crosses a multiple of
/// this.
const SWEEP_PERIOD_MS: u64 = 10_000;
/// Most results a session may have outstanding; a client with more
/// requests in flight is refused (it never needs that many).
pub const MAX_OUTSTANDING: usize = 10_000;

const SESSION_PREFIX: &str = "session/";
const RESULT_PREFIX: &str = "result/";
/// The largest command time applied so far: log time.
const CLOCK: &str = "sessions-clock";

/// What the state machine remembers of one client session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SessionState {
    /// Requests below this are answered or abandoned: refused if seen again.
    acked_below: u64,
    /// Log time of the session's last request.
    last_ms: u64,
    /// Sequence numbers whose results are recorded.
    outstanding: Vec<u64>,
}

fn session_key(session: u64) -> String {
    format!("{SESSION_PREFIX}{session:016x}")
}

fn result_key(session: u64, seq: u64) -> String {
    format!("{RESULT_PREFIX}{session:016x}/{seq:016x}")
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, RaftStorageError> {
    codec::decode(raw).map_err(read_err)
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RaftStorageError> {
    codec::encode(v).map_err(write_err)
}

/// Session bookkeeping over an [`Applier`].
pub(crate) struct Sessions;

impl Sessions {
    /// Applies `cmd` of request `id` proposed at `at_ms` exactly once.
    pub(crate) fn execute_once(
        a: &mut Applier<'_>,
        id: RequestId,
        at_ms: u64,
        cmd: Command,
    ) -> Result<CommandResult, RaftStorageError> {
        Self::advance_clock(a, at_ms)?;
        let skey = session_key(id.session);
        let mut state: SessionState = match a.meta(&skey)? {
            Some(raw) => decode(&raw)?,
            None => SessionState::default(),
        };
        if id.seq < state.acked_below {
            return Ok(CommandResult::Stale);
        }
        let rkey = result_key(id.session, id.seq);
        // A result is recorded exactly for the outstanding sequence numbers,
        // so only a retry reads one: a new request skips that lookup of an
        // absent key.
        let result = if state.outstanding.contains(&id.seq) {
            match a.meta(&rkey)? {
                // A retry of a request that already took effect.
                Some(raw) => decode(&raw)?,
                None => {
                    // Never happens. Not applying it again keeps it at
                    // most once.
                    tracing::warn!(
                        session = id.session,
                        seq = id.seq,
                        "an outstanding request has no recorded result; refused as stale"
                    );
                    CommandResult::Stale
                }
            }
        } else if state.outstanding.len() >= MAX_OUTSTANDING {
            CommandResult::Stale
        } else {
            let r = a.execute(cmd)?;
            a.put_meta(rkey, encode(&r)?);
            state.outstanding.push(id.seq);
            r
        };
        if id.acked_below > state.acked_below {
            state.acked_below = id.acked_below;
            let mut keep = Vec::with_capacity(state.outstanding.len());
            for seq in std::mem::take(&mut state.outstanding) {
                if seq < state.acked_below {
                    a.delete_meta(result_key(id.session, seq));
                } else {
                    keep.push(seq);
                }
            }
            state.outstanding = keep;
        }
        state.last_ms = state.last_ms.max(at_ms);
        a.put_meta(skey, encode(&state)?);
        Ok(result)
    }

    /// Moves log time forward to `at_ms`; when it crosses a sweep period,
    /// forgets sessions idle for [`SESSION_TTL_MS`].
    fn advance_clock(a: &mut Applier<'_>, at_ms: u64) -> Result<(), RaftStorageError> {
        let clock: u64 = match a.meta(CLOCK)? {
            Some(raw) => decode(&raw)?,
            None => 0,
        };
        if at_ms <= clock {
            return Ok(());
        }
        a.put_meta(CLOCK.to_string(), encode(&at_ms)?);
        if at_ms / SWEEP_PERIOD_MS == clock / SWEEP_PERIOD_MS {
            return Ok(());
        }
        let cutoff = at_ms.saturating_sub(SESSION_TTL_MS);
        for key in a.meta_keys(SESSION_PREFIX)? {
            let Some(raw) = a.meta(&key)? else { continue };
            let state: SessionState = decode(&raw)?;
            if state.last_ms >= cutoff {
                continue;
            }
            let session =
                u64::from_str_radix(&key[SESSION_PREFIX.len()..], 16).map_err(read_err)?;
            for seq in &state.outstanding {
                a.delete_meta(result_key(session, *seq));
            }
            a.delete_meta(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use ravel_storage::Engine;

    use super::*;
    use crate::types::Entry;
    use crate::StateMachine;

    struct Sm {
        sm: StateMachine,
        index: u64,
        _dir: tempfile::TempDir,
    }

    impl Sm {
        fn new() -> Sm {
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::open(dir.path().join("db")).unwrap();
            let sm = StateMachine::open(engine, dir.path().join("snap"), 1024).unwrap();
            Sm {
                sm,
                index: 0,
                _dir: dir,
            }
        }

        /// Applies each command in its own entry; their results.
        async fn apply(&mut self, cmds: Vec<Command>) -> Vec<CommandResult> {
            let entries: Vec<Entry> = cmds
                .into_iter()
                .map(|c| {
                    self.index += 1;
                    Entry {
                        log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
                        payload: EntryPayload::Normal(c),
                    }
                })
                .collect();
            self.sm.apply(entries).await.unwrap()
        }

        fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
            self.sm.engine().get(k).unwrap()
        }

        fn meta_keys(&self, prefix: &str) -> Vec<String> {
            self.sm.engine().sm_meta_keys(prefix).unwrap()
        }
    }

    fn once(session: u64, seq: u64, acked_below: u64, at_ms: u64, cmd: Command) -> Command {
        Command::Once {
            id: RequestId {
                session,
                seq,
                acked_below,
            },
            at_ms,
            cmd: Box::new(cmd),
        }
    }

    fn set(k: &str, v: &str) -> Command {
        Command::Set {
            key: k.into(),
            value: v.into(),
        }
    }

    #[tokio::test]
    async fn a_retry_returns_the_first_result_and_changes_nothing() {
        let mut sm = Sm::new();
        let take = |seq| {
            once(
                7,
                seq,
                1,
                1_000,
                Command::GetAndDelete { key: b"k".to_vec() },
            )
        };
        let r = sm
            .apply(vec![set("k", "v1"), take(1), set("k", "v2"), take(1)])
            .await;
        // The retry of request 1 answers what the first attempt removed,
        // and does not remove v2.
        assert_eq!(r[1], CommandResult::Value(Some(b"v1".to_vec())));
        assert_eq!(r[3], CommandResult::Value(Some(b"v1".to_vec())));
        assert_eq!(sm.get(b"k"), Some(b"v2".to_vec()));
        // Also within one batch entry.
        let r = sm
            .apply(vec![Command::Batch(vec![
                once(7, 2, 1, 1_000, set("k", "v3")),
                set("k", "v4"),
                once(7, 2, 1, 1_000, set("k", "v3")),
            ])])
            .await;
        assert_eq!(r.len(), 1);
        assert_eq!(sm.get(b"k"), Some(b"v4".to_vec()));
    }

    #[tokio::test]
    async fn the_watermark_forgets_results_and_refuses_late_attempts() {
        let mut sm = Sm::new();
        sm.apply(vec![
            once(7, 1, 1, 1_000, set("a", "1")),
            once(7, 2, 1, 1_000, set("b", "2")),
        ])
        .await;
        assert_eq!(sm.meta_keys(RESULT_PREFIX).len(), 2);
        // Request 3 says 1 and 2 are answered: their results go.
        sm.apply(vec![once(7, 3, 3, 1_000, set("c", "3"))]).await;
        assert_eq!(sm.meta_keys(RESULT_PREFIX), vec![result_key(7, 3)]);
        // A late attempt of request 2 (given up by its client) is refused,
        // not applied.
        let r = sm
            .apply(vec![set("b", "x"), once(7, 2, 1, 1_000, set("b", "late"))])
            .await;
        assert_eq!(r[1], CommandResult::Stale);
        assert_eq!(sm.get(b"b"), Some(b"x".to_vec()));
        // Another session is independent.
        let r = sm.apply(vec![once(8, 2, 1, 1_000, set("b", "y"))]).await;
        assert_eq!(r[0], CommandResult::Done);
        assert_eq!(sm.get(b"b"), Some(b"y".to_vec()));
    }

    #[tokio::test]
    async fn idle_sessions_are_forgotten_by_log_time() {
        let mut sm = Sm::new();
        sm.apply(vec![
            once(1, 1, 1, 1_000, set("a", "1")),
            once(2, 1, 1, SESSION_TTL_MS, set("b", "1")),
        ])
        .await;
        assert_eq!(sm.meta_keys(SESSION_PREFIX).len(), 2);
        // Log time moves past session 1's TTL but not session 2's.
        let later = 1_000 + SESSION_TTL_MS + SWEEP_PERIOD_MS;
        sm.apply(vec![once(2, 2, 2, later, set("b", "2"))]).await;
        assert_eq!(sm.meta_keys(SESSION_PREFIX), vec![session_key(2)]);
        assert_eq!(sm.meta_keys(RESULT_PREFIX), vec![result_key(2, 2)]);
        // Session 2 still refuses what it has moved past.
        let r = sm.apply(vec![once(2, 1, 1, later, set("b", "late"))]).await;
        assert_eq!(r[0], CommandResult::Stale);
    }
}
