//! Batched read index: one leadership confirmation shared by every read
//! that arrived before it started.
//!
//! A linearizable read must see every write acknowledged before the read
//! began. openraft's `ensure_linearizable` gives that: it takes the
//! committed index, confirms with a quorum that this node still leads
//! (one heartbeat round to every follower), and waits until that index is
//! applied. Run per read, 64 concurrent readers mean 64 rounds of
//! heartbeats to each follower.
//!
//! Here a read joins the *next* round: rounds run one after another, and
//! a round takes exactly the reads that were waiting when it started. A
//! round's committed index is taken after each of its reads arrived, so it
//! covers every write acknowledged before any of them began; the reads
//! read the state machine after the round has applied up to it. While one
//! round is out, the reads arriving meanwhile gather for the next.
//!
//! A round that succeeds also grants this leader a read lease
//! (`lease.rs`): until it expires, reads are served at once, without a
//! round, and the next round runs in the background before it does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::ServerState;
use ravel_consensus::types::Raft;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::lease::{Epoch, LeaseCheck, ReadLease};

/// How a linearizable read was confirmed (for the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// One read-index round, shared by this many reads.
    Round(usize),
    /// One read, under the leader's lease.
    Lease,
}

/// The outcome of a confirmation round, shared by its reads.
#[derive(Debug, Clone)]
pub enum Confirmation {
    /// This node leads and has applied everything committed before the
    /// round started; or (`lease`) it holds a read lease, under which every
    /// acknowledged write is applied. A read under a lease must check
    /// [`ReadIndex::lease_holds`] once it has read.
    Confirmed { lease: bool },
    /// Another node leads (or leadership moved): safe to forward.
    NotLeader,
    /// No quorum answered, or Raft failed.
    Unavailable(String),
}

type Waiter = oneshot::Sender<Confirmation>;

/// Cheap to clone; clones share the rounds.
#[derive(Clone)]
pub struct ReadIndex {
    raft: Raft,
    /// Longest one round may take before its reads are told it failed.
    round_timeout: Duration,
    lease: Arc<ReadLease>,
    state: Arc<Mutex<State>>,
    on_served: Arc<dyn Fn(Served) + Send + Sync>,
}

#[derive(Default)]
struct State {
    /// A round is out (its task runs).
    running: bool,
    /// Reads waiting for the next round.
    waiting: Vec<Waiter>,
    /// A round is wanted to renew the lease, whether or not reads wait.
    renew: bool,
}

impl ReadIndex {
    /// `on_served` is told how each read, or round of reads, was confirmed
    /// (a metric).
    pub fn new(
        raft: Raft,
        round_timeout: Duration,
        lease: Arc<ReadLease>,
        on_served: impl Fn(Served) + Send + Sync + 'static,
    ) -> Self {
        Self {
            raft,
            round_timeout,
            lease,
            state: Arc::default(),
            on_served: Arc::new(on_served),
        }
    }

    /// The term and membership this replica leads in, if it leads.
    fn leading(&self) -> Option<Epoch> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader).then(|| Epoch {
            term: m.current_term,
            membership: m.membership_config.log_id().map(|l| l.index),
        })
    }

    /// Confirms, until `deadline`, that a read arriving now may be served
    /// from this leader's state machine: at once under a lease, otherwise
    /// by the first round that starts after this call.
    pub async fn confirm(&self, deadline: Instant) -> Confirmation {
        if let Some(epoch) = self.leading() {
            if let LeaseCheck::Held { renew } = self.lease.check(Instant::now(), epoch) {
                if renew {
                    self.start_rounds(None);
                }
                (self.on_served)(Served::Lease);
                return Confirmation::Confirmed { lease: true };
            }
        }
        self.confirm_by_round(deadline).await
    }

    /// Whether this leader holds a read lease now. A read confirmed by a
    /// lease checks it again after reading: had the process stalled past
    /// the lease between the check and the read, a rival might have been
    /// elected and acknowledged writes the read missed.
    pub fn lease_holds(&self) -> bool {
        self.leading()
            .is_some_and(|epoch| self.lease.check(Instant::now(), epoch) != LeaseCheck::None)
    }

    /// Waits, until `deadline`, for the first round that starts after this
    /// call, lease or not.
    pub async fn confirm_by_round(&self, deadline: Instant) -> Confirmation {
        let (tx, rx) = oneshot::channel();
        self.start_rounds(Some(tx));
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(c)) => c,
            Ok(Err(_)) => Confirmation::Unavailable("the read-index round was dropped".into()),
            Err(_) => Confirmation::Unavailable(
                "could not confirm leadership with a quorum within the request deadline".into(),
            ),
        }
    }

    /// Queues `waiter` for the next round (or asks for a round that renews
    /// the lease), and starts the rounds' task unless it runs.
    fn start_rounds(&self, waiter: Option<Waiter>) {
        let start = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match waiter {
                Some(w) => st.waiting.push(w),
                None => st.renew = true,
            }
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            tokio::spawn(self.clone().run_rounds());
        }
    }

    /// Runs rounds while reads wait or the lease wants renewing; stops
    /// when neither does.
    async fn run_rounds(self) {
        loop {
            let batch = {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                // Reads whose caller gave up need no round.
                st.waiting.retain(|w| !w.is_closed());
                let renew = std::mem::take(&mut st.renew);
                if st.waiting.is_empty() && !renew {
                    st.running = false;
                    return;
                }
                std::mem::take(&mut st.waiting)
            };
            if !batch.is_empty() {
                (self.on_served)(Served::Round(batch.len()));
            }
            let outcome = self.round().await;
            for w in batch {
                let _ = w.send(outcome.clone());
            }
        }
    }

    async fn round(&self) -> Confirmation {
        let epoch = self.leading();
        let start = self.lease.round_starts();
        let outcome = self.confirm_with_quorum().await;
        // A lease only if this replica led in the same term and membership
        // when the round started and when it finished.
        if let (Confirmation::Confirmed { .. }, Some(before)) = (&outcome, epoch) {
            if self.leading() == Some(before) {
                self.lease.round_confirmed(start, before);
            }
        }
        outcome
    }

    async fn confirm_with_quorum(&self) -> Confirmation {
        match tokio::time::timeout(self.round_timeout, self.raft.ensure_linearizable()).await {
            Err(_) => Confirmation::Unavailable(
                "could not confirm leadership with a quorum within the request deadline".into(),
            ),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Confirmation::NotLeader
            }
            // Still leader as far as it knows, but a majority did not
            // answer. The client may try another node.
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                Confirmation::Unavailable(format!(
                    "this node leads but could not reach a majority of its cluster: {q}"
                ))
            }
            Ok(Err(e)) => Confirmation::Unavailable(e.to_string()),
            Ok(Ok(_)) => Confirmation::Confirmed { lease: false },
        }
    }
}
