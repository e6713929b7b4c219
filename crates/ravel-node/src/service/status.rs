//! The one mapping from the node's internal errors to gRPC statuses, and
//! the response helpers every service uses.

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::BasicNode;
use ravel_consensus::types::NodeId;
use ravel_proto::metadata;
use ravel_proto::node::Response as RunResponse;
use ravel_transport::TransportError;
use tonic::{Response, Status};

use crate::batcher::WriteError;

/// A failed write: whether the caller may assume it did not happen is in
/// the message ("it may still be applied" / "may or may not").
impl From<WriteError> for Status {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Timeout => Status::deadline_exceeded(
                "write not committed within the request deadline; it may still be applied",
            ),
            e @ WriteError::NotLeader { .. } => Status::unavailable(format!(
                "{e}: leadership changed while the request was in flight; it may or may not have been applied"
            )),
            e @ (WriteError::Stale | WriteError::Fenced { .. }) => {
                Status::failed_precondition(e.to_string())
            }
            e => Status::unavailable(e.to_string()),
        }
    }
}

/// Failures talking to a peer.
pub(super) fn transport_status(e: TransportError) -> Status {
    match e {
        TransportError::Timeout { .. } => Status::deadline_exceeded(e.to_string()),
        TransportError::Status { code, message, .. } => Status::new(code, message),
        TransportError::InvalidAddress { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

/// A refused or failed membership change.
pub(super) fn membership_status(
    e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Status::unavailable("leadership changed")
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Status::failed_precondition(c.to_string())
        }
        e => Status::unavailable(e.to_string()),
    }
}

/// Whether a membership change was refused because another is running.
pub(super) fn membership_in_progress(
    e: &RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> bool {
    matches!(
        e,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_)
        ))
    )
}

pub(super) fn ok_response(data: Vec<u8>) -> RunResponse {
    RunResponse {
        msg: "ok".into(),
        data,
    }
}

/// Names the serving leader in the response metadata.
pub(super) fn set_leader<T>(resp: &mut Response<T>, addr: &str) {
    if let Ok(v) = addr.parse() {
        resp.metadata_mut().insert(metadata::LEADER, v);
    }
}
