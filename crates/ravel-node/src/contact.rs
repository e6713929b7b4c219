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
        self.fresh_for(m.state, m.millis_since_quorum_ack).is_some()
    }

    /// How long a node in `state`, last acknowledged by a majority
    /// `millis_since_quorum_ack` ago, stays a leader in contact if no
    /// majority acknowledges it meanwhile; `None`: it is not one now.
    fn fresh_for(
        &self,
        state: ServerState,
        millis_since_quorum_ack: Option<u64>,
    ) -> Option<Duration> {
        if state != ServerState::Leader {
            return None;
        }
        match millis_since_quorum_ack {
            None => Some(self.max_age),
            Some(ms) => self
                .max_age
                .checked_sub(Duration::from_millis(ms))
                .filter(|d| !d.is_zero()),
        }
    }

    /// Whether a node in `state`, last acknowledged by a majority
    /// `millis_since_quorum_ack` ago, is a leader that no majority
    /// acknowledged within the longest election timeout.
    pub fn stale(&self, state: ServerState, millis_since_quorum_ack: Option<u64>) -> bool {
        state == ServerState::Leader && self.fresh_for(state, millis_since_quorum_ack).is_none()
    }

    /// Whether this node leads and a majority acknowledged it recently.
    pub fn fresh(&self, raft: &Raft) -> bool {
        self.fresh_in(&raft.metrics().borrow())
    }

    /// How long this node stays a leader in contact with a majority if none
    /// acknowledges it meanwhile, as Raft's data and server metrics say now;
    /// `None`: it is not one now.
    fn fresh_now(&self, raft: &Raft) -> Option<Duration> {
        let state = raft.server_metrics().borrow().state;
        let ms = raft.data_metrics().borrow().millis_since_quorum_ack;
        self.fresh_for(state, ms)
    }

    /// Resolves once this node is no longer a leader in contact with a
    /// majority.
    ///
    /// Waits on a timer set to the moment contact would go stale (checked
    /// again then, against the acknowledgements seen meanwhile) and on
    /// changes of leadership; not on every metrics update, which openraft
    /// sends several times per write and which would wake every proposal
    /// in flight each time.
    pub async fn lost(&self, raft: &Raft) {
        let mut server = raft.server_metrics();
        server.borrow_and_update();
        while let Some(left) = self.fresh_now(raft) {
            tokio::select! {
                // Metrics are as old as the core's last turn (a tick at
                // most): never check more often than every few ms.
                _ = tokio::time::sleep(left.max(MIN_RECHECK)) => {}
                r = server.changed() => if r.is_err() { return },
            }
        }
    }

    /// When [`QuorumContact::lost`]-style watchers should look again at a
    /// node in `state` last acknowledged `millis_since_quorum_ack` ago: when
    /// its contact would go stale (leading, fresh), or after `poll`
    /// (leading, stale: to see it recover); `None` while it does not lead.
    pub fn recheck_in(
        &self,
        state: ServerState,
        millis_since_quorum_ack: Option<u64>,
        poll: Duration,
    ) -> Option<Duration> {
        if state != ServerState::Leader {
            return None;
        }
        Some(
            self.fresh_for(state, millis_since_quorum_ack)
                .map_or(poll, |left| left.max(MIN_RECHECK)),
        )
    }
}

/// The shortest wait between two checks of quorum contact by a timer.
const MIN_RECHECK: Duration = Duration::from_millis(5);

/// When this replica last heard from a leader (openraft's vote time: a
/// leader's message, or a vote granted), as the election driver last read
/// it. A follower whose leader went silent for longer than `max_age` is cut
/// off (or its leader is gone): forwarding a client's request there would
/// only hold the client to its deadline and leave the outcome unknown.
#[derive(Debug, Clone)]
pub struct LeaderContact {
    at: std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    max_age: Duration,
}

impl LeaderContact {
    pub fn new(max_age: Duration) -> Self {
        Self {
            at: Default::default(),
            max_age,
        }
    }

