//! Leader leases for linearizable reads, and the vote refusals that make
//! them safe.
//!
//! A read-index round (`read_index.rs`) confirms leadership with a quorum:
//! the leader sends every voter a heartbeat and waits for a majority of
//! answers. Under load that is two RPCs per round, and rounds run back to
//! back: most of a follower's work while the leader serves reads.
//!
//! A lease lets reads skip the round. If a round that *started* at `t0`
//! succeeded, a quorum `Q` of voters (the leader included) accepted a
//! heartbeat sent after `t0`, and then:
//!
//! - every follower in `Q` refuses votes until at least `t0 + L`, where `L`
//!   is openraft's leader lease (`election_timeout_min`): openraft renews a
//!   follower's lease on every heartbeat it accepts and rejects vote
//!   requests until it expires;
//! - nor does it vote for itself: Ravel's election driver stands only after
//!   hearing from no leader for at least `L`, and its last check and its
//!   standing exclude leaders' messages ([`ReadLease::standing`]);
//! - a follower that restarts forgets that lease, so a replica refuses votes
//!   for `L` after it starts ([`ReadLease::admit_vote`]);
//! - the leader itself refuses votes until `t0 + L`, and a round does not
//!   grant a lease if any vote was let through since the round started;
//! - a replica that would refuse a vote refuses the pre-vote too.
//!
//! Any majority intersects `Q`, so no other replica can be elected before
//! `t0 + L`; no other leader can acknowledge a write before then. The
//! leader acknowledges a write only after applying it, and a round has
//! applied everything earlier leaders committed, so until `t0 + lease`
//! (`lease` < `L`) its own state machine holds every acknowledged write: a
//! read served from it is linearizable without a round.
//!
//! `lease` is `3/4 L`: the rest covers clock-rate differences between
//! machines (monotonic clocks drift by parts per million, not 25%). A read
//! checks the lease again after reading (a process stalled past its lease
//! between the check and the read may have missed a rival's writes) and
//! falls back to a round if it has lapsed. Reads that take long (partition
//! listings, backups) always use a round. Assumed away: a machine
//! suspended while leading (the monotonic clock stops during suspend). A lease is tied to the term
//! and the membership it was confirmed in; a change of either ends it.
//! When a lease has less than half of its time left, the next read starts
//! a round in the background, so under steady load reads never wait for
//! one: about one round every `lease / 2` instead of hundreds a second.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What a lease is tied to: a term and a membership (its log index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    pub term: u64,
    pub membership: Option<u64>,
}

/// A replica's read lease and vote gate. Shared by the read index and the
/// Raft service's vote handler.
#[derive(Debug)]
pub struct ReadLease {
    /// How long a confirmed round's lease lasts from the round's start
    /// (`None`: lease reads are off; every read waits for a round).
    duration: Option<Duration>,
    /// openraft's leader lease: how long a replica refuses votes after it
    /// starts.
    quiet_after_start: Duration,
    started: Instant,
    state: Mutex<State>,
    /// Held (shared) while a leader's message that renews openraft's lease
    /// (AppendEntries, a snapshot install) is handed to openraft, and
    /// (exclusively) while the election driver checks it has heard from no
    /// leader and stands. Without it a heartbeat could be acknowledged
    /// between that check and the election: the leader would count this
    /// replica towards its lease while it votes for itself, which
    /// openraft's lease does not stop.
    leader_messages: tokio::sync::RwLock<()>,
}

#[derive(Debug, Default)]
struct State {
    held: Option<Held>,
    /// Vote requests let through to openraft so far.
    votes_admitted: u64,
    /// Of those, the ones openraft has not answered yet.
    votes_in_flight: u32,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    /// When the confirming round started. Reads are served until `at +
    /// duration`; votes are refused until `at` plus openraft's lease, as
    /// long as the followers that acknowledged the round refuse them: later
    /// than the reads, so that a read checked just before its lease ends
    /// and served just after still has no rival.
    at: Instant,
    epoch: Epoch,
}

/// Taken when a round starts; turned into a lease if the round succeeds.
#[derive(Debug, Clone, Copy)]
pub struct RoundStart {
    at: Instant,
    votes_admitted: u64,
    votes_in_flight: u32,
}

/// Whether a read may be served without a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseCheck {
    /// No lease (expired, off, or another term or membership).
    None,
    /// A lease holds; `renew`: less than half of it is left.
    Held { renew: bool },
}

