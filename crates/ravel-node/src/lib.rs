//! # ravel-node
//!
//! One Ravel replica. The request path:
//!
//! 1. [`service`]: gRPC `Run` arrives; validated; a follower forwards it to
//!    the leader.
//! 2. [`batcher`]: on the leader, writes are gathered into one Raft entry.
//! 3. `ravel-consensus`: the entry is replicated and applied to RocksDB.
//!
//! [`node`] is the lifecycle (found / join / restart / shutdown), [`kill`]
//! the planned removal, [`notifier`] tells the admin about leadership, and
//! [`config`] loads the TOML / environment / flags configuration.
//! The `ravel-node` binary and `ravel-testkit` both start nodes through
//! [`Node::start`].

pub mod batcher;
pub mod config;
pub mod identity;
pub mod kill;
pub mod node;
pub mod notifier;
pub mod service;

pub use config::{NodeConfig, Overrides};
pub use node::{Node, NodeError, StartOptions};
