//! The write batcher: concurrent client writes are gathered into one Raft
//! entry while the previous proposal is in flight, so they share one log
//! append and one fsync per replica (openraft 0.9 syncs once per append and
//! does not group proposals itself). Each caller gets its own result.

use openraft::error::{ClientWriteError, RaftError};
use ravel_consensus::types::{NodeId, Raft};
use ravel_consensus::{Command, CommandResult};
use tokio::sync::{mpsc, oneshot};

use crate::config::Limits;

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
}

struct Pending {
    cmd: Command,
    reply: oneshot::Sender<Result<CommandResult, WriteError>>,
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
        Command::Batch(cmds) => cmds.iter().map(command_bytes).sum(),
        Command::Once { cmd, .. } => command_bytes(cmd),
    }
}

impl WriteBatcher {
    /// Starts the batching task. It ends when every handle is dropped.
    pub fn spawn(raft: Raft, limits: &Limits) -> Self {
        let (tx, rx) = mpsc::channel(limits.max_in_flight_requests.max(1));
        tokio::spawn(run(
            raft,
            rx,
            limits.batch_max_commands.max(1),
            limits.batch_max_bytes.max(1),
        ));
        Self { tx }
    }

    /// Replicates `cmd` and returns its result once applied on the leader.
    pub async fn submit(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { cmd, reply })
            .await
            .map_err(|_| WriteError::Closed)?;
        rx.await.map_err(|_| WriteError::Closed)?
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, max_commands: usize, max_bytes: usize) {
    while let Some(first) = rx.recv().await {
        let mut bytes = command_bytes(&first.cmd);
        let mut batch = vec![first];
        // Everything that queued up while the last proposal was in flight.
        while batch.len() < max_commands && bytes < max_bytes {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += command_bytes(&p.cmd);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (cmds, replies): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
        let n = cmds.len();
        let proposal = if n == 1 {
            cmds.into_iter().next().expect("one command")
        } else {
            Command::Batch(cmds)
        };
        match raft.client_write(proposal).await {
            Ok(resp) => match (n, resp.data) {
                (1, result) => {
                    let _ = replies
                        .into_iter()
                        .next()
                        .expect("one reply")
                        .send(Ok(result));
                }
                (_, CommandResult::Batch(results)) if results.len() == n => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                }
                (_, other) => {
                    let e = WriteError::Raft(format!("batch of {n} answered with {other:?}"));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            },
            Err(e) => {
                let e = match e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                        WriteError::NotLeader {
                            leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                        }
                    }
                    other => WriteError::Raft(other.to_string()),
                };
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
