//! Elections with a pre-vote round (Raft dissertation, section 9.6).
//!
//! openraft 0.9 has no pre-vote. A replica cut off from its leader (a
//! partition, a pause, a one-way cut) times out and stands for election
//! over and over, raising its term each time. When it can talk again, its
//! answers carry the higher term and the working leader steps down: the
//! cluster loses its leader for an election although nothing was wrong
//! with it. The chaos runs measured windows of up to 3 s without a
//! successful operation from exactly this.
//!
//! So Ravel drives elections itself (openraft's `enable_elect` is off):
//!
//! - A voter that has not heard from a leader (nor voted, nor stood) for a
//!   randomised election timeout asks every other voter for a **pre-vote**:
//!   "would you vote for me in the next term?". Answering changes nothing.
//! - A voter grants it only if it would grant the real vote: it is not the
//!   leader, its leader lease has expired (it has heard from no leader for
//!   openraft's lease), the candidate's vote in the next term is at least
//!   its own, and the candidate's log is at least as up to date as its own.
//!   These are the checks openraft's own vote handler makes.
//! - Only with a majority of pre-votes (a majority of each configuration,
//!   during a joint change) does the candidate start the real election
//!   (`raft.trigger().elect()`), raising its term.
//!
//! A replica that cannot reach a majority therefore never raises its term,
//! and returns to a cluster without disturbing it. The timings: a voter
//! stands once it has heard from no leader for `election_timeout_min..max`
//! (randomised per period, so that two voters rarely stand at once), and
//! openraft's leader lease, during which voters refuse real votes, is
//! `election_timeout_min`: a dead leader is replaced about
//! `election_timeout_min..max` after its last heartbeat.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::{BasicNode, ServerState};
use rand::Rng;
use ravel_consensus::types::{LogId, NodeId, Raft, Vote};
use ravel_consensus::LogStore;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::GrpcRaftNetwork;
use crate::contact::LeaderContact;
use crate::lease::ReadLease;
use crate::metrics::NodeMetrics;

/// "Would you vote for me in `term`?"
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The term the candidate would stand in: its current term plus one.
    pub term: u64,
    /// The candidate's last log entry.
    pub last_log_id: Option<LogId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
    /// Why, for the logs.
    pub reason: String,
}

impl PreVoteResponse {
    pub fn granted(reason: impl Into<String>) -> Self {
        Self {
            granted: true,
            reason: reason.into(),
        }
    }

    pub fn refused(reason: impl Into<String>) -> Self {
        Self {
            granted: false,
            reason: reason.into(),
        }
    }
}

/// The election timings, from the node's `[raft]` settings.
#[derive(Debug, Clone, Copy)]
pub struct ElectionTiming {
    /// How often the driver looks (the heartbeat interval).
    pub tick: Duration,
    /// A voter stands after hearing from no leader for a random time in
    /// `timeout_min..=timeout_max`.
    pub timeout_min: Duration,
    pub timeout_max: Duration,
}

impl ElectionTiming {
    fn draw(&self) -> Duration {
        let lo = self.timeout_min.as_millis() as u64;
        let hi = self.timeout_max.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(lo..=hi.max(lo)))
    }
}

/// What the driver and the pre-vote answer need from the Raft core.
#[derive(Debug, Clone)]
struct Local {
    state: ServerState,
    vote: Vote,
    /// When the vote was last granted, changed or renewed by a leader's
    /// message (openraft's election timer and lease both start here).
    vote_changed: Option<Instant>,
    voters: BTreeMap<NodeId, BasicNode>,
    /// One voter set, or two during a joint change.
    configs: Vec<BTreeSet<NodeId>>,
}

async fn local(raft: &Raft) -> Option<Local> {
    raft.with_raft_state(|st| {
        let effective = st.membership_state.effective();
        Local {
            state: st.server_state,
            vote: *st.vote_ref(),
            vote_changed: st.vote_last_modified(),
            voters: effective
                .voter_ids()
                .filter_map(|id| effective.get_node(&id).map(|n| (id, n.clone())))
                .collect(),
            configs: effective.membership().get_joint_config().clone(),
        }
    })
    .await
    .ok()
}

/// The last entry of this replica's log (appends queued to the log's writer
/// included, as in openraft's own view of the log).
pub(crate) async fn last_log_id(log: &LogStore) -> Result<Option<LogId>, String> {
    use openraft::storage::RaftLogStorage;
    let mut log = log.clone();
    log.get_log_state()
        .await
        .map(|s| s.last_log_id)
        .map_err(|e| format!("reading the log: {e}"))
}