impl ReadLease {
    /// `duration`: a confirmed round's read lease (`None`: off).
    /// `openraft_lease`: how long voters refuse votes after a heartbeat.
    pub fn new(duration: Option<Duration>, openraft_lease: Duration) -> Self {
        Self::starting_at(duration, openraft_lease, Instant::now())
    }

    fn starting_at(duration: Option<Duration>, openraft_lease: Duration, now: Instant) -> Self {
        Self {
            duration,
            quiet_after_start: openraft_lease,
            started: now,
            state: Mutex::default(),
            leader_messages: tokio::sync::RwLock::new(()),
        }
    }

    /// Held while a leader's message is handed to openraft.
    pub async fn leader_message(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.leader_messages.read().await
    }

    /// Held while the election driver decides to stand and stands: no
    /// leader's message reaches openraft meanwhile.
    pub async fn standing(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.leader_messages.write().await
    }

    /// The read lease for `openraft_lease` (openraft's `leader_lease`):
    /// three quarters of it.
    pub fn duration_for(openraft_lease: Duration) -> Duration {
        openraft_lease * 3 / 4
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A round is about to ask the quorum.
    pub fn round_starts(&self) -> RoundStart {
        let st = self.state();
        RoundStart {
            at: Instant::now(),
            votes_admitted: st.votes_admitted,
            votes_in_flight: st.votes_in_flight,
        }
    }

    /// The round that began at `start` confirmed leadership, in `epoch`
    /// both when it started and when it finished. Grants a lease unless a
    /// vote was being handled when the round started or was let through
    /// since (this leader may have voted for someone else meanwhile).
    pub fn round_confirmed(&self, start: RoundStart, epoch: Epoch) {
        if self.duration.is_none() {
            return;
        }
        let mut st = self.state();
        if st.votes_admitted != start.votes_admitted || start.votes_in_flight > 0 {
            st.held = None;
            return;
        }
        if st.held.is_none_or(|h| h.epoch != epoch || h.at < start.at) {
            st.held = Some(Held {
                at: start.at,
                epoch,
            });
        }
    }

    /// Whether a read arriving `now`, while this replica leads in `epoch`,
    /// may be served from the local state machine.
    pub fn check(&self, now: Instant, epoch: Epoch) -> LeaseCheck {
        let Some(duration) = self.duration else {
            return LeaseCheck::None;
        };
        match self.state().held {
            Some(h) if h.epoch == epoch && now < h.at + duration => LeaseCheck::Held {
                renew: (h.at + duration).saturating_duration_since(now) < duration / 2,
            },
            _ => LeaseCheck::None,
        }
    }

    /// Called before a vote request reaches openraft: `Err(why)` refuses
    /// it. A replica refuses votes while it holds a read lease, and for
    /// openraft's lease after it started (it may have acknowledged a
    /// leader's heartbeat just before it stopped). Hold the returned guard
    /// until openraft has answered the vote.
    pub fn admit_vote(&self, now: Instant) -> Result<VoteInFlight<'_>, String> {
        let mut st = self.state();
        self.refuses_votes(&st, now)?;
        st.votes_admitted += 1;
        st.votes_in_flight += 1;
        st.held = None;
        Ok(VoteInFlight(self))
    }

    /// Whether a vote arriving `now` would be refused, and why; changes
    /// nothing (pre-votes ask it: a replica that would refuse the real
    /// vote refuses the pre-vote too, so no candidate raises its term for
    /// an election it cannot win).
    pub fn would_refuse_vote(&self, now: Instant) -> Result<(), String> {
        self.refuses_votes(&self.state(), now)
    }

    fn refuses_votes(&self, st: &State, now: Instant) -> Result<(), String> {
        let since_start = now.saturating_duration_since(self.started);
        if since_start < self.quiet_after_start {
            return Err(format!(
                "started {} ms ago: no votes for the first {} ms (a leader may still hold a lease this replica acknowledged)",
                since_start.as_millis(),
                self.quiet_after_start.as_millis()
            ));
        }
        if let Some(h) = st.held {
            if now < h.at + self.quiet_after_start {
                return Err(format!(
                    "this replica leads and its read lease was confirmed {} ms ago",
                    now.saturating_duration_since(h.at).as_millis()
                ));
            }
        }
        Ok(())
    }
}

/// A vote request openraft is handling.
#[derive(Debug)]
pub struct VoteInFlight<'a>(&'a ReadLease);

