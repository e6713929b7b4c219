//! # ravel-node
//!
//! One Ravel replica. The request path:
//!
//! 1. `service`: gRPC `Run` arrives; validated; a follower forwards it to
//!    the leader.
//! 2. `batcher`: on the leader, writes are gathered into one Raft entry.
//! 3. `ravel-consensus`: the entry is replicated (`raft`: openraft's
//!    network over gRPC) and applied to RocksDB.
//!
//! A linearizable read waits on `read_index`: one leadership confirmation
//! with a quorum shared by every read waiting when it starts, or none while
//! the leader holds a read lease (`lease`, which also gates votes).
//!
//! `node` is the lifecycle (found / join / restart / shutdown), `kill` the
//! planned removal, `notifier` tells the admin about leadership through
//! `admin_link` (every call to the admin), and [`config`] loads the
//! TOML / environment / flags configuration. The `ravel-node` binary
//! ([`cli`]) and `ravel-testkit` both start nodes through [`Node::start`].

mod admin_link;
mod batcher;
pub mod cli;
pub mod config;
mod contact;
pub mod identity;
pub mod kill;
mod lease;
mod metrics;
mod node;
mod notifier;
mod raft;
mod read_index;
mod service;

pub use config::{NodeConfig, Overrides};
pub use node::{Node, NodeError, StartOptions};
