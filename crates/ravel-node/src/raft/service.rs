//! The server side of Raft between replicas: feeds incoming RPCs to the
//! local openraft instance.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{Fatal, RaftError};
use openraft::raft::{AppendEntriesRequest, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::Snapshot;
use ravel_consensus::types::{NodeId, Raft, SnapshotMeta, TypeConfig, Vote};
use ravel_consensus::LogStore;
use ravel_proto::raft::raft_server::{Raft as RaftRpc, RaftServer};
use ravel_proto::raft::{RaftMessage, SnapshotChunk};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::election::{self, PreVoteRequest};
use super::MAX_RAFT_MESSAGE_BYTES;
use crate::lease::ReadLease;

/// Serves `ravel.raft.v1.Raft` for one replica.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    /// Read by pre-vote answers.
    log: LogStore,
    /// Longest wait for the next snapshot chunk before giving up the transfer.
    chunk_timeout: Duration,
    /// openraft's leader lease (see `election.rs`).
    lease: Duration,
    /// Gates vote requests (see `lease.rs`).
    read_lease: Arc<ReadLease>,
}

impl RaftService {
    pub fn new(
        raft: Raft,
        log: LogStore,
        chunk_timeout: Duration,
        lease: Duration,
        read_lease: Arc<ReadLease>,
    ) -> Self {
        Self {
            raft,
            log,
            chunk_timeout,
            lease,
            read_lease,
        }
    }

    /// The tonic service, with our message size limits.
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }
}

fn decode<T: serde::de::DeserializeOwned>(msg: &RaftMessage) -> Result<T, Status> {
    ravel_consensus::codec::decode(&msg.payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = ravel_consensus::codec::encode(value)
        .map_err(|e| Status::internal(format!("encoding Raft reply: {e}")))?;
    Ok(Response::new(RaftMessage {
        codec: u32::from(ravel_consensus::codec::CODEC_VERSION),
        payload,
    }))
}

impl RaftService {
    /// A refused vote, as openraft answers one refused by its own lease:
    /// this replica's vote and last log id, not granted.
    async fn refusal(&self) -> Result<Response<RaftMessage>, Status> {
        let vote = self
            .raft
            .with_raft_state(|st| *st.vote_ref())
            .await
            .map_err(|e| Status::unavailable(format!("Raft stopped: {e}")))?;
        let last = election::last_log_id(&self.log)
            .await
            .map_err(Status::internal)?;
        reply(&Ok::<_, RaftError<NodeId>>(VoteResponse::new(
            vote, last, false,
        )))
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request.get_ref())?;
        let _leader_message = self.read_lease.leader_message().await;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = decode(request.get_ref())?;
        let _voting = match self.read_lease.admit_vote(tokio::time::Instant::now()) {
            Ok(voting) => voting,
            Err(why) => {
                tracing::info!(vote = %rpc.vote, reason = %why, "vote refused");
                return self.refusal().await;
            }
        };
        reply(&self.raft.vote(rpc).await)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: PreVoteRequest = decode(request.get_ref())?;
        let answer =
            election::answer(&self.raft, &self.log, self.lease, &self.read_lease, &rpc).await;
        tracing::debug!(candidate = rpc.candidate, term = rpc.term, granted = answer.granted, reason = %answer.reason, "pre-vote");
        reply(&Ok::<_, String>(answer))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let mut stream = request.into_inner();
        let mut header: Option<(Vote, SnapshotMeta)> = None;
        let mut file = self
            .raft
            .begin_receiving_snapshot()
            .await
            .map_err(|e| Status::unavailable(format!("cannot receive a snapshot now: {e}")))?;
        let mut offset = 0u64;
        loop {
            let chunk = match tokio::time::timeout(self.chunk_timeout, stream.message()).await {
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "no snapshot chunk for {:?} at offset {offset}",
                        self.chunk_timeout
                    )))
                }
                Ok(Err(status)) => return Err(status),
                Ok(Ok(None)) => {
                    return Err(Status::invalid_argument(
                        "snapshot stream ended before its last chunk",
                    ))
                }
                Ok(Ok(Some(chunk))) => chunk,
            };
            if let Some(h) = &chunk.header {
                header = Some(decode(h)?);
            }
            if chunk.offset != offset {
                return Err(Status::invalid_argument(format!(
                    "snapshot chunk at offset {}, expected {offset}",
                    chunk.offset
                )));
            }
            if crc32fast::hash(&chunk.data) != chunk.crc32 {
                return Err(Status::data_loss(format!(
                    "snapshot chunk at offset {offset} fails its checksum"
                )));
            }
            file.write_all(&chunk.data)
                .await
                .map_err(|e| Status::internal(format!("writing received snapshot: {e}")))?;
            offset += chunk.data.len() as u64;
            if chunk.done {
                break;
            }
        }
        file.flush()
            .await
            .map_err(|e| Status::internal(format!("writing received snapshot: {e}")))?;
        let Some((vote, meta)) = header else {
            return Err(Status::invalid_argument("snapshot stream without a header"));
        };
        tracing::info!(bytes = offset, snapshot = %meta.snapshot_id, "received snapshot, installing");
        let _leader_message = self.read_lease.leader_message().await;
        let res: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: file,
                },
            )
            .await;
        reply(&res)
    }
}
