//! Who leads, as this node sees it; confirming leadership with a quorum
//! (the read index every linearizable answer waits for); forwarding a
//! request to the leader.

use std::time::Duration;

use openraft::metrics::WaitError;
use openraft::ServerState;
use ravel_consensus::types::NodeId;
use ravel_consensus::types::RaftMetrics;
use ravel_proto::metadata;
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_transport::session::RequestId;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::status::{set_leader, transport_status};
use super::NodeState;
use crate::read_index::Confirmation;

/// Who leads, as this node sees it now.
pub(super) enum Leadership {
    Local,
    Remote { id: NodeId, addr: String },
    Unknown,
}

/// Why leadership could not be confirmed.
pub(super) enum Unconfirmed {
    /// Another node leads (or leadership moved): safe to forward.
    NotLeader,
    /// No quorum answered by the deadline, or Raft failed.
    Unavailable(Status),
}

fn unconfirmed(c: Confirmation) -> Result<bool, Unconfirmed> {
    match c {
        Confirmation::Confirmed { lease } => Ok(lease),
        Confirmation::NotLeader => Err(Unconfirmed::NotLeader),
        Confirmation::Unavailable(why) => Err(Unconfirmed::Unavailable(Status::unavailable(why))),
    }
}

/// Who leads according to `m`, as seen by node `me`: a leader that can
/// serve (this node, in the `Leader` state) or be forwarded to (another
/// member with an address). A leader Raft still names but that cannot be
/// used (it left the membership, or this node has not finished becoming
/// leader) is `Unknown`.
fn leadership_of(m: &RaftMetrics, me: NodeId) -> Leadership {
    match m.current_leader {
        Some(id) if id == me && m.state == ServerState::Leader => Leadership::Local,
        Some(id) if id != me => match m.membership_config.membership().get_node(&id) {
            Some(node) => Leadership::Remote {
                id,
                addr: node.addr.clone(),
            },
            None => Leadership::Unknown,
        },
        _ => Leadership::Unknown,
    }
}

impl NodeState {
    pub(super) fn leadership(&self) -> Leadership {
        leadership_of(&self.raft.metrics().borrow(), self.id)
    }

    /// Waits (until `deadline`) for some node to be known as leader.
    pub(super) async fn await_leader(&self, deadline: Instant) -> Result<Leadership, Status> {
        loop {
            match self.leadership() {
                Leadership::Unknown => {}
                known => return Ok(known),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Status::unavailable(
                    "no leader elected within the request deadline",
                ));
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            // Wait on exactly what `leadership` needs: waiting for "some
            // leader is named" would return at once while the named leader
            // is unusable (a leader that removed itself is still named until
            // the next election), and this loop would spin, starving the
            // node's runtime so it could not even answer vote requests.
            let me = self.id;
            let known = self
                .raft
                .wait(Some(wait))
                .metrics(
                    move |m| !matches!(leadership_of(m, me), Leadership::Unknown),
                    "a usable leader",
                )
                .await;
            // A stopped Raft answers at once, forever: waiting on it in a
            // loop would spin until the deadline (and hold up shutdown).
            if let Err(WaitError::ShuttingDown) = known {
                return Err(Status::unavailable("node is shutting down"));
            }
        }
    }

    /// Confirms with a quorum that this node still leads, and waits until
    /// its state machine has applied everything committed before the
    /// confirmation (Raft's read index). Every linearizable answer (`get`,
    /// `IsLeader`, partition listings) goes through here.
    ///
    /// Under the leader's read lease this returns at once; `Ok(true)` then
    /// says so, and a read must check `read_index.lease_holds()` after
    /// reading (see [`NodeState::read_linearizable`]).
    pub(super) async fn confirm_leadership(&self, deadline: Instant) -> Result<bool, Unconfirmed> {
        // Shared with every read waiting at the same time (read_index.rs).
        unconfirmed(self.read_index.confirm(deadline).await)
    }