    /// Records the vote time read from Raft (`None`: not yet known).
    pub fn record(&self, at: Option<tokio::time::Instant>) {
        *self.at.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// How long the leader has been silent, if longer than allowed.
    pub fn lost(&self) -> Option<Duration> {
        let at = (*self.at.lock().unwrap_or_else(|p| p.into_inner()))?;
        let age = at.elapsed();
        (age > self.max_age).then_some(age)
    }

    /// Resolves once [`LeaderContact::lost`] holds (checked every 50 ms).
    pub async fn lost_wait(&self) -> Duration {
        loop {
            if let Some(age) = self.lost() {
                return age;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`LeaderContact::lost`], confirmed against Raft's state now. The
    /// recorded time is the election driver's last reading, a tick old or
    /// more on a busy machine: a follower that has just voted for a new
    /// leader, or heard from it, must not refuse as if cut off. (Seen: a
    /// survivor refused a write 601 ms after its leader's SIGKILL, after
    /// the new leader had already accepted one.)
    pub async fn lost_confirmed(&self, raft: &Raft) -> Option<Duration> {
        self.lost()?;
        if let Ok(at) = raft
            .with_raft_state(|st| heard_at(st.server_state, st.vote_last_modified()))
            .await
        {
            self.record(at);
        }
        self.lost()
    }

    /// Resolves once [`LeaderContact::lost_confirmed`] holds.
    pub async fn lost_confirmed_wait(&self, raft: &Raft) -> Duration {
        loop {
            self.lost_wait().await;
            if let Some(age) = self.lost_confirmed(raft).await {
                return age;
            }
        }
    }
}

/// When a replica in `state` last heard from a leader, given when its vote
/// last changed or was refreshed (a leader's message, a vote granted): a
/// leader hears from itself.
pub fn heard_at(
    state: ServerState,
    vote_changed: Option<tokio::time::Instant>,
) -> Option<tokio::time::Instant> {
    match state {
        ServerState::Leader => Some(tokio::time::Instant::now()),
        _ => vote_changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_contact_is_fresh_for_what_is_left_of_its_max_age() {
        let c = QuorumContact::new(Duration::from_millis(1000));
        let leader = ServerState::Leader;
        assert_eq!(
            c.fresh_for(leader, Some(200)),
            Some(Duration::from_millis(800))
        );
        assert_eq!(
            c.fresh_for(leader, None),
            Some(Duration::from_millis(1000)),
            "just elected"
        );
        assert_eq!(
            c.fresh_for(leader, Some(999)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            c.fresh_for(leader, Some(1000)),
            None,
            "as old as the max age: stale"
        );
        assert_eq!(c.fresh_for(leader, Some(5000)), None);
        assert_eq!(
            c.fresh_for(ServerState::Follower, Some(0)),
            None,
            "not leading"
        );

        assert!(!c.stale(leader, Some(999)));
        assert!(c.stale(leader, Some(1000)));
        assert!(
            !c.stale(ServerState::Follower, Some(5000)),
            "only a leader is stale"
        );

        let poll = Duration::from_millis(50);
        assert_eq!(
            c.recheck_in(leader, Some(200), poll),
            Some(Duration::from_millis(800))
        );
        assert_eq!(
            c.recheck_in(leader, Some(999), poll),
            Some(MIN_RECHECK),
            "never busy"
        );
        assert_eq!(
            c.recheck_in(leader, Some(1000), poll),
            Some(poll),
            "stale: poll"
        );
        assert_eq!(c.recheck_in(ServerState::Candidate, Some(0), poll), None);
    }

    // Real time, short: what is measured here is elapsed time itself.
    #[tokio::test]
    async fn contact_is_lost_only_after_max_age_of_silence() {
        let c = LeaderContact::new(Duration::from_millis(60));
        assert_eq!(c.lost(), None, "unknown is not lost");
        c.record(Some(tokio::time::Instant::now()));
        assert_eq!(c.lost(), None);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(c.lost().unwrap() >= Duration::from_millis(80));
        c.record(Some(tokio::time::Instant::now()));
        assert_eq!(c.lost(), None, "heard again");
        let waited = tokio::time::timeout(Duration::from_secs(5), c.lost_wait())
            .await
            .expect("lost within 5 s");
        assert!(waited > Duration::from_millis(60));
    }
}