impl Drop for VoteInFlight<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.votes_in_flight = st.votes_in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Duration = Duration::from_millis(200);
    const EPOCH: Epoch = Epoch {
        term: 3,
        membership: Some(7),
    };

    fn lease(now: Instant) -> ReadLease {
        ReadLease::starting_at(Some(ReadLease::duration_for(L)), L, now - L)
    }

    #[test]
    fn a_confirmed_round_grants_a_lease_from_its_start() {
        let t0 = Instant::now();
        let l = lease(t0);
        assert_eq!(l.check(t0, EPOCH), LeaseCheck::None, "no round yet");
        let start = l.round_starts();
        l.round_confirmed(start, EPOCH);
        let d = ReadLease::duration_for(L);
        assert_eq!(
            l.check(start.at + d / 4, EPOCH),
            LeaseCheck::Held { renew: false }
        );
        assert_eq!(
            l.check(start.at + d * 3 / 4, EPOCH),
            LeaseCheck::Held { renew: true },
            "less than half left: renew"
        );
        assert_eq!(l.check(start.at + d, EPOCH), LeaseCheck::None, "expired");
    }

    #[test]
    fn a_lease_is_tied_to_its_term_and_membership() {
        let l = lease(Instant::now());
        let start = l.round_starts();
        l.round_confirmed(start, EPOCH);
        let now = start.at;
        let next_term = Epoch {
            term: EPOCH.term + 1,
            ..EPOCH
        };
        let new_members = Epoch {
            membership: Some(9),
            ..EPOCH
        };
        assert_eq!(l.check(now, next_term), LeaseCheck::None);
        assert_eq!(l.check(now, new_members), LeaseCheck::None);
        assert_eq!(l.check(now, EPOCH), LeaseCheck::Held { renew: false });
    }

    #[test]
    fn a_leader_refuses_votes_while_its_lease_holds() {
        let l = lease(Instant::now());
        let start = l.round_starts();
        l.round_confirmed(start, EPOCH);
        let why = l.admit_vote(start.at).unwrap_err();
        assert!(why.contains("read lease"), "{why}");
        assert!(l.would_refuse_vote(start.at).is_err());
        // Past the read lease, votes are still refused until openraft's
        // lease from the round's start: a read checked just before the
        // lease ended may still be reading.
        let read_lease_end = start.at + ReadLease::duration_for(L);
        assert_eq!(l.check(read_lease_end, EPOCH), LeaseCheck::None);
        assert!(l.admit_vote(read_lease_end).is_err());
        let later = start.at + L;
        assert!(l.would_refuse_vote(later).is_ok());
        assert!(l.admit_vote(later).is_ok());
        assert_eq!(l.check(later, EPOCH), LeaseCheck::None);
    }

    #[test]
    fn a_vote_let_through_during_a_round_denies_its_lease() {
        let now = Instant::now();
        let l = lease(now);
        let start = l.round_starts();
        // This replica may have voted for a rival while the round was out.
        drop(l.admit_vote(now).unwrap());
        l.round_confirmed(start, EPOCH);
        assert_eq!(l.check(now, EPOCH), LeaseCheck::None);
        // A vote admitted before a round started and still being handled
        // may be granted while the round is out.
        let voting = l.admit_vote(now).unwrap();
        let start = l.round_starts();
        drop(voting);
        l.round_confirmed(start, EPOCH);
        assert_eq!(l.check(now, EPOCH), LeaseCheck::None);
        // The next round, with no vote meanwhile, grants one.
        let start = l.round_starts();
        l.round_confirmed(start, EPOCH);
        assert_eq!(l.check(start.at, EPOCH), LeaseCheck::Held { renew: false });
    }

    #[test]
    fn a_replica_refuses_votes_for_openrafts_lease_after_it_starts() {
        let t = Instant::now();
        let l = ReadLease::starting_at(None, L, t);
        let why = l.admit_vote(t + L / 2).unwrap_err();
        assert!(why.contains("no votes for the first 200 ms"), "{why}");
        assert!(l.would_refuse_vote(t + L / 2).is_err());
        assert!(l.admit_vote(t + L).is_ok());
    }

    #[test]
    fn with_leases_off_no_read_skips_a_round() {
        let l = ReadLease::starting_at(None, L, Instant::now() - L);
        let start = l.round_starts();
        l.round_confirmed(start, EPOCH);
        assert_eq!(l.check(start.at, EPOCH), LeaseCheck::None);
        // Votes are still gated only by the start-up quiet time.
        assert!(l.admit_vote(Instant::now()).is_ok());
    }
}
