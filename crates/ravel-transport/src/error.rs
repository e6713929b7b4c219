//! Errors of the gRPC plumbing, and the one mapping from tonic statuses to
//! what a caller can do about them.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },

    /// The peer could not be reached (refused, reset, no route).
    #[error("{addr} unreachable: {message}")]
    Unavailable { addr: String, message: String },

    /// The call did not complete within its deadline.
    #[error("{addr} did not answer within {after:?}")]
    Timeout { addr: String, after: Duration },

    /// The peer answered with an error status.
    #[error("{addr} answered {code:?}: {message}")]
    Status {
        addr: String,
        code: tonic::Code,
        message: String,
    },

    /// Traffic to the peer is cut by a test's fault injection.
    #[error("traffic from node {from} to node {to} is cut (fault injection)")]
    Cut { from: u64, to: u64 },

    #[error("undecodable payload from {addr}: {reason}")]
    Codec { addr: String, reason: String },
}

/// Whether a status means the call broke off rather than that the peer
/// answered: tonic reports a connection reset, or a peer that died
/// mid-request, as `UNKNOWN: transport error` (or an h2 protocol error, or
/// `CANCELLED`). The request's outcome is unknown, as after a timeout.
pub fn is_broken_call(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Cancelled => true,
        tonic::Code::Unknown | tonic::Code::Internal => {
            let m = status.message();
            m.starts_with("transport error") || m.starts_with("h2 protocol error")
        }
        _ => false,
    }
}

impl TransportError {
    /// Classifies a tonic status from `addr`.
    /// A call that broke off (the peer died or restarted mid-call) is
    /// unavailability, so callers retry it as they retry a refused
    /// connection: every call through here is idempotent (membership and
    /// registry calls; writes carry their request id). `ravel-node kill`
    /// failed outright when the admin was restarted during its
    /// `LeaveCluster`.
    pub fn from_status(addr: &str, status: tonic::Status) -> Self {
        if is_broken_call(&status) {
            return TransportError::Unavailable {
                addr: addr.to_string(),
                message: format!("the call broke off: {}", status.message()),
            };
        }
        match status.code() {
            tonic::Code::Unavailable => TransportError::Unavailable {
                addr: addr.to_string(),
                message: status.message().to_string(),
            },
            tonic::Code::DeadlineExceeded => TransportError::Timeout {
                addr: addr.to_string(),
                after: Duration::ZERO,
            },
            code => TransportError::Status {
                addr: addr.to_string(),
                code,
                message: status.message().to_string(),
            },
        }
    }

    /// Whether trying again (after a pause) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TransportError::Unavailable { .. }
                | TransportError::Timeout { .. }
                | TransportError::Cut { .. }
        )
    }

    /// The status code, when the peer answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            TransportError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_call_is_retried_and_a_refusal_is_not() {
        let broken = tonic::Status::unknown("transport error");
        assert!(TransportError::from_status("a:1", broken).is_retryable());
        let cancelled = tonic::Status::cancelled("h2 stream reset");
        assert!(TransportError::from_status("a:1", cancelled).is_retryable());
        let refused = tonic::Status::invalid_argument("bad node id");
        assert!(!TransportError::from_status("a:1", refused).is_retryable());
        let other = tonic::Status::unknown("duplicate join");
        assert!(!TransportError::from_status("a:1", other).is_retryable());
    }
}