/// Answers a pre-vote, with the checks openraft's vote handler makes.
pub async fn answer(
    raft: &Raft,
    log: &LogStore,
    lease: Duration,
    votes: &ReadLease,
    req: &PreVoteRequest,
) -> PreVoteResponse {
    // The real vote would be refused (a read lease, a recent start).
    if let Err(why) = votes.would_refuse_vote(Instant::now()) {
        return PreVoteResponse::refused(why);
    }
    let Some(me) = local(raft).await else {
        return PreVoteResponse::refused("Raft is not running");
    };
    decide(&me, lease, Instant::now(), req, last_log_id(log).await)
}

fn decide(
    me: &Local,
    lease: Duration,
    now: Instant,
    req: &PreVoteRequest,
    mine: Result<Option<LogId>, String>,
) -> PreVoteResponse {
    if me.state == ServerState::Leader {
        return PreVoteResponse::refused(format!("I lead term {}", me.vote.leader_id().term));
    }
    if me.vote.is_committed() {
        if let Some(at) = me.vote_changed {
            let since = now.saturating_duration_since(at);
            if since <= lease {
                return PreVoteResponse::refused(format!(
                    "heard from leader {} {} ms ago",
                    me.vote.leader_id().voted_for().unwrap_or_default(),
                    since.as_millis()
                ));
            }
        }
    }
    // Votes are partially ordered: incomparable counts as not newer, as in
    // openraft's own check.
    let theirs = Vote::new(req.term, req.candidate);
    let newer = matches!(
        theirs.partial_cmp(&me.vote),
        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
    );
    if !newer {
        return PreVoteResponse::refused(format!("my vote {} is newer", me.vote));
    }
    let mine = match mine {
        Ok(l) => l,
        Err(e) => return PreVoteResponse::refused(e),
    };
    if req.last_log_id < mine {
        return PreVoteResponse::refused(format!(
            "my log is ahead: {:?} > {:?}",
            mine, req.last_log_id
        ));
    }
    PreVoteResponse::granted("lease expired and your log is up to date")
}

/// Whether the granted set holds a majority of every configuration.
fn is_quorum(configs: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    configs
        .iter()
        .all(|c| c.iter().filter(|id| granted.contains(id)).count() * 2 > c.len())
}

/// What the election driver works with.
pub struct Elector {
    pub raft: Raft,
    pub id: NodeId,
    pub log: LogStore,
    pub network: GrpcRaftNetwork,
    pub timing: ElectionTiming,
    pub metrics: std::sync::Arc<NodeMetrics>,
    /// Told when this replica last heard from a leader.
    pub contact: LeaderContact,
    /// Keeps leaders' messages out while the driver decides to stand.
    pub lease: std::sync::Arc<ReadLease>,
}

/// Drives this replica's elections until `shutdown`.
pub async fn run(elector: Elector, shutdown: CancellationToken) {
    let Elector {
        raft,
        id,
        log,
        network,
        timing,
        metrics,
        contact,
        lease,
    } = elector;
    let started = Instant::now();
    let mut timeout = timing.draw();
    let mut period_start: Option<Instant> = None;
    let mut ticks = tokio::time::interval(timing.tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(me) = local(&raft).await else {
            // Raft stopped; the node's supervisor reports it.
            return;
        };
        contact.record(crate::contact::heard_at(me.state, me.vote_changed));
        if me.state == ServerState::Leader || !me.voters.contains_key(&id) {
            continue;
        }
        if me.voters.len() == 1 {
            // The only voter needs nobody's vote (openraft does the same).
            if me.state != ServerState::Candidate {
                let _ = raft.trigger().elect().await;
            }
            continue;
        }
        let since = me.vote_changed.unwrap_or(started);
        if period_start != Some(since) {
            // A new period (a leader's message, a vote): a new timeout.
            period_start = Some(since);
            timeout = timing.draw();
        }
        if Instant::now().saturating_duration_since(since) < timeout {
            continue;
        }
        // Spread the attempts of voters that timed out together.
        let jitter = rand::rng().random_range(0..=timing.tick.as_millis() as u64 / 2);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        let last = match last_log_id(&log).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot stand for election");
                continue;
            }
        };
        let req = PreVoteRequest {
            candidate: id,
            term: me.vote.leader_id().term + 1,
            last_log_id: last,
        };
        if !pre_vote(&network, id, &me, &req, timing.timeout_min).await {
            metrics.pre_vote(false);
            continue;
        }
        metrics.pre_vote(true);
        // A leader may have been heard from (or a vote granted) while the
        // pre-votes were out: standing now would only disturb it. No
        // leader's message reaches openraft from this check until this
        // replica stands (a leader's lease may count on it otherwise).
        let _standing = lease.standing().await;
        match local(&raft).await {
            Some(now)
                if now.vote_changed == me.vote_changed && now.state != ServerState::Leader =>
            {
                tracing::info!(term = req.term, "pre-vote won; standing for election");
                let _ = raft.trigger().elect().await;
            }
            _ => tracing::debug!("pre-vote won, but a leader was heard from meanwhile"),
        }
    }
}

