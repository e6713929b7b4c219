//! User-facing key-value operations over the clusters, correct while
//! partitions move (design.md, "Relocation without losing writes"):
//!
//! - writes go to the key's new owner at once;
//! - a delete of a moving key leaves a tombstone on the new owner, so the
//!   mover's copy-if-absent cannot bring the old value back, and also
//!   deletes the old copy;
//! - reads ask the new owner and the previous owner at once, then the new
//!   owner again if neither had the key (it may have moved between the
//!   two reads); see `AdminState::get`;
//! - a key the mover has already passed (at or before its saved cursor)
//!   is the new owner's alone: reads and deletes go there only
//!   (`Router::route`);
//! - requests hold the routing gate for reading; a ring change takes it for
//!   writing, so no request routed by the old ring is still in flight once
//!   the change is visible.

use ravel_proto::ops;
use tokio::time::Instant;
use tonic::Code;

use crate::router::{CallError, Route, Write};
use crate::state::AdminState;

/// Marks a key deleted on a partition's new owner while the partition
/// moves. Not valid JSON (the admin stores JSON values), so it cannot be a
/// user's value; removed once the move is over.
pub const TOMBSTONE: &[u8] = b"\0ravel:tombstone\0";

#[derive(Debug)]
pub enum KvError {
    /// No cluster serves yet, or none answered in time.
    Unavailable(String),
    /// The node refused the request (bad input).
    Invalid(String),
    /// The node refused the request as larger than its limits.
    TooLarge(String),
    Internal(String),
}

impl From<CallError> for KvError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unavailable(m) => KvError::Unavailable(m),
            CallError::Status(s) if s.code() == Code::InvalidArgument => {
                KvError::Invalid(s.message().to_string())
            }
            // tonic refuses a request over the node's decoding limit with
            // OUT_OF_RANGE ("decoded message length too large").
            CallError::Status(s)
                if matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange) =>
            {
                KvError::TooLarge(s.message().to_string())
            }
            // FAILED_PRECONDITION: not applied, as the cluster stands now
            // (a write routed by a ring replaced since: retry).
            CallError::Status(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::FailedPrecondition
                ) =>
            {
                KvError::Unavailable(s.message().to_string())
            }
            CallError::Status(s) => KvError::Internal(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

fn not_found(e: &CallError) -> bool {
    matches!(e, CallError::Status(s) if s.code() == Code::NotFound)
}

impl AdminState {
    fn route(&self, key: &[u8]) -> Result<Route, KvError> {
        self.router
            .route(key)
            .ok_or_else(|| KvError::Unavailable("no cluster is serving yet".into()))
    }

    fn request_deadline(&self) -> Instant {
        Instant::now() + self.limits.request_timeout
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        let _g = self.gate.read().await;
        let deadline = self.request_deadline();
        let r = self.route(key)?;
        let ticket = self.session.begin();
        self.router
            .run(
                &r.owner,
                ops::SET,
                key,
                value,
                Some(r.write(&ticket)),
                deadline,
            )
            .await?;
        Ok(())
    }

    /// The value of `key`, `None` if absent.
    ///
    /// While the key's partition moves and the mover has not passed the
    /// key yet (the route names a previous owner), the new and the
    /// previous owner are asked at once (the latency of one read, not
    /// two): the new owner's answer wins if it has the key. If only the
    /// previous owner has it,
    /// that value was the key's at the moment it was read: the new owner
    /// only gains keys during a move (copies, writes, tombstones; sweeps
    /// wait for the move's end, which this request's gate holds off), so
    /// absent there afterwards means absent there then. If neither has it,
    /// the key may have moved between the two reads: the new owner is
    /// asked again.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let _g = self.gate.read().await;
        let deadline = self.request_deadline();
        let r = self.route(key)?;
        let read = |cluster| async move {
            match self
                .router
                .run(cluster, ops::GET, key, b"", None, deadline)
                .await
            {
                Ok(v) => Ok(Some(live(v))),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(KvError::from(e)),
            }
        };
        let Some(prev) = r.previous.as_ref() else {
            return Ok(read(&r.owner).await?.flatten());
        };
        let (at_owner, at_prev) = tokio::join!(read(&r.owner), read(prev));
        if let Some(found) = at_owner? {
            return Ok(found);
        }
        if let Some(found) = at_prev? {
            return Ok(found);
        }
        Ok(read(&r.owner).await?.flatten())
    }

    pub async fn delete(&self, key: &[u8]) -> Result<(), KvError> {
        let _g = self.gate.read().await;
        let deadline = self.request_deadline();
        let r = self.route(key)?;
        match r.previous.clone() {
            None => {
                let ticket = self.session.begin();
                self.router
                    .run(
                        &r.owner,
                        ops::DELETE,
                        key,
                        b"",
                        Some(r.write(&ticket)),
                        deadline,
                    )
                    .await?;
            }
            Some(prev) => {
                let ticket = self.session.begin();
                self.router
                    .run(
                        &r.owner,
                        ops::SET,
                        key,
                        TOMBSTONE,
                        Some(r.write(&ticket)),
                        deadline,
                    )
                    .await?;
                let ticket = self.session.begin();
                self.router
                    .run(
                        &prev,
                        ops::DELETE,
                        key,
                        b"",
                        Some(r.write(&ticket)),
                        deadline,
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

impl Route {
    fn write<'a>(&self, ticket: &'a ravel_transport::session::Ticket) -> Write<'a> {
        Write {
            ticket,
            epoch: self.epoch,
        }
    }
}

fn live(v: Vec<u8>) -> Option<Vec<u8>> {
    (v != TOMBSTONE).then_some(v)
}
