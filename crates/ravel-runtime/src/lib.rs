//! # ravel-runtime
//!
//! What the `ravel-node` and `ravel-admin` processes share, so each of these
//! exists once:
//!
//! - [`config`]: the one layered configuration loader (defaults ← TOML file
//!   ← `RAVEL_*` environment, allow-listed ← command-line flags) and its
//!   errors, which name the field at fault;
//! - [`durable`]: small JSON state files written so that a crash leaves
//!   either the old or the new content (temp file, fsync, rename, fsync
//!   directory);
//! - [`lock`]: an exclusive lock on a directory that names the process
//!   holding it;
//! - [`logging`]: the tracing subscriber (`text` or `json`, `RAVEL_LOG`);
//! - [`metrics`]: Prometheus registration helpers, the text encoder, and
//!   the `/metrics`, `/healthz`, `/readyz` endpoint;
//! - [`signal`]: waiting for SIGTERM or SIGINT;
//! - [`tls`]: the `[tls]` files, the HTTPS listener, bearer tokens.
//!
//! Nothing here knows about Raft, RocksDB or gRPC (gRPC's TLS is built from
//! [`tls::TlsPem`] by `ravel-transport`).

pub mod config;
pub mod durable;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod signal;
pub mod tls;
