//! `Run`: one key-value operation (`set`, `get`, `delete`, `getAndDelete`).
//!
//! Validated first (nothing is proposed for a bad request). On the leader,
//! `get` confirms leadership with a quorum and reads locally; writes go
//! through the batcher. A follower forwards to the leader.

use std::time::Duration;

use ravel_consensus::{Command, CommandResult};
use ravel_proto::node::{Command as PbCommand, Response as RunResponse};
use ravel_proto::ops;
use ravel_transport::session::RequestId;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::leadership::{is_forwarded, Forward, Leadership, Tags, Unconfirmed};
use super::status::{ok_response, set_leader};
use super::NodeState;
use crate::batcher::WriteError;

/// A validated `Run` request.
enum Op {
    Get(Vec<u8>),
    Write(Command),
}

/// Why the leader did not serve a request itself.
enum LocalError {
    /// Leadership moved before the request took effect: safe to forward.
    NotLeader,
    Status(Status),
}

pub(super) async fn run(
    s: &NodeState,
    request: Request<PbCommand>,
) -> Result<Response<RunResponse>, Status> {
    let forwarded = is_forwarded(&request);
    let deadline = s.deadline();
    // Every attempt of a write, here and on any leader it is forwarded to,
    // carries the same id: it takes effect once. The ticket (for a request
    // that came without an id) is held until we answer.
    let (id, _ticket) = s.request_id(&request)?;
    let epoch = s.ring_epoch(&request)?;
    let cmd = request.into_inner();
    let op = cmd.operation.clone();
    let span = tracing::debug_span!("run", op = %cmd.operation, key_len = cmd.key.len(), forwarded);
    let started = Instant::now();
    let result = serve(s, cmd, id, epoch, forwarded, deadline)
        .instrument(span.clone())
        .await;
    let code = result.as_ref().err().map_or(tonic::Code::Ok, |e| e.code());
    s.metrics.run_done(&op, code, started.elapsed());
    span.in_scope(|| {
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            code = ?result.as_ref().err().map(|e| e.code()),
            "run done"
        )
    });
    result
}

async fn serve(
    s: &NodeState,
    cmd: PbCommand,
    id: RequestId,
    epoch: Option<u64>,
    forwarded: bool,
    deadline: Instant,
) -> Result<Response<RunResponse>, Status> {
    // Whether an earlier attempt was proposed: then a failure's outcome is
    // unknown, not "not applied".
    let mut proposed = false;
    loop {
        let op = validate(s, &cmd)?;
        let leadership = s.await_leader(deadline).await?;
        if matches!(leadership, Leadership::Local)
            && matches!(op, Op::Write(_))
            && !s.contact.fresh(&s.raft)
        {
            return Err(Status::unavailable(if proposed {
                "this node leads but has lost contact with a majority of its cluster; the request's outcome is unknown"
            } else {
                "this node leads but has lost contact with a majority of its cluster; not applied"
            }));
        }
        match leadership {
            Leadership::Local => match run_local(s, op, id, epoch, deadline).await {
                Ok(r) => {
                    let mut resp = Response::new(r);
                    set_leader(&mut resp, &s.advertised);
                    return Ok(resp);
                }
                Err(LocalError::Status(st)) => return Err(st),
                Err(LocalError::NotLeader) => {
                    proposed = true;
                    // Leadership moved while the request was in flight:
                    // it may or may not have taken effect; sending it
                    // again (same id) through the new leader is safe.
                    if Instant::now() >= deadline {
                        return Err(Status::unavailable(
                            "leadership changed and no new leader in time",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            l @ Leadership::Remote { .. } if forwarded => return Err(s.not_leader(&l)),
            Leadership::Remote { id: leader, addr } => {
                match s
                    .forward(
                        leader,
                        &addr,
                        cmd.clone(),
                        Tags {
                            id: Some(id),
                            epoch,
                        },
                        deadline,
                        |mut c, r| async move { c.run(r).await },
                    )
                    .await
                {
                    Ok(r) => return Ok(r),
                    // The leader we forwarded to was replaced while the
                    // request was in flight: send it to the new one (same
                    // request id, so it takes effect once).
                    Err(Forward::LeaderChanged) => continue,
                    Err(Forward::Failed(st)) => return Err(st),
                }
            }
            Leadership::Unknown => unreachable!("await_leader returns a known leader"),
        }
    }
}

fn validate(s: &NodeState, cmd: &PbCommand) -> Result<Op, Status> {
    // Only `set` carries a value; the others ignore the field.
    let value: &[u8] = if cmd.operation == ops::SET {
        &cmd.value
    } else {
        &[]
    };
    s.check_sizes(&cmd.key, value)?;
    let key = cmd.key.clone();
    Ok(match cmd.operation.as_str() {
        ops::GET => Op::Get(key),
        ops::DELETE => Op::Write(Command::Delete { key }),
        ops::GET_AND_DELETE => Op::Write(Command::GetAndDelete { key }),
        ops::SET => Op::Write(Command::Set {
            key,
            value: cmd.value.clone(),
        }),
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown operation {other:?}; expected one of set, get, delete, getAndDelete"
            )))
        }
    })
}

async fn run_local(
    s: &NodeState,
    op: Op,
    id: RequestId,
    epoch: Option<u64>,
    deadline: Instant,
) -> Result<RunResponse, LocalError> {
    match op {
        Op::Get(key) => {
            let read = match s
                .read_linearizable(deadline, &key, || s.engine.get(&key))
                .await
            {
                Err(Unconfirmed::NotLeader) => return Err(LocalError::NotLeader),
                Err(Unconfirmed::Unavailable(st)) => return Err(LocalError::Status(st)),
                Ok(read) => read,
            };
            match read {
                Ok(Some(value)) => Ok(ok_response(value)),
                Ok(None) => Err(LocalError::Status(Status::not_found("key not found"))),
                Err(e) => Err(LocalError::Status(Status::internal(e.to_string()))),
            }
        }
        Op::Write(cmd) => {
            let key = match &cmd {
                Command::Set { key, .. }
                | Command::Delete { key }
                | Command::GetAndDelete { key } => key.clone(),
                _ => Vec::new(),
            };
            let result = s.replicate(id, epoch, cmd, deadline).await;
            if let Some(hold) = s.faults.take_lost_answer(s.id, &key) {
                tokio::time::sleep(hold).await;
                return Err(LocalError::Status(Status::unavailable(
                    "the answer was lost (fault injection)",
                )));
            }
            match result {
                Ok(CommandResult::Value(Some(v))) => Ok(ok_response(v)),
                Ok(CommandResult::Value(None)) => {
                    Err(LocalError::Status(Status::not_found("key not found")))
                }
                Ok(_) => Ok(ok_response(Vec::new())),
                Err(WriteError::NotLeader { .. }) => Err(LocalError::NotLeader),
                Err(e) => Err(LocalError::Status(e.into())),
            }
        }
    }
}

impl NodeState {
    /// Keys must be non-empty; keys and values within the configured limits.
    pub(super) fn check_sizes(&self, key: &[u8], value: &[u8]) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("key must not be empty"));
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(Status::invalid_argument(format!(
                "key is {} bytes; the limit is {}",
                key.len(),
                self.limits.max_key_bytes
            )));
        }
        if value.len() > self.limits.max_value_bytes {
            return Err(Status::invalid_argument(format!(
                "value is {} bytes; the limit is {}",
                value.len(),
                self.limits.max_value_bytes
            )));
        }
        Ok(())
    }
}
