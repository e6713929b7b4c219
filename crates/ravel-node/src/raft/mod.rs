//! Raft between the replicas of one cluster, over the node's gRPC server
//! (`ravel.raft.v1`): [`GrpcRaftNetwork`] is openraft's network (the client
//! side), [`RaftService`] feeds incoming RPCs to the local Raft core.
//! openraft's requests travel as `ravel_consensus::codec` bytes inside a
//! protobuf envelope; snapshots stream in checksummed chunks.

mod network;
mod service;

pub use network::{GrpcRaftNetwork, SnapshotTransfer};
pub use service::RaftService;

/// Largest gRPC message we accept or send on the Raft service; append
/// batches and snapshot chunks stay well under it.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 << 20;