    /// As [`Self::confirm_leadership`], always by a round with a quorum
    /// (for reads that take long: listings, backups).
    pub(super) async fn confirm_leadership_by_round(
        &self,
        deadline: Instant,
    ) -> Result<(), Unconfirmed> {
        unconfirmed(self.read_index.confirm_by_round(deadline).await).map(|_| ())
    }

    /// Runs `read` (of `key`) at a linearizable point: after a
    /// confirmation, and, if a lease confirmed it, with the lease still
    /// holding once `read` returned; otherwise confirms by a round and
    /// reads again. (`key` only names the read for fault injection.)
    pub(super) async fn read_linearizable<T>(
        &self,
        deadline: Instant,
        key: &[u8],
        read: impl Fn() -> T,
    ) -> Result<T, Unconfirmed> {
        if self.confirm_leadership(deadline).await? {
            if let Some(hold) = self.faults.take_read_stall(self.id, key) {
                tokio::time::sleep(hold).await;
            }
            let value = read();
            if self.read_index.lease_holds() {
                return Ok(value);
            }
        }
        self.confirm_leadership_by_round(deadline).await?;
        Ok(read())
    }

    /// The Ravel-specific RPCs are served by the leader only; callers (the
    /// admin) find the leader themselves.
    pub(super) fn leader_only(&self) -> Result<(), Status> {
        match self.leadership() {
            Leadership::Local => Ok(()),
            other => Err(self.not_leader(&other)),
        }
    }

    /// `UNAVAILABLE` naming the leader (message and `x-ravel-leader`).
    pub(super) fn not_leader(&self, leader: &Leadership) -> Status {
        match leader {
            Leadership::Remote { addr, .. } => {
                let mut s = Status::unavailable(format!("not the leader; the leader is {addr}"));
                if let Ok(v) = addr.parse() {
                    s.metadata_mut().insert(metadata::LEADER, v);
                }
                s
            }
            _ => Status::unavailable("not the leader, and no leader is known"),
        }
    }

    fn client(&self, addr: &str) -> Result<RavelNodeClient<Channel>, Status> {
        Ok(
            RavelNodeClient::new(self.pool.channel(addr).map_err(transport_status)?)
                .max_decoding_message_size(ravel_proto::limits::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(ravel_proto::limits::MAX_MESSAGE_BYTES),
        )
    }

    /// Resolves once Raft names a usable leader other than `leader`.
    async fn leader_moves_from(&self, leader: NodeId) {
        let me = self.id;
        let mut metrics = self.raft.metrics();
        let _ = metrics
            .wait_for(|m| match leadership_of(m, me) {
                Leadership::Local => true,
                Leadership::Remote { id, .. } => id != leader,
                Leadership::Unknown => false,
            })
            .await;
    }

    /// Sends a request to the leader on behalf of a client, marked as
    /// forwarded, with the client's remaining deadline. If another leader
    /// is elected meanwhile (the one we forwarded to was cut off or paused),
    /// gives up on this attempt with [`Forward::LeaderChanged`]: the caller
    /// sends it again to the new leader (writes carry their request id, so
    /// they take effect once, and the ring generation they were routed by).
    pub(super) async fn forward<Req, Resp, F, Fut>(
        &self,
        leader: NodeId,
        addr: &str,
        body: Req,
        tags: Tags,
        deadline: Instant,
        call: F,
    ) -> Result<Response<Resp>, Forward>
    where
        F: FnOnce(RavelNodeClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        // A follower cut off from its leader would only hold the client
        // to its deadline: refuse at once, nothing sent (not applied), so
        // the client may try another replica.
        if let Some(silent) = self.leader_contact.lost_confirmed(&self.raft).await {
            return Err(Forward::Failed(Status::unavailable(format!(
                "this replica has heard from no leader for {} ms (cut off from its cluster?); not forwarded, not applied",
                silent.as_millis()
            ))));
        }
        self.faults
            .check(self.id, leader)
            .await
            .map_err(|e| Forward::Failed(transport_status(e)))?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut req = Request::new(body);
        req.set_timeout(remaining);
        req.metadata_mut()
            .insert(metadata::FORWARDED, MetadataValue::from_static("1"));
        if let Some(id) = tags.id {
            id.insert(req.metadata_mut());
        }
        if let Some(epoch) = tags.epoch {
            metadata::insert_ring_epoch(req.metadata_mut(), epoch);
        }
        let client = self.client(addr).map_err(Forward::Failed)?;
        let answer = tokio::select! {
            r = tokio::time::timeout(remaining, call(client, req)) => r,
            _ = self.leader_moves_from(leader) => return Err(Forward::LeaderChanged),
            silent = self.leader_contact.lost_confirmed_wait(&self.raft) => {
                return Err(Forward::Failed(Status::unavailable(format!(
                    "this replica lost contact with leader {addr} ({} ms silent) while the request was forwarded; the request's outcome is unknown",
                    silent.as_millis()
                ))))
            }
        };
        let mut resp = match answer {
            Err(_) => {
                return Err(Forward::Failed(Status::deadline_exceeded(format!(
                    "leader {addr} did not answer the forwarded request in time; it may still be applied"
                ))))
            }
            Ok(Err(s)) => return Err(Forward::Failed(broken_call_status(s, addr))),
            Ok(Ok(r)) => r,
        };
        if !resp.metadata().contains_key(metadata::LEADER) {
            set_leader(&mut resp, addr);
        }
        Ok(resp)
    }
}

/// What a forwarded request carries besides its body: a write's identity
/// (the same on every attempt) and the ring generation it was routed by.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tags {
    pub id: Option<RequestId>,
    pub epoch: Option<u64>,
}

