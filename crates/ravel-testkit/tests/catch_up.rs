//! Replicas that fall behind catch up: from the log after a restart, and by
//! snapshot when the leader has purged the entries they miss.

use std::time::Duration;

use ravel_testkit::{wait_for, TestSettings, TestSystem};
use ravel_transport::retry::Attempts;

async fn write_range(sys: &TestSystem, via: usize, range: std::ops::Range<u32>) {
    for k in range {
        sys.run(
            via,
            "set",
            format!("k{k}").as_bytes(),
            format!("v{k}").as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("write k{k}: {e}"));
    }
}

async fn wait_has_all(sys: &TestSystem, node: usize, range: std::ops::Range<u32>) {
    let expected: Vec<(Vec<u8>, Vec<u8>)> = range
        .map(|k| (format!("k{k}").into_bytes(), format!("v{k}").into_bytes()))
        .collect();
    wait_for(
        Duration::from_secs(20),
        &format!("node {node} to hold every key"),
        || {
            let ok = sys.holds_all(
                node,
                expected.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
            );
            async move { ok.then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_catches_up_from_the_log() {
    let mut sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let follower = sys.other_member(&cluster, leader);
    write_range(&sys, leader, 0..20).await;
    sys.crash(follower).await;
    write_range(&sys, leader, 20..80).await;
    sys.restart(follower).await;
    wait_has_all(&sys, follower, 0..80).await;
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_purged_log_catches_up_by_snapshot() {
    let mut settings = TestSettings::default();
    settings.snapshot.logs_since_last = 20;
    settings.snapshot.keep_logs = 0;
    // Several chunks per snapshot.
    settings.snapshot.chunk_bytes = 256;
    let mut sys = TestSystem::start_with(1, 3, settings).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let follower = sys.other_member(&cluster, leader);
    write_range(&sys, leader, 0..10).await;
    let behind = sys.nodes[follower]
        .node()
        .raft()
        .metrics()
        .borrow()
        .last_log_index
        .unwrap_or(0);
    sys.crash(follower).await;
    write_range(&sys, leader, 10..150).await;
    // The leader must have purged what the follower lacks.
    wait_for(
        Duration::from_secs(10),
        "the leader to purge past the follower's log",
        || {
            let purged = sys.nodes[leader]
                .node()
                .raft()
                .metrics()
                .borrow()
                .purged
                .map(|l| l.index);
            async move { purged.filter(|p| *p > behind) }
        },
    )
    .await;
    sys.restart(follower).await;
    wait_has_all(&sys, follower, 0..150).await;
    let snap = sys.nodes[follower]
        .node()
        .raft()
        .metrics()
        .borrow()
        .snapshot;
    assert!(
        snap.is_some_and(|s| s.index > behind),
        "follower did not install a snapshot: {snap:?}"
    );
    // The metrics saw it: the leader built snapshots and sent one, the
    // follower installed it, both with their sizes.
    let sample = |i: usize, series: &'static str| {
        let addr = sys.nodes[i].node().metrics_addr().unwrap().to_string();
        async move {
            let text = reqwest::get(format!("http://{addr}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(series)?
                        .strip_prefix(' ')?
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or(0.0)
        }
    };
    assert!(sample(leader, r#"ravel_snapshots_total{event="built"}"#).await >= 1.0);
    assert!(sample(leader, r#"ravel_snapshot_bytes_total{event="sent"}"#).await > 0.0);
    assert!(sample(follower, r#"ravel_snapshots_total{event="installed"}"#).await >= 1.0);
    assert!(sample(follower, r#"ravel_snapshot_bytes_total{event="installed"}"#).await > 0.0);
    // A snapshot is a pinned view of the state machine, streamed when
    // needed: no replica keeps a copy of its data in snapshot files, and
    // the received file is gone once installed.
    for i in [leader, follower] {
        let dir = sys.nodes[i].node().data_dir().join("snapshots");
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(files.is_empty(), "{} holds {files:?}", dir.display());
    }
    sys.shutdown().await;
}

/// A follower that missed large batches (1 MiB values, 4 MiB entries,
/// ~80 MiB in all) catches up from the log. Before replication was bounded
/// by bytes, every AppendEntries carried every missing entry at once: over
/// the message limit, and far over the heartbeat-long replication timeout,
/// so the follower never caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_large_batches_catches_up() {
    let mut sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let follower = sys.other_member(&cluster, leader);
    sys.crash(follower).await;
    let value = vec![b'v'; 1 << 20];
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = sys.client(leader).await;
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            let mut c = client;
            for k in (w..80).step_by(8) {
                // Setting a key to the same value again has the same
                // effect: a set whose outcome is unknown (on 2 loaded
                // cores the leader may miss its majority's acknowledgement
                // for an election timeout and refuse) is sent again. What
                // is tested is the follower's catch-up, below.
                let mut attempts =
                    Attempts::until(tokio::time::Instant::now() + Duration::from_secs(30));
                loop {
                    let mut req = tonic::Request::new(ravel_proto::node::Command {
                        operation: "set".into(),
                        key: format!("big-{k}").into_bytes(),
                        value: value.clone(),
                    });
                    req.set_timeout(Duration::from_secs(20));
                    match c.run(req).await {
                        Ok(_) => break,
                        Err(e) if e.code() == tonic::Code::Unavailable => {
                            println!("big-{k}: {e}; sending it again");
                            if !attempts.pause().await {
                                panic!("big-{k}: {e}");
                            }
                        }
                        Err(e) => panic!("big-{k}: {e}"),
                    }
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let t = std::time::Instant::now();
    sys.restart(follower).await;
    wait_for(
        Duration::from_secs(30),
        "the follower to hold every large value",
        || {
            let n = sys.nodes[follower].node();
            let ok = (0..80).all(|k| {
                n.local_get(format!("big-{k}").as_bytes())
                    .ok()
                    .flatten()
                    .is_some_and(|v| v.len() == 1 << 20)
            });
            async move { ok.then_some(()) }
        },
    )
    .await;
    println!("caught up on 80 MiB of large batches in {:?}", t.elapsed());
    sys.shutdown().await;
}

/// One entry too large to replicate within a heartbeat interval (openraft
/// 0.9 drops every AppendEntries after one interval and sends it again):
/// the retries wait for the call already under way instead of starting
/// over, so the entry commits and reaches every follower. Before, a 6 MiB
/// value was sent, cancelled and resent forever, and the leader answered
/// "lost contact with a majority".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_slower_than_a_heartbeat_still_replicates() {
    let mut settings = TestSettings::default();
    settings.limits.max_value_bytes = 8 << 20;
    let sys = TestSystem::start_with(1, 3, settings).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    for k in 0..3u8 {
        let value = vec![b'a' + k; 6 << 20];
        let key = format!("huge{k}");
        sys.run(leader, "set", key.as_bytes(), &value)
            .await
            .unwrap_or_else(|e| panic!("set {key}: {e}"));
    }
    for i in sys.members(&cluster) {
        wait_for(
            Duration::from_secs(30),
            &format!("node {i} to hold every large value"),
            || {
                let n = sys.nodes[i].node();
                let all = (0..3u8).all(|k| {
                    n.local_get(format!("huge{k}").as_bytes())
                        .ok()
                        .flatten()
                        .is_some_and(|v| v.len() == 6 << 20 && v[0] == b'a' + k)
                });
                async move { all.then_some(()) }
            },
        )
        .await;
    }
    sys.shutdown().await;
}

/// The log is snapshotted and purged once its entries grow past
/// `snapshot.log_bytes_since_last`, however few they are: with a count
/// limit that is never reached, 100 entries of 8 KiB (a 256 KiB limit)
/// still leave every replica with a snapshot and a purged log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_snapshotted_and_purged_by_size() {
    let mut settings = TestSettings::default();
    settings.snapshot.logs_since_last = 1_000_000;
    settings.snapshot.log_bytes_since_last = 256 << 10;
    settings.snapshot.keep_logs = 0;
    let sys = TestSystem::start_with(1, 3, settings).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let value = vec![b'v'; 8 << 10];
    for k in 0..100 {
        sys.run(leader, "set", format!("k{k}").as_bytes(), &value)
            .await
            .unwrap_or_else(|e| panic!("write k{k}: {e}"));
    }
    for i in sys.members(&cluster) {
        wait_for(
            Duration::from_secs(20),
            &format!("node {i} to snapshot and purge its log"),
            || {
                let m = sys.nodes[i].node().raft().metrics().borrow().clone();
                let done = m.snapshot.is_some() && m.purged.is_some();
                async move { done.then_some(()) }
            },
        )
        .await;
    }
    sys.shutdown().await;
}
