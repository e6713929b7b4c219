//! Raft between the replicas of one cluster, over the node's gRPC server
//! (`ravel.raft.v1`): [`GrpcRaftNetwork`] is openraft's network (the client
//! side), [`RaftService`] feeds incoming RPCs to the local Raft core.
//! openraft's requests travel as `ravel_consensus::codec` bytes inside a
//! protobuf envelope; snapshots stream in checksummed chunks.

mod append;
pub mod election;
mod network;
mod service;
pub mod snapshot_trigger;

pub use network::{GrpcRaftNetwork, SnapshotTransfer};
pub use service::RaftService;

pub use crate::config::MAX_RAFT_MESSAGE_BYTES;