/// Asks every other voter; true once a quorum (counting this one) grants.
async fn pre_vote(
    network: &GrpcRaftNetwork,
    id: NodeId,
    me: &Local,
    req: &PreVoteRequest,
    ttl: Duration,
) -> bool {
    let mut granted = BTreeSet::from([id]);
    let mut calls = tokio::task::JoinSet::new();
    for (v, node) in me.voters.iter().filter(|(v, _)| **v != id) {
        let peer = network.peer(*v, node);
        let (v, req) = (*v, req.clone());
        calls.spawn(async move { (v, peer.pre_vote(&req, ttl).await) });
    }
    while let Some(done) = calls.join_next().await {
        let Ok((voter, answer)) = done else { continue };
        match answer {
            Ok(a) if a.granted => {
                granted.insert(voter);
                if is_quorum(&me.configs, &granted) {
                    return true;
                }
            }
            Ok(a) => tracing::debug!(voter, reason = %a.reason, "pre-vote refused"),
            Err(e) => tracing::debug!(voter, error = %e, "no pre-vote answer"),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn follower(vote: Vote, heard_ms_ago: Option<u64>, now: Instant) -> Local {
        Local {
            state: ServerState::Follower,
            vote,
            vote_changed: heard_ms_ago.map(|ms| now - Duration::from_millis(ms)),
            voters: BTreeMap::new(),
            configs: vec![BTreeSet::from([1, 2, 3])],
        }
    }

    fn committed(term: u64, leader: NodeId) -> Vote {
        let mut v = Vote::new(term, leader);
        v.commit();
        v
    }

    fn log(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 0), index))
    }

    const LEASE: Duration = Duration::from_millis(250);

    fn ask(term: u64, last: Option<LogId>) -> PreVoteRequest {
        PreVoteRequest {
            candidate: 2,
            term,
            last_log_id: last,
        }
    }

    #[test]
    fn a_voter_that_hears_from_its_leader_refuses() {
        let now = Instant::now();
        let me = follower(committed(3, 1), Some(100), now);
        let a = decide(&me, LEASE, now, &ask(4, log(3, 10)), Ok(log(3, 10)));
        assert!(!a.granted, "{a:?}");
        assert!(a.reason.contains("heard from leader 1"), "{}", a.reason);
    }

    #[test]
    fn a_voter_whose_lease_expired_grants_an_up_to_date_candidate() {
        let now = Instant::now();
        let me = follower(committed(3, 1), Some(400), now);
        let a = decide(&me, LEASE, now, &ask(4, log(3, 10)), Ok(log(3, 10)));
        assert!(a.granted, "{a:?}");
    }

    #[test]
    fn a_candidate_behind_in_the_log_is_refused() {
        let now = Instant::now();
        let me = follower(committed(3, 1), Some(400), now);
        let a = decide(&me, LEASE, now, &ask(4, log(3, 9)), Ok(log(3, 10)));
        assert!(!a.granted);
        let a = decide(&me, LEASE, now, &ask(4, log(2, 12)), Ok(log(3, 10)));
        assert!(!a.granted, "a higher index in an older term is behind");
    }

    #[test]
    fn a_candidate_whose_next_term_is_not_newer_is_refused() {
        let now = Instant::now();
        // This voter already voted for 3 in term 5; 2 would stand in 5.
        let me = follower(Vote::new(5, 3), Some(400), now);
        let a = decide(&me, LEASE, now, &ask(5, log(3, 10)), Ok(log(3, 10)));
        assert!(!a.granted, "{a:?}");
        let a = decide(&me, LEASE, now, &ask(6, log(3, 10)), Ok(log(3, 10)));
        assert!(a.granted, "{a:?}");
    }

    #[test]
    fn the_leader_refuses_and_an_unreadable_log_refuses() {
        let now = Instant::now();
        let mut me = follower(committed(3, 2), Some(400), now);
        me.state = ServerState::Leader;
        assert!(!decide(&me, LEASE, now, &ask(4, log(3, 10)), Ok(None)).granted);
        let me = follower(committed(3, 1), None, now);
        let a = decide(&me, LEASE, now, &ask(4, log(3, 10)), Err("disk".into()));
        assert!(!a.granted);
    }

    #[test]
    fn a_quorum_is_a_majority_of_every_configuration() {
        let one = vec![BTreeSet::from([1, 2, 3])];
        assert!(!is_quorum(&one, &BTreeSet::from([1])));
        assert!(is_quorum(&one, &BTreeSet::from([1, 3])));
        let joint = vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([3, 4, 5])];
        assert!(!is_quorum(&joint, &BTreeSet::from([1, 2])));
        assert!(is_quorum(&joint, &BTreeSet::from([1, 3, 4])));
    }
}
