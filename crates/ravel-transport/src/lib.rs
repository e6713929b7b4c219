//! # ravel-transport
//!
//! The gRPC plumbing of Ravel processes:
//!
//! - [`RaftNetworkFactoryImpl`] / [`RaftPeer`]: openraft's network over tonic
//!   (client side), snapshots streamed in checksummed chunks with per-chunk
//!   and whole-transfer deadlines;
//! - [`RaftService`]: the server side, feeding the local openraft instance;
//! - [`ChannelPool`]: one lazily-connected channel per peer address;
//! - [`retry`]: the one retry policy (exponential backoff within a deadline);
//! - [`Faults`]: test-only fault injection (feature `fault-injection`).
//!
//! No business rules live here: what to send, and when, is the node's and
//! the admin's business.

mod error;
mod faults;
mod pool;
mod raft_network;
mod raft_service;
pub mod retry;

pub use error::TransportError;
pub use faults::Faults;
pub use pool::{ChannelOptions, ChannelPool};
pub use raft_network::{
    RaftNetworkFactoryImpl, RaftPeer, SnapshotTransfer, MAX_RAFT_MESSAGE_BYTES,
};
pub use raft_service::RaftService;
