//! The client side of Raft between replicas: openraft's `RaftNetworkFactory`
//! and `RaftNetwork` over tonic.
//!
//! Requests and replies are openraft's own types, encoded with
//! `ravel_consensus::codec` into a `RaftMessage`. Snapshots are streamed from
//! a pinned view of the state machine in checksummed chunks, with a deadline per chunk and one for
//! the whole transfer (openraft's per-RPC snapshot timeout is sized for one
//! small chunk and would wedge large snapshots).

use std::future::Future;
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Snapshot};
use ravel_consensus::codec;
use ravel_consensus::types::{NodeId, TypeConfig, Vote};
use ravel_proto::raft::raft_client::RaftClient;
use ravel_proto::raft::RaftMessage;
use ravel_transport::{ChannelPool, Faults, TransportError};

use tokio::sync::watch;

use super::append::{self, InFlight, Key};
use super::election::{PreVoteRequest, PreVoteResponse};
mod snapshot_send;

pub use snapshot_send::SnapshotTransfer;

use super::MAX_RAFT_MESSAGE_BYTES;

/// openraft's network factory over gRPC: makes a [`RaftPeer`] per target
/// replica.
#[derive(Debug, Clone)]
pub struct GrpcRaftNetwork {
    id: NodeId,
    pool: ChannelPool,
    faults: Faults,
    snapshot: SnapshotTransfer,
}

impl GrpcRaftNetwork {
    pub fn new(id: NodeId, pool: ChannelPool, faults: Faults, snapshot: SnapshotTransfer) -> Self {
        Self {
            id,
            pool,
            faults,
            snapshot,
        }
    }
}

