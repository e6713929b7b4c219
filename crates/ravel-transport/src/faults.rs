//! Fault injection between nodes, for tests: cut, or delay, the traffic from
//! one node to another; lose the answer to a request that took effect;
//! make a node answer like an older version.
//! Compiled to no-ops unless the `fault-injection` feature is on, so
//! release binaries carry none of it by default.

use crate::error::TransportError;

#[cfg(feature = "fault-injection")]
mod imp {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    #[derive(Debug, Default)]
    pub(super) struct State {
        pub cut: HashSet<(u64, u64)>,
        pub delay: HashMap<(u64, u64), Duration>,
        /// (node, key): answers to lose, each after holding it this long.
        pub lost_answers: HashMap<(u64, Vec<u8>), Duration>,
        /// Nodes that answer the move-batch calls UNIMPLEMENTED.
        pub without_move_batches: HashSet<u64>,
        /// (node, key): reads to stall, once, this long between their
        /// confirmation and the read of the state machine.
        pub stalled_reads: HashMap<(u64, Vec<u8>), Duration>,
    }

    #[derive(Debug, Clone, Default)]
    pub struct Faults {
        pub(super) state: Arc<RwLock<State>>,
    }
}

#[cfg(feature = "fault-injection")]
pub use imp::Faults;

/// Without the feature: a zero-sized switchboard on which nothing is ever cut.
#[cfg(not(feature = "fault-injection"))]
#[derive(Debug, Clone, Default)]
pub struct Faults;

impl Faults {
    /// Fails if traffic from `from` to `to` is cut; waits if it is delayed.
    pub async fn check(&self, from: u64, to: u64) -> Result<(), TransportError> {
        #[cfg(feature = "fault-injection")]
        {
            let (cut, delay) = {
                let s = self.state.read().unwrap_or_else(|p| p.into_inner());
                (
                    s.cut.contains(&(from, to)),
                    s.delay.get(&(from, to)).copied(),
                )
            };
            if cut {
                return Err(TransportError::Cut { from, to });
            }
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
        }
        #[cfg(not(feature = "fault-injection"))]
        let _ = (from, to);
        Ok(())
    }

    /// If a test asked node `node` to lose its answer to the next write of
    /// `key`: how long to hold the answer before failing it (once).
    pub fn take_lost_answer(&self, node: u64, key: &[u8]) -> Option<std::time::Duration> {
        #[cfg(feature = "fault-injection")]
        {
            let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
            s.lost_answers.remove(&(node, key.to_vec()))
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = (node, key);
            None
        }
    }

    /// If a test asked node `node` to stall its next read of `key`: how
    /// long to wait between confirming the read and reading (once).
    pub fn take_read_stall(&self, node: u64, key: &[u8]) -> Option<std::time::Duration> {
        #[cfg(feature = "fault-injection")]
        {
            let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
            s.stalled_reads.remove(&(node, key.to_vec()))
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = (node, key);
            None
        }
    }

    /// Whether a stall asked for by [`Faults::stall_read`] has not been
    /// taken yet.
    pub fn read_stall_pending(&self, node: u64, key: &[u8]) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            let s = self.state.read().unwrap_or_else(|p| p.into_inner());
            s.stalled_reads.contains_key(&(node, key.to_vec()))
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = (node, key);
            false
        }
    }

    /// Whether node `node` is to act like a version without the move-batch
    /// calls (`SetIfAbsentBatch`, `DeleteIfEqualBatch`).
    pub fn lacks_move_batches(&self, node: u64) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            let s = self.state.read().unwrap_or_else(|p| p.into_inner());
            s.without_move_batches.contains(&node)
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = node;
            false
        }
    }

    /// Whether traffic from `from` to `to` is cut.
    pub fn is_cut(&self, from: u64, to: u64) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            let s = self.state.read().unwrap_or_else(|p| p.into_inner());
            s.cut.contains(&(from, to))
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = (from, to);
            false
        }
    }
}

#[cfg(feature = "fault-injection")]
impl Faults {
    fn with<R>(&self, f: impl FnOnce(&mut imp::State) -> R) -> R {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// Cuts traffic between `a` and `b`, both ways.
    pub fn cut(&self, a: u64, b: u64) {
        self.with(|s| {
            s.cut.insert((a, b));
            s.cut.insert((b, a));
        });
    }

    /// Cuts `node` off from each of `others`, both ways.
    pub fn isolate(&self, node: u64, others: impl IntoIterator<Item = u64>) {
        for o in others {
            if o != node {
                self.cut(node, o);
            }
        }
    }

    /// Delays every message from `from` to `to` by `by`.
    pub fn delay(&self, from: u64, to: u64, by: std::time::Duration) {
        self.with(|s| {
            s.delay.insert((from, to), by);
        });
    }

    /// Node `node` applies the next write of `key` but, after holding the
    /// answer for `hold`, answers `UNAVAILABLE` (as if the connection broke):
    /// the client cannot know the write took effect.
    pub fn lose_answer(&self, node: u64, key: &[u8], hold: std::time::Duration) {
        self.with(|s| {
            s.lost_answers.insert((node, key.to_vec()), hold);
        });
    }

    /// Node `node`'s next linearizable read of `key` waits `hold` between
    /// its confirmation (a read lease, a round) and reading the state
    /// machine: a process stalled at the worst moment.
    pub fn stall_read(&self, node: u64, key: &[u8], hold: std::time::Duration) {
        self.with(|s| {
            s.stalled_reads.insert((node, key.to_vec()), hold);
        });
    }

    /// Node `node` answers the move-batch calls UNIMPLEMENTED, as a node
    /// of an older version would, until [`Faults::heal`].
    pub fn remove_move_batches(&self, node: u64) {
        self.with(|s| {
            s.without_move_batches.insert(node);
        });
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.with(|s| {
            s.cut.clear();
            s.delay.clear();
            s.lost_answers.clear();
            s.without_move_batches.clear();
            s.stalled_reads.clear();
        });
    }
}
