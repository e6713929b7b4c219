//! The nemesis: a seeded schedule of faults against one cluster of real
//! processes, each healed before the next begins.
//!
//! Faults: SIGKILL of the leader or of a follower (restarted on the same
//! data), SIGSTOP of either (then SIGCONT), a symmetric partition of the
//! leader or of a follower, a one-way cut (the leader's packets to the
//! followers, or theirs to it), packet loss on every link, membership
//! changes under load (add a replica, remove a follower, remove the
//! leader), snapshot catch-up (a follower killed while the leader
//! writes enough to snapshot and purge its log, then restarted) and delay:
//! a "slow" leader or follower, stopped and continued in a random rhythm
//! of 10-60 ms each (SIGSTOP/SIGCONT), so everything it sends or answers
//! is late by up to 60 ms without the node being down (the kernel here has
//! no `netem` to delay packets). Network
//! faults use iptables between the processes' loopback IPs
//! ([`crate::netfault`]); where that is unavailable they are skipped with
//! the reason printed.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::netfault::NetFaults;
use crate::process::ProcSystem;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    KillLeader,
    KillFollower,
    PauseLeader,
    PauseFollower,
    PartitionLeader,
    PartitionFollower,
    OneWayFromLeader,
    OneWayToLeader,
    Lossy,
    AddReplica,
    RemoveFollower,
    RemoveLeader,
    SnapshotCatchUp,
    SlowLeader,
    SlowFollower,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::PauseLeader => "pause-leader",
            Fault::PauseFollower => "pause-follower",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionFollower => "partition-follower",
            Fault::OneWayFromLeader => "one-way-from-leader",
            Fault::OneWayToLeader => "one-way-to-leader",
            Fault::Lossy => "lossy",
            Fault::AddReplica => "add-replica",
            Fault::RemoveFollower => "remove-follower",
            Fault::RemoveLeader => "remove-leader",
            Fault::SnapshotCatchUp => "snapshot-catch-up",
            Fault::SlowLeader => "slow-leader",
            Fault::SlowFollower => "slow-follower",
        };
        f.write_str(s)
    }
}

const NETWORK: [Fault; 5] = [
    Fault::PartitionLeader,
    Fault::PartitionFollower,
    Fault::OneWayFromLeader,
    Fault::OneWayToLeader,
    Fault::Lossy,
];

const PROCESS: [Fault; 7] = [
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::PauseLeader,
    Fault::PauseFollower,
    Fault::SnapshotCatchUp,
    Fault::SlowLeader,
    Fault::SlowFollower,
];

/// The seeds of a randomised run: the one in `one_var` (a replay), or a
/// count (from a random base) or a range `a..b` in `many_var`, else
/// `default` seeds from a random base.
pub fn seeds(one_var: &str, many_var: &str, default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var(one_var) {
        return vec![s
            .parse()
            .unwrap_or_else(|_| panic!("{one_var} is a number"))];
    }
    let spec = std::env::var(many_var).unwrap_or_else(|_| default.to_string());
    if let Some((a, b)) = spec.split_once("..") {
        let (a, b): (u64, u64) = (
            a.parse().expect("range start"),
            b.parse().expect("range end"),
        );
        return (a..b).collect();
    }
    let n: u64 = spec
        .parse()
        .unwrap_or_else(|_| panic!("{many_var} is a count or a range a..b"));
    let base = rand::random::<u32>() as u64 * 1000;
    (base..base + n).collect()
}

/// One planned fault: what, and how long it lasts before it is healed.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub fault: Fault,
    pub hold: Duration,
}

/// A seeded sequence of faults.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub steps: Vec<Step>,
}

impl Schedule {
    /// `n` faults drawn from `seed`. Membership changes keep the cluster
    /// between three and four voters: a replica is added only to a
    /// three-voter cluster, removed only from a four-voter one.
    pub fn generate(seed: u64, n: usize, network: bool) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut voters = 3;
        let mut steps = Vec::with_capacity(n);
        while steps.len() < n {
            let fault = match rng.random_range(0..10) {
                0..=3 => PROCESS[rng.random_range(0..PROCESS.len())],
                4..=7 if network => NETWORK[rng.random_range(0..NETWORK.len())],
                4..=7 => PROCESS[rng.random_range(0..PROCESS.len())],
                _ if voters == 3 => Fault::AddReplica,
                _ if rng.random_bool(0.5) => Fault::RemoveFollower,
                _ => Fault::RemoveLeader,
            };
            match fault {
                Fault::AddReplica => voters += 1,
                Fault::RemoveFollower | Fault::RemoveLeader => voters -= 1,
                _ => {}
            }
            let hold = Duration::from_millis(rng.random_range(800..2000));
            steps.push(Step { fault, hold });
        }
        Schedule { steps }
    }
}

/// What the nemesis did for one step.
#[derive(Debug, Clone)]
pub struct Applied {
    pub fault: Fault,
    /// Skipped, and why (e.g. no iptables).
    pub skipped: Option<String>,
    /// Nanoseconds (history clock) when the fault began and was healed.
    pub began: u64,
    pub healed: u64,
    /// Nodes affected (indexes into the system's nodes).
    pub nodes: Vec<usize>,
}

