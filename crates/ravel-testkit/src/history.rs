//! Histories of concurrent operations, as clients observed them.
//!
//! Every operation is recorded with the time it was invoked and the time
//! its answer came back, and an outcome:
//!
//! - [`Outcome::Ok`]: it took effect, with what it returned;
//! - [`Outcome::Fail`]: it definitely had no effect (the request was
//!   refused before anything was proposed: `INVALID_ARGUMENT`, HTTP
//!   400/413). Dropped from the history before checking;
//! - [`Outcome::Unknown`]: it may or may not have taken effect (timeout,
//!   `UNAVAILABLE`, connection reset, HTTP 503/500). It stays open until the
//!   end of the history: it may have taken effect at any point after it was
//!   invoked, or never.
//!
//! [`crate::linearizability`] checks a history key by key.

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What a client asked for, on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    Set(Vec<u8>),
    Get,
    Delete,
    GetAndDelete,
    SetIfAbsent(Vec<u8>),
    DeleteIfEqual(Vec<u8>),
}

/// What an operation that took effect returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Output {
    /// A write was acknowledged.
    Done,
    /// A read or `getAndDelete` returned this value (`None`: absent).
    Value(Option<Vec<u8>>),
    /// Whether a conditional write applied.
    Applied(bool),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok(Output),
    Fail,
    Unknown,
}

/// One recorded operation. Times are nanoseconds since the history began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: usize,
    pub client: usize,
    pub key: String,
    pub op: Op,
    pub invoke: u64,
    /// When the answer came back; `None` while open, and for unknown
    /// outcomes (open to the end of the history).
    pub complete: Option<u64>,
    pub outcome: Outcome,
    /// Where the request went (a node's or the admin's address), for
    /// reading a failure; not used by the checker.
    #[serde(default)]
    pub via: String,
}

/// A handle for an invoked operation; complete it with
/// [`History::complete`].
#[derive(Debug)]
#[must_use = "complete the operation with History::complete"]
pub struct Pending(usize);

/// A history shared by concurrent clients.
#[derive(Debug)]
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records that `client` invokes `op` on `key` now.
    pub fn invoke(&self, client: usize, key: &str, op: Op) -> Pending {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let id = ops.len();
        let invoke = self.now();
        ops.push(Operation {
            id,
            client,
            key: key.to_string(),
            op,
            invoke,
            complete: None,
            outcome: Outcome::Unknown,
            via: String::new(),
        });
        Pending(id)
    }

    /// Records where an invoked operation was sent.
    pub fn sent_to(&self, pending: &Pending, via: &str) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops[pending.0].via = via.to_string();
    }

    /// Records the outcome of an invoked operation, now.
    pub fn complete(&self, pending: Pending, outcome: Outcome) {
        let now = self.now();
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let op = &mut ops[pending.0];
        op.complete = match outcome {
            Outcome::Unknown => None,
            _ => Some(now),
        };
        op.outcome = outcome;
    }

    /// Every operation recorded so far (open ones are unknown).
    pub fn operations(&self) -> Vec<Operation> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts: (all, ok, fail, unknown).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let ok = ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
            .count();
        let fail = ops.iter().filter(|o| o.outcome == Outcome::Fail).count();
        (ops.len(), ok, fail, ops.len() - ok - fail)
    }

    /// The longest stretch (in time) during which no operation completed
    /// successfully, between `from` and `to` (nanoseconds since the start).
    pub fn longest_gap_without_success(&self, from: u64, to: u64) -> u64 {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let mut done: Vec<u64> = ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
            .filter_map(|o| o.complete)
            .filter(|t| *t >= from && *t <= to)
            .collect();
        done.sort_unstable();
        let mut last = from;
        let mut gap = 0;
        for t in done {
            gap = gap.max(t - last);
            last = t;
        }
        gap.max(to.saturating_sub(last))
    }

    /// When the first write (anything but a `get`) invoked after `from`
    /// was acknowledged, if one was.
    pub fn first_write_acked_after(&self, from: u64) -> Option<u64> {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.iter()
            .filter(|o| o.op != Op::Get && o.invoke > from)
            .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
            .filter_map(|o| o.complete)
            .min()
    }

    /// Nanoseconds since the history began.
    pub fn elapsed(&self) -> u64 {
        self.now()
    }
}
