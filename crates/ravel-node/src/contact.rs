//! Whether this node, as leader, is still in touch with a majority of its
//! cluster.
//!
//! openraft 0.9 has no "check quorum": a leader cut off from its followers
//! keeps believing it leads until it hears of a higher term, accepting
//! writes it can never commit while the majority elects another leader.
//! Clients that reached it would wait out their whole deadline. openraft
//! does report, with every metrics update (each turn of its core loop, at
//! least every tick), how long ago a majority last acknowledged the leader.
//! Once that is older than an election timeout, the leader answers new
//! writes at once with `UNAVAILABLE` (nothing proposed: the client may go
//! elsewhere) and fails the proposals it has in flight (their outcome is
//! unknown; they are retried under their request id).

use std::time::Duration;

use openraft::ServerState;
use ravel_consensus::types::{Raft, RaftMetrics};

/// The quorum-contact check of one node.
#[derive(Debug, Clone)]
pub struct QuorumContact {
    /// Contact older than this is lost: the longest election timeout, after
    /// which the followers may have elected someone else.
    max_age: Duration,
}

impl QuorumContact {
    pub fn new(max_age: Duration) -> Self {
        Self { max_age }
    }

    /// Whether `m` is a leader that a majority acknowledged recently. A
    /// leader that has not heard from a majority since its election (the
    /// first acknowledgements are a round trip away) gets the benefit of the
    /// doubt: it just won a majority's votes.
    fn fresh_in(&self, m: &RaftMetrics) -> bool {
        m.state == ServerState::Leader
            && m.millis_since_quorum_ack
                .is_none_or(|ms| u128::from(ms) < self.max_age.as_millis())
    }

    /// Whether this node leads and a majority acknowledged it recently.
    pub fn fresh(&self, raft: &Raft) -> bool {
        self.fresh_in(&raft.metrics().borrow())
    }

    /// Resolves once this node is no longer a leader in contact with a
    /// majority.
    pub async fn lost(&self, raft: &Raft) {
        let mut metrics = raft.metrics();
        let _ = metrics.wait_for(|m| !self.fresh_in(m)).await;
    }
}
