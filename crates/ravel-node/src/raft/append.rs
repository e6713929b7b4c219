//! AppendEntries calls that outlive openraft's per-RPC timeout.
//!
//! openraft 0.9 wraps every AppendEntries in a timeout of one heartbeat
//! interval (50 ms by default), drops the call when it expires, and sends
//! the same entries again. An append that cannot finish that fast (one
//! large entry, a value of several MiB; a busy disk) would be sent,
//! cancelled and sent again forever: the follower never catches up and the
//! leader loses contact with its quorum. So a large append runs on a task
//! of its own, under a deadline that grows with its size, and a retry of
//! the very same request (same vote, same entries) waits for the call
//! already under way instead of sending the bytes again. Its answer is the
//! answer to the retry: the request is identical.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use ravel_consensus::types::{LogId, NodeId, TypeConfig, Vote};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Appends whose encoded request is at least this large take the detached
/// path; smaller ones (heartbeats, ordinary batches) are sent inline.
pub(super) const DETACHED_APPEND_BYTES: usize = 256 << 10;

/// The deadline of a detached append of `bytes`.
pub(super) fn deadline(bytes: usize) -> Duration {
    Duration::from_secs(1) + Duration::from_secs_f64(bytes as f64 / f64::from(8u32 << 20))
}

/// What an append came to: the follower's answer, or why there is none.
pub(super) type Outcome<E> = Result<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>, E>;

/// A copy of an answer (openraft's type is not `Clone`): one detached
/// call's answer may answer several identical requests.
pub(super) fn copy(r: &AppendEntriesResponse<NodeId>) -> AppendEntriesResponse<NodeId> {
    match r {
        AppendEntriesResponse::Success => AppendEntriesResponse::Success,
        AppendEntriesResponse::PartialSuccess(l) => AppendEntriesResponse::PartialSuccess(*l),
        AppendEntriesResponse::Conflict => AppendEntriesResponse::Conflict,
        AppendEntriesResponse::HigherVote(v) => AppendEntriesResponse::HigherVote(*v),
    }
}

/// Identifies an append request up to what a retry may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Key {
    vote: Vote,
    prev: Option<LogId>,
    last: Option<LogId>,
    entries: usize,
}

impl Key {
    pub(super) fn of(rpc: &AppendEntriesRequest<TypeConfig>) -> Key {
        Key {
            vote: rpc.vote,
            prev: rpc.prev_log_id,
            last: rpc.entries.last().map(|e| e.log_id),
            entries: rpc.entries.len(),
        }
    }
}

/// A detached append under way (or finished, its answer not yet taken).
pub(super) struct InFlight<E> {
    pub(super) key: Key,
    pub(super) done: watch::Receiver<Option<Arc<Outcome<E>>>>,
    task: JoinHandle<()>,
}

impl<E: Send + Sync + 'static> InFlight<E> {
    /// Runs `call` on its own task.
    pub(super) fn start(
        key: Key,
        call: impl std::future::Future<Output = Outcome<E>> + Send + 'static,
    ) -> InFlight<E> {
        let (tx, done) = watch::channel(None);
        let task = tokio::spawn(async move {
            let _ = tx.send(Some(Arc::new(call.await)));
        });
        InFlight { key, done, task }
    }
}

impl<E> Drop for InFlight<E> {
    /// Superseded (other entries to send) or the peer is gone.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<E> std::fmt::Debug for InFlight<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").field("key", &self.key).finish()
    }
}
