//! The write batcher: concurrent client writes are gathered into one Raft
//! entry while earlier proposals are in flight, so they share one log
//! append and one fsync per replica (openraft 0.9 syncs once per append and
//! does not group proposals itself). Each caller gets its own result.
//!
//! Failure modes, and what the batcher does about them:
//!
//! - a caller gives up while its write is queued (deadline, cancelled
//!   request): the write is dropped before it is proposed, never applied
//!   later behind the caller's back;
//! - a proposal Raft never answers (openraft 0.9 answers a proposal when its
//!   entry is applied or truncated, not when a snapshot replaces it on a
//!   deposed leader): each proposal runs in its own task with a deadline,
//!   holding one of `max_proposals_in_flight` slots, so it cannot block the
//!   proposals after it;
//! - leadership moves while a proposal is in flight: its callers learn at
//!   once that the outcome is unknown (the node retries them through the new
//!   leader under the same request id, so they take effect once).

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use ravel_consensus::types::{NodeId, Raft};
use ravel_consensus::{Command, CommandResult};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Limits;
use crate::contact::QuorumContact;
use crate::metrics::NodeMetrics;

/// Why a write did not (knowingly) happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader (any more). The write may have been
    /// proposed before leadership was lost: its outcome is unknown.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, String)> },
    /// Raft refused or failed the proposal.
    #[error("replication failed: {0}")]
    Raft(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    Closed,
    /// Not applied within the caller's deadline; it may still be.
    #[error("not committed within the deadline")]
    Timeout,
    /// Refused without effect: the request's client session had already
    /// moved past it.
    #[error("request abandoned by its client (its session moved on); not applied")]
    Stale,
    /// Refused without effect: routed by a ring the admin has since
    /// replaced (the cluster was fenced at a newer generation).
    #[error("routed by ring generation {epoch}, but this cluster is fenced at generation {fence} (the key's partition moved); not applied")]
    Fenced { epoch: u64, fence: u64 },
}

struct Pending {
    cmd: Command,
    reply: oneshot::Sender<Result<CommandResult, WriteError>>,
    queued_at: Instant,
}

impl Pending {
    /// Whether the caller still waits for this write.
    fn wanted(&self, max_age: Duration) -> bool {
        !self.reply.is_closed() && self.queued_at.elapsed() < max_age
    }
}

/// Handle for submitting writes; clones share one batching task.
#[derive(Clone)]
pub struct WriteBatcher {
    tx: mpsc::Sender<Pending>,
}

fn command_bytes(cmd: &Command) -> usize {
    match cmd {
        Command::Set { key, value }
        | Command::SetIfAbsent { key, value }
        | Command::DeleteIfEqual { key, value } => key.len() + value.len(),
        Command::Delete { key } | Command::GetAndDelete { key } => key.len(),
        Command::DeleteIfDigest { key, digest } => key.len() + digest.len(),
        Command::Batch(cmds) => cmds.iter().map(command_bytes).sum(),
        Command::Once { cmd, .. } | Command::Fenced { cmd, .. } => command_bytes(cmd),
        Command::Fence { .. } => 8,
        Command::DeletePartitions { partitions, .. } => 4 + 4 * partitions.len(),
    }
}

/// How batches are formed and proposed.
#[derive(Debug, Clone)]
struct Policy {
    max_commands: usize,
    max_bytes: usize,
    max_in_flight: usize,
    /// Longest a proposal waits for Raft's answer, and longest a write may
    /// queue: no caller waits longer than this (the request deadline).
    deadline: Duration,
}

impl WriteBatcher {
    /// Starts the batching task. It ends when every handle is dropped.
    pub fn spawn(
        raft: Raft,
        limits: &Limits,
        contact: QuorumContact,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(limits.max_in_flight_requests.max(1));
        let policy = Policy {
            max_commands: limits.batch_max_commands.max(1),
            max_bytes: limits.batch_max_bytes.max(1),
            max_in_flight: limits.max_proposals_in_flight.max(1),
            deadline: limits.request_timeout(),
        };
        tokio::spawn(run(raft, rx, policy, contact, metrics));
        Self { tx }
    }

    /// Replicates `cmd` and returns its result once applied on the leader.
    pub async fn submit(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                cmd,
                reply,
                queued_at: Instant::now(),
            })
            .await
            .map_err(|_| WriteError::Closed)?;
        rx.await.map_err(|_| WriteError::Closed)?
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    policy: Policy,
    contact: QuorumContact,
    metrics: Arc<NodeMetrics>,
) {
    let slots = Arc::new(Semaphore::new(policy.max_in_flight));
    loop {
        // A slot first: what queues while we wait for one joins this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.is_empty() {
            let Some(p) = rx.recv().await else {
                return;
            };
            if p.wanted(policy.deadline) {
                bytes += command_bytes(&p.cmd);
                batch.push(p);
            }
        }
        while batch.len() < policy.max_commands && bytes < policy.max_bytes {
            match rx.try_recv() {
                Ok(p) if p.wanted(policy.deadline) => {
                    bytes += command_bytes(&p.cmd);
                    batch.push(p);
                }
                Ok(_) => {} // its caller is gone: never proposed
                Err(_) => break,
            }
        }
        tokio::spawn(propose(
            raft.clone(),
            batch,
            policy.deadline,
            contact.clone(),
            slot,
            metrics.clone(),
        ));
    }
}

/// Resolves once this node no longer leads in `term`.
async fn deposed(raft: &Raft, term: u64) {
    // The server metrics' watch changes with leadership and term, not with
    // every write: an in-flight proposal is not woken per metrics update.
    let mut metrics = raft.server_metrics();
    let _ = metrics
        .wait_for(|m| m.state != ServerState::Leader || m.vote.leader_id().get_term() != term)
        .await;
}

/// Proposes one batch and hands each caller its result. Holds `_slot`
/// until Raft answers, the deadline passes, leadership moves or this
/// leader loses contact with its majority.
async fn propose(
    raft: Raft,
    batch: Vec<Pending>,
    deadline: Duration,
    contact: QuorumContact,
    _slot: OwnedSemaphorePermit,
    metrics: Arc<NodeMetrics>,
) {
    let started = Instant::now();
    let (cmds, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let n = cmds.len();
    let proposal = if n == 1 {
        cmds.into_iter().next().expect("one command")
    } else {
        Command::Batch(cmds)
    };
    let term = raft.metrics().borrow().current_term;
    let outcome = tokio::select! {
        r = raft.client_write(proposal) => r.map_err(|e| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => WriteError::NotLeader {
                leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
            },
            other => WriteError::Raft(other.to_string()),
        }),
        _ = tokio::time::sleep(deadline) => Err(WriteError::Timeout),
        _ = deposed(&raft, term) => Err(WriteError::NotLeader { leader: None }),
        _ = contact.lost(&raft) => Err(WriteError::NotLeader { leader: None }),
    };
    metrics.proposal_done(n, started.elapsed());
    let results: Vec<Result<CommandResult, WriteError>> = match outcome {
        Ok(resp) => match (n, resp.data) {
            (1, result) => vec![Ok(result)],
            (_, CommandResult::Batch(results)) if results.len() == n => {
                results.into_iter().map(Ok).collect()
            }
            (_, other) => {
                let e = WriteError::Raft(format!("batch of {n} answered with {other:?}"));
                vec![Err(e); n]
            }
        },
        Err(e) => vec![Err(e); n],
    };
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}