/// A process being stopped and continued in a random rhythm.
struct Stutter {
    pid: i32,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Stutter {
    fn start(pid: i32, seed: u64) -> Stutter {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: signals to the test's own child process.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                std::thread::sleep(Duration::from_millis(rng.random_range(10..60)));
                unsafe { libc::kill(pid, libc::SIGCONT) };
                std::thread::sleep(Duration::from_millis(rng.random_range(10..60)));
            }
        });
        Stutter { pid, stop, thread }
    }

    fn end(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        // SAFETY: as above; the process runs on.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}

impl Drop for Nemesis {
    fn drop(&mut self) {
        if let Some(s) = self.stutter.take() {
            s.end();
        }
    }
}

/// Applies faults to a process system.
pub struct Nemesis {
    net: Result<NetFaults, String>,
    rng: StdRng,
    stutter: Option<Stutter>,
}

impl Nemesis {
    pub fn new(seed: u64) -> Self {
        Self {
            net: NetFaults::new(),
            rng: StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973),
            stutter: None,
        }
    }

    /// Whether network faults can be injected here; the reason if not.
    pub fn network(&self) -> Result<(), String> {
        self.net.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    fn net(&self) -> Result<&NetFaults, String> {
        self.net
            .as_ref()
            .map_err(|e| format!("network faults unavailable: {e}"))
    }

    fn pick(&mut self, from: &[usize]) -> usize {
        from[self.rng.random_range(0..from.len())]
    }

    /// Starts `fault` on `cluster`; returns the affected nodes, or why it
    /// was skipped. For [`Fault::SnapshotCatchUp`] the caller writes
    /// enough while the follower is down for the leader to snapshot and
    /// purge past it.
    pub async fn begin(
        &mut self,
        sys: &mut ProcSystem,
        cluster: &str,
        fault: Fault,
    ) -> Result<Vec<usize>, String> {
        let leader = sys.leader(cluster, Duration::from_secs(15)).await;
        let followers: Vec<usize> = sys
            .members(cluster)
            .into_iter()
            .filter(|&i| i != leader && sys.nodes[i].is_running())
            .collect();
        match fault {
            Fault::KillLeader => {
                sys.kill_node(leader);
                Ok(vec![leader])
            }
            Fault::KillFollower => {
                let f = self.pick(&followers);
                sys.kill_node(f);
                Ok(vec![f])
            }
            Fault::PauseLeader => {
                sys.pause_node(leader);
                Ok(vec![leader])
            }
            Fault::PauseFollower => {
                let f = self.pick(&followers);
                sys.pause_node(f);
                Ok(vec![f])
            }
            Fault::PartitionLeader | Fault::PartitionFollower => {
                let victim = if fault == Fault::PartitionLeader {
                    leader
                } else {
                    self.pick(&followers)
                };
                let net = self.net()?;
                for o in sys.members(cluster).into_iter().filter(|&o| o != victim) {
                    net.partition(sys.nodes[victim].ip, sys.nodes[o].ip)?;
                }
                Ok(vec![victim])
            }
            Fault::OneWayFromLeader | Fault::OneWayToLeader => {
                let net = self.net()?;
                for &f in &followers {
                    let (a, b) = (sys.nodes[leader].ip, sys.nodes[f].ip);
                    if fault == Fault::OneWayFromLeader {
                        net.cut(a, b)?;
                    } else {
                        net.cut(b, a)?;
                    }
                }
                Ok(vec![leader])
            }
            Fault::Lossy => {
                let net = self.net()?;
                let members = sys.members(cluster);
                for &a in &members {
                    for &b in &members {
                        if a != b {
                            net.lossy(sys.nodes[a].ip, sys.nodes[b].ip, 0.3)?;
                        }
                    }
                }
                Ok(members)
            }
            Fault::AddReplica => {
                let i = sys.add_node(false).await;
                if sys.nodes[i].cluster_id != cluster {
                    return Err(format!(
                        "the new replica joined {} instead of {cluster}",
                        sys.nodes[i].cluster_id
                    ));
                }
                Ok(vec![i])
            }
            Fault::RemoveFollower | Fault::RemoveLeader => {
                let victim = if fault == Fault::RemoveLeader {
                    leader
                } else {
                    self.pick(&followers)
                };
                sys.remove_node(victim, Duration::from_secs(60))
                    .await
                    .map_err(|e| format!("ravel-node kill of node {victim}: {e}"))?;
                Ok(vec![victim])
            }
            Fault::SnapshotCatchUp => {
                let f = self.pick(&followers);
                sys.kill_node(f);
                Ok(vec![f])
            }
            Fault::SlowLeader | Fault::SlowFollower => {
                let victim = if fault == Fault::SlowLeader {
                    leader
                } else {
                    self.pick(&followers)
                };
                let pid = sys.nodes[victim]
                    .pid()
                    .ok_or_else(|| format!("node {victim} has no process"))?;
                self.stutter = Some(Stutter::start(pid, self.rng.random()));
                Ok(vec![victim])
            }
        }
    }

    /// Heals `fault`: restarts what was killed, resumes what was paused,
    /// removes network rules.
    pub async fn heal(&mut self, sys: &mut ProcSystem, fault: Fault, nodes: &[usize]) {
        match fault {
            Fault::KillLeader | Fault::KillFollower | Fault::SnapshotCatchUp => {
                for &i in nodes {
                    sys.start_node(i).await;
                }
            }
            Fault::PauseLeader | Fault::PauseFollower => {
                for &i in nodes {
                    sys.resume_node(i);
                }
            }
            Fault::PartitionLeader
            | Fault::PartitionFollower
            | Fault::OneWayFromLeader
            | Fault::OneWayToLeader
            | Fault::Lossy => {
                if let Ok(net) = &self.net {
                    if let Err(e) = net.heal() {
                        panic!("cannot remove iptables rules: {e}");
                    }
                }
            }
            Fault::SlowLeader | Fault::SlowFollower => {
                if let Some(s) = self.stutter.take() {
                    s.end();
                }
            }
            Fault::AddReplica | Fault::RemoveFollower | Fault::RemoveLeader => {}
        }
    }
}
