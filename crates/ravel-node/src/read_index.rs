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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use ravel_consensus::types::Raft;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The outcome of a confirmation round, shared by its reads.
#[derive(Debug, Clone)]
pub enum Confirmation {
    /// This node leads and has applied everything committed before the
    /// round started.
    Confirmed,
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
    state: Arc<Mutex<State>>,
    on_round: Arc<dyn Fn(usize) + Send + Sync>,
}

#[derive(Default)]
struct State {
    /// A round is out (its task runs).
    running: bool,
    /// Reads waiting for the next round.
    waiting: Vec<Waiter>,
}

impl ReadIndex {
    /// `on_round` is told each round's number of reads (a metric).
    pub fn new(
        raft: Raft,
        round_timeout: Duration,
        on_round: impl Fn(usize) + Send + Sync + 'static,
    ) -> Self {
        Self {
            raft,
            round_timeout,
            state: Arc::default(),
            on_round: Arc::new(on_round),
        }
    }

    /// Waits, until `deadline`, for the first round that starts after this
    /// call.
    pub async fn confirm(&self, deadline: Instant) -> Confirmation {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.waiting.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            tokio::spawn(self.clone().run_rounds());
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(c)) => c,
            Ok(Err(_)) => Confirmation::Unavailable("the read-index round was dropped".into()),
            Err(_) => Confirmation::Unavailable(
                "could not confirm leadership with a quorum within the request deadline".into(),
            ),
        }
    }

    /// Runs rounds while reads wait; stops when none does.
    async fn run_rounds(self) {
        loop {
            let batch = {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                // Reads whose caller gave up need no round.
                st.waiting.retain(|w| !w.is_closed());
                if st.waiting.is_empty() {
                    st.running = false;
                    return;
                }
                std::mem::take(&mut st.waiting)
            };
            (self.on_round)(batch.len());
            let outcome = self.round().await;
            for w in batch {
                let _ = w.send(outcome.clone());
            }
        }
    }

    async fn round(&self) -> Confirmation {
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
            Ok(Ok(_)) => Confirmation::Confirmed,
        }
    }
}
