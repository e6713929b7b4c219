//! Fail-stop on storage errors: a failed fsync or write at any persistence
//! point (log append, vote, truncate, purge, apply, snapshot install and
//! build) stops the replica's Raft (the binary then exits, see
//! `process_lifecycle.rs`), never lets it go on serving, and loses no
//! acknowledged write: the rest of the cluster goes on.
//!
//! The failures are injected with `ravel_consensus::failpoints` (compiled
//! into the testkit only), per data directory.

use std::time::Duration;

use ravel_consensus::failpoints;
use ravel_testkit::{wait_for, TestSettings, TestSystem};

fn small_snapshots() -> TestSettings {
    let mut s = TestSettings::default();
    s.snapshot.logs_since_last = 20;
    s.snapshot.keep_logs = 2;
    s
}

/// Waits until node `i` reports that its Raft stopped; the reason.
async fn stopped(sys: &TestSystem, i: usize, point: &str) -> String {
    let reason = wait_for(
        Duration::from_secs(20),
        &format!("node {i} to stop after its {point} failed"),
        || {
            let r = sys.nodes[i].node().fatal();
            async move { r }
        },
    )
    .await;
    println!("{point}: node {i} stopped: {reason}");
    assert!(
        reason.contains(&format!("failpoint {point}")),
        "stopped for another reason: {reason}"
    );
    // It no longer serves: a stopped replica answers no write.
    assert!(sys.run(i, "set", b"after-stop", b"x").await.is_err());
    reason
}

/// Writes `keys` through `via` and returns them (all acknowledged).
async fn write(sys: &TestSystem, via: usize, keys: std::ops::Range<u32>) -> Vec<String> {
    let mut out = Vec::new();
    for k in keys {
        let key = format!("k{k}");
        sys.run(via, "set", key.as_bytes(), key.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("write {key}: {e}"));
        out.push(key);
    }
    out
}

/// Every acknowledged key reads back through the cluster's leader.
async fn all_readable(sys: &TestSystem, cluster: &str, keys: &[String]) {
    let leader = sys.leader(cluster, Duration::from_secs(15)).await;
    for k in keys {
        let got = sys
            .run(leader, "get", k.as_bytes(), b"")
            .await
            .unwrap_or_else(|e| panic!("read {k}: {e}"));
        assert_eq!(got.get_ref().data, k.as_bytes(), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_append_apply_purge_and_snapshot_build_failures_stop_it() {
    for point in ["append", "apply", "purge", "snapshot_build"] {
        let sys = TestSystem::start_with(1, 3, small_snapshots()).await;
        let cluster = sys.cluster_ids()[0].clone();
        let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
        let victim = sys.other_member(&cluster, leader);
        let mut acked = write(&sys, leader, 0..5).await;
        failpoints::arm(point, Some(sys.nodes[victim].node().data_dir()), 2);
        acked.extend(write(&sys, leader, 5..80).await);
        stopped(&sys, victim, point).await;
        acked.extend(write(&sys, leader, 80..90).await);
        all_readable(&sys, &cluster, &acked).await;
        sys.shutdown().await;
    }
}

/// The leader's own log append fails: the write is not acknowledged, the
/// leader stops, another takes over with everything acknowledged before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_append_failure_stops_it_without_acknowledging() {
    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let acked = write(&sys, leader, 0..20).await;
    failpoints::arm("append", Some(sys.nodes[leader].node().data_dir()), 0);
    let r = sys.run(leader, "set", b"doomed", b"x").await;
    assert!(r.is_err(), "a write whose append failed was acknowledged");
    stopped(&sys, leader, "append").await;
    all_readable(&sys, &cluster, &acked).await;
    sys.shutdown().await;
}

/// A vote that cannot be saved stops the voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_failure_stops_the_voter() {
    let mut sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let acked = write(&sys, leader, 0..10).await;
    let victim = sys.other_member(&cluster, leader);
    failpoints::arm("vote", Some(sys.nodes[victim].node().data_dir()), 0);
    // An election: every surviving voter saves a vote.
    sys.crash(leader).await;
    stopped(&sys, victim, "vote").await;
    sys.restart(leader).await;
    all_readable(&sys, &cluster, &acked).await;
    sys.shutdown().await;
}

/// A deposed leader must truncate the entries the new leader overwrote;
/// when it cannot, it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_failure_stops_the_deposed_leader() {
    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let old = sys.leader(&cluster, Duration::from_secs(10)).await;
    let mut acked = write(&sys, old, 0..10).await;
    sys.partition(&[old]);
    // Appended on the cut-off leader only; never acknowledged.
    for k in 0..3 {
        let _ = sys
            .run(old, "set", format!("orphan-{k}").as_bytes(), b"x")
            .await;
    }
    failpoints::arm("truncate", Some(sys.nodes[old].node().data_dir()), 0);
    let others: Vec<usize> = sys
        .members(&cluster)
        .into_iter()
        .filter(|&i| i != old)
        .collect();
    let new = wait_for(Duration::from_secs(10), "a new leader", || {
        let l = others.iter().copied().find(|&i| {
            sys.nodes[i].node().raft().metrics().borrow().state == openraft::ServerState::Leader
        });
        async move { l }
    })
    .await;
    acked.extend(write(&sys, new, 10..20).await);
    sys.heal();
    stopped(&sys, old, "truncate").await;
    all_readable(&sys, &cluster, &acked).await;
    sys.shutdown().await;
}

/// A replica that cannot install the snapshot it needs stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_install_failure_stops_the_replica() {
    let mut sys = TestSystem::start_with(1, 3, small_snapshots()).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let victim = sys.other_member(&cluster, leader);
    let mut acked = write(&sys, leader, 0..5).await;
    sys.crash(victim).await;
    // Far past the purge point: the victim can only catch up by snapshot.
    acked.extend(write(&sys, leader, 5..80).await);
    failpoints::arm(
        "snapshot_install",
        Some(&sys.nodes[victim].config.data_dir),
        0,
    );
    sys.restart(victim).await;
    stopped(&sys, victim, "snapshot_install").await;
    all_readable(&sys, &cluster, &acked).await;
    sys.shutdown().await;
}

/// The leader's disk stalls: its writes still commit, on the followers'
/// copies (a leader replicates while its own sync runs, and counts itself
/// once that sync is done). Once the disk moves again the leader has every
/// entry and goes on leading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_disk_does_not_hold_up_commits() {
    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let mut acked = write(&sys, leader, 0..5).await;
    let dir = sys.nodes[leader].node().data_dir().to_path_buf();
    let held = failpoints::hold("log_write", &dir);
    // Before, each write waited for the leader's own sync (here, forever):
    // the request's deadline expired.
    let during = tokio::time::timeout(Duration::from_secs(10), write(&sys, leader, 5..15)).await;
    drop(held);
    acked.extend(during.expect("writes waited for the leader's own stalled sync"));
    assert_eq!(
        sys.leader(&cluster, Duration::from_secs(10)).await,
        leader,
        "the leader lost its leadership over a slow disk"
    );
    acked.extend(write(&sys, leader, 15..20).await);
    all_readable(&sys, &cluster, &acked).await;
    sys.shutdown().await;
}