impl GrpcRaftNetwork {
    /// The connection to `target`, outside openraft (pre-votes).
    pub(crate) fn peer(&self, target: NodeId, node: &BasicNode) -> RaftPeer {
        RaftPeer {
            from: self.id,
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
            faults: self.faults.clone(),
            snapshot: self.snapshot.clone(),
            append: None,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcRaftNetwork {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> RaftPeer {
        self.peer(target, node)
    }
}

/// The connection from this replica to one other replica.
#[derive(Debug)]
pub struct RaftPeer {
    from: NodeId,
    target: NodeId,
    addr: String,
    pool: ChannelPool,
    faults: Faults,
    snapshot: SnapshotTransfer,
    /// A large append still under way after openraft gave up waiting.
    append: Option<InFlight<CallError>>,
}

/// A failure to exchange a message, before openraft's error types.
#[derive(Debug)]
enum CallError {
    Timeout(Duration),
    Unreachable(TransportError),
    Network(TransportError),
}

fn encode<T: serde::Serialize>(value: &T) -> Result<RaftMessage, TransportError> {
    Ok(RaftMessage {
        codec: u32::from(codec::CODEC_VERSION),
        payload: codec::encode(value).map_err(|e| TransportError::Codec {
            addr: "local".into(),
            reason: e.to_string(),
        })?,
    })
}

fn decode<T: serde::de::DeserializeOwned>(
    addr: &str,
    msg: &RaftMessage,
) -> Result<T, TransportError> {
    codec::decode(&msg.payload).map_err(|e| TransportError::Codec {
        addr: addr.to_string(),
        reason: e.to_string(),
    })
}

fn classify(e: TransportError) -> CallError {
    match e {
        TransportError::Timeout { after, .. } => CallError::Timeout(after),
        e @ (TransportError::Unavailable { .. }
        | TransportError::Cut { .. }
        | TransportError::InvalidAddress { .. }) => CallError::Unreachable(e),
        e => CallError::Network(e),
    }
}

impl RaftPeer {
    fn client(&self) -> Result<RaftClient<tonic::transport::Channel>, TransportError> {
        Ok(RaftClient::new(self.pool.channel(&self.addr)?)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
    }

    /// Sends one unary Raft RPC and decodes the remote `Result<R, E>`.
    async fn unary<Req, R, E, F, Fut>(
        &self,
        req: &Req,
        ttl: Duration,
        call: F,
    ) -> Result<Result<R, E>, CallError>
    where
        Req: serde::Serialize,
        R: serde::de::DeserializeOwned,
        E: serde::de::DeserializeOwned,
        F: FnOnce(RaftClient<tonic::transport::Channel>, RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let msg = encode(req).map_err(CallError::Network)?;
        self.send(msg, ttl, call).await
    }

    /// Sends one encoded unary Raft RPC and decodes the remote `Result<R, E>`.
    async fn send<R, E, F, Fut>(
        &self,
        msg: RaftMessage,
        ttl: Duration,
        call: F,
    ) -> Result<Result<R, E>, CallError>
    where
        R: serde::de::DeserializeOwned,
        E: serde::de::DeserializeOwned,
        F: FnOnce(RaftClient<tonic::transport::Channel>, RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        self.faults
            .check(self.from, self.target)
            .await
            .map_err(classify)?;
        let client = self.client().map_err(classify)?;
        let reply = match tokio::time::timeout(ttl, call(client, msg)).await {
            Err(_) => return Err(CallError::Timeout(ttl)),
            Ok(Err(status)) => {
                return Err(classify(TransportError::from_status(&self.addr, status)))
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        // A reply that crosses a cut arrives only if the cut came after the
        // send; drop it, as a real partition would.
        self.faults
            .check(self.target, self.from)
            .await
            .map_err(classify)?;
        decode(&self.addr, &reply).map_err(CallError::Network)
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        e: &CallError,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        match e {
            CallError::Timeout(after) => RPCError::Timeout(Timeout {
                action,
                id: self.from,
                target: self.target,
                timeout: *after,
            }),
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(e)),
            CallError::Network(e) => RPCError::Network(NetworkError::new(e)),
        }
    }

    /// Asks the peer for a pre-vote (see `election.rs`). A peer too old to
    /// know the RPC answers `UNIMPLEMENTED`; it would vote without one, so
    /// that counts as granted.
    pub(crate) async fn pre_vote(
        &self,
        req: &PreVoteRequest,
        ttl: Duration,
    ) -> Result<PreVoteResponse, TransportError> {
        let res = self
            .unary::<_, PreVoteResponse, String, _, _>(req, ttl, |mut c, m| async move {
                c.pre_vote(m).await
            })
            .await;
        match res {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(refusal)) => Ok(PreVoteResponse::refused(refusal)),
            Err(CallError::Network(TransportError::Status {
                code: tonic::Code::Unimplemented,
                ..
            })) => Ok(PreVoteResponse::granted("the peer predates pre-vote")),
            Err(CallError::Timeout(after)) => Err(TransportError::Timeout {
                addr: self.addr.clone(),
                after,
            }),
            Err(CallError::Unreachable(e) | CallError::Network(e)) => Err(e),
        }
    }

    /// A copy for a detached call (no in-flight state).
    fn detached(&self) -> RaftPeer {
        RaftPeer {
            from: self.from,
            target: self.target,
            addr: self.addr.clone(),
            pool: self.pool.clone(),
            faults: self.faults.clone(),
            snapshot: self.snapshot.clone(),
            append: None,
        }
    }

    /// Starts a large append on a task of its own (see `append.rs`).
    fn start_append(
        &mut self,
        key: Key,
        msg: RaftMessage,
    ) -> watch::Receiver<Option<std::sync::Arc<append::Outcome<CallError>>>> {
        let peer = self.detached();
        let ttl = append::deadline(msg.payload.len());
        let f = InFlight::start(key, async move {
            peer.send(
                msg,
                ttl,
                |mut c, m| async move { c.append_entries(m).await },
            )
            .await
        });
        let done = f.done.clone();
        self.append = Some(f);
        done
    }

    /// Waits for the detached append behind `done`.
    async fn await_append(
        &mut self,
        mut done: watch::Receiver<Option<std::sync::Arc<append::Outcome<CallError>>>>,
    ) -> std::sync::Arc<append::Outcome<CallError>> {
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        // Answered: a later request, even an identical one, is sent anew.
        self.append = None;
        outcome.unwrap_or_else(|| {
            std::sync::Arc::new(Err(CallError::Network(TransportError::Unavailable {
                addr: self.addr.clone(),
                message: "the append task ended without an answer".into(),
            })))
        })
    }
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let key = Key::of(&rpc);
        let joined = self
            .append
            .as_ref()
            .filter(|f| f.key == key)
            .map(|f| f.done.clone());
        let res = if let Some(done) = joined {
            // openraft's retry of a large append still under way: wait for
            // it, without encoding or sending the entries again.
            self.await_append(done).await
        } else {
            let msg = encode(&rpc)
                .map_err(|e| self.rpc_error(RPCTypes::AppendEntries, &CallError::Network(e)))?;
            if msg.payload.len() >= append::DETACHED_APPEND_BYTES {
                let done = self.start_append(key, msg);
                self.await_append(done).await
            } else {
                std::sync::Arc::new(
                    self.send::<AppendEntriesResponse<NodeId>, RaftError<NodeId>, _, _>(
                        msg,
                        option.hard_ttl(),
                        |mut c, m| async move { c.append_entries(m).await },
                    )
                    .await,
                )
            }
        };
        match &*res {
            Ok(Ok(resp)) => Ok(append::copy(resp)),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(
                self.target,
                remote.clone(),
            ))),
            Err(e) => Err(self.rpc_error(RPCTypes::AppendEntries, e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let res = self
            .unary::<_, VoteResponse<NodeId>, RaftError<NodeId>, _, _>(
                &rpc,
                option.hard_ttl(),
                |mut c, m| async move { c.vote(m).await },
            )
            .await;
        match res {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(e) => Err(self.rpc_error(RPCTypes::Vote, &e)),
        }
    }

    /// Not used: snapshots go through [`RaftNetwork::full_snapshot`], which
    /// streams the whole file in one call.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let e = TransportError::Status {
            addr: self.addr.clone(),
            code: tonic::Code::Unimplemented,
            message: "chunked InstallSnapshot is not used; snapshots are streamed".into(),
        };
        Err(RPCError::Network(NetworkError::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        // RocksDB's estimate of the stored (compressed) data, doubled; the
        // deadline grows further with the bytes actually sent.
        let estimate = snapshot.snapshot.estimated_bytes().saturating_mul(2);
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let start = tokio::time::Instant::now();
        let transfer = self.stream_snapshot(vote, snapshot, sent.clone());
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = transfer => res,
            allowed = self.snapshot.overdue(start, estimate, &sent) => {
                Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.from,
                    target: self.target,
                    timeout: allowed,
                }))
            }
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Retry an unreachable peer soon, then every half second.
        openraft::network::Backoff::new(
            [50u64, 100, 200]
                .into_iter()
                .chain(std::iter::repeat(500))
                .map(Duration::from_millis),
        )
    }
}
