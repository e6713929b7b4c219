//! # ravel-transport
//!
//! The gRPC plumbing every Ravel process shares, with no business rules and
//! no Raft: what to send, and when, is the node's and the admin's business.
//!
//! - [`ChannelPool`]: one lazily-connected channel per peer address;
//! - [`retry`]: the one retry policy (backoff with jitter, deadline, cancel);
//! - [`session`]: request ids for exactly-once writes (session, sequence,
//!   watermark), carried in metadata on every attempt;
//! - [`tls`]: gRPC over mutual TLS, from a process's `[tls]` files;
//! - [`TransportError`]: what went wrong talking to a peer, classified once;
//! - [`Faults`]: test-only fault injection (feature `fault-injection`).

mod error;
mod faults;
mod pool;
pub mod retry;
pub mod session;
pub mod tls;

pub use error::{is_broken_call, TransportError};
pub use faults::Faults;
pub use pool::{ChannelOptions, ChannelPool};