/// Why a forwarded call did not produce the leader's answer.
pub(super) enum Forward {
    /// Another leader was elected while we waited: send it again there.
    LeaderChanged,
    /// The leader answered with this status, or the call failed.
    Failed(Status),
}

/// A call that broke off (connection reset, the leader died mid-request)
/// surfaces from tonic as `UNKNOWN: transport error` or `CANCELLED`: to the
/// client that is unavailability whose outcome is unknown, and says so.
/// Statuses the leader itself sent pass through.
pub(super) fn broken_call_status(s: Status, addr: &str) -> Status {
    if ravel_transport::is_broken_call(&s) {
        Status::unavailable(format!(
            "the call to leader {addr} broke off ({}); the request's outcome is unknown",
            s.message()
        ))
    } else {
        s
    }
}

/// Whether a request arrived forwarded by a follower.
pub(super) fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(metadata::FORWARDED)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::{BasicNode, Membership, StoredMembership};

    use super::*;

    fn metrics(me: NodeId, leader: Option<NodeId>, state: ServerState) -> RaftMetrics {
        let mut m = RaftMetrics::new_initial(me);
        m.current_leader = leader;
        m.state = state;
        let nodes: BTreeMap<NodeId, BasicNode> = [1, 2, 3]
            .into_iter()
            .map(|id| (id, BasicNode::new(format!("10.0.0.{id}:7000"))))
            .collect();
        let membership = Membership::new(vec![nodes.keys().copied().collect()], nodes);
        m.membership_config = std::sync::Arc::new(StoredMembership::new(None, membership));
        m
    }

    /// A node that Raft names as leader but that has not finished becoming
    /// leader neither serves nor names itself to clients ("the leader is
    /// <my own address>" sent them in a loop): it is `Unknown` until it
    /// leads, so requests wait for it instead.
    #[test]
    fn a_node_becoming_leader_never_names_itself() {
        for state in [
            ServerState::Candidate,
            ServerState::Follower,
            ServerState::Learner,
        ] {
            assert!(matches!(
                leadership_of(&metrics(1, Some(1), state), 1),
                Leadership::Unknown
            ));
        }
        assert!(matches!(
            leadership_of(&metrics(1, Some(1), ServerState::Leader), 1),
            Leadership::Local
        ));
        assert!(matches!(
            leadership_of(&metrics(1, Some(2), ServerState::Follower), 1),
            Leadership::Remote { id: 2, .. }
        ));
        // A leader that is no longer a member is not forwarded to.
        assert!(matches!(
            leadership_of(&metrics(1, Some(9), ServerState::Follower), 1),
            Leadership::Unknown
        ));
    }
}
