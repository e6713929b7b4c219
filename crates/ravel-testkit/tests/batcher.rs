//! The write batcher under faults: a request abandoned by its caller while
//! queued is never proposed; a proposal Raft never answers does not block
//! the writes after it.

use std::time::Duration;

use ravel_node::config::{Limits, RaftSettings, SnapshotSettings};
use ravel_testkit::{wait_for, TestSettings, TestSystem};

async fn run_with_timeout(
    sys: &TestSystem,
    i: usize,
    op: &str,
    key: &[u8],
    value: &[u8],
    timeout: Duration,
) -> Result<tonic::Response<ravel_proto::node::Response>, tonic::Status> {
    let mut req = tonic::Request::new(ravel_proto::node::Command {
        operation: op.into(),
        key: key.to_vec(),
        value: value.to_vec(),
    });
    req.set_timeout(timeout);
    sys.client(i).await.run(req).await
}

/// While a proposal is slow to commit (its followers are 80 ms away), a
/// second write queues behind it; its caller gives up after 30 ms. The
/// abandoned write must never be proposed (before the fix it was, and took
/// effect once the queue moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_abandoned_in_the_queue_is_never_applied() {
    let settings = TestSettings {
        raft: RaftSettings {
            heartbeat_interval_ms: 150,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            join_timeout_ms: 30_000,
            ..RaftSettings::default()
        },
        limits: Limits {
            // One proposal at a time, so the second write has to queue.
            max_proposals_in_flight: 1,
            request_timeout_ms: 5_000,
            ..Limits::default()
        },
        ..TestSettings::default()
    };
    let sys = TestSystem::start_with(1, 3, settings).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    for f in sys.members(&cluster).into_iter().filter(|&f| f != leader) {
        sys.faults.delay(
            sys.nodes[leader].id,
            sys.nodes[f].id,
            Duration::from_millis(80),
        );
    }
    let mut abandoned = 0;
    for round in 0..5 {
        let first = {
            let client = sys.client(leader).await;
            let key = format!("slow-{round}").into_bytes();
            tokio::spawn(async move {
                let mut c = client;
                let mut req = tonic::Request::new(ravel_proto::node::Command {
                    operation: "set".into(),
                    key,
                    value: b"1".to_vec(),
                });
                req.set_timeout(Duration::from_secs(5));
                c.run(req).await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let key = format!("abandoned-{round}");
        let r = run_with_timeout(
            &sys,
            leader,
            "set",
            key.as_bytes(),
            b"x",
            Duration::from_millis(30),
        )
        .await;
        if r.is_err() {
            abandoned += 1;
        }
        first.await.unwrap().expect("the slow write commits");
    }
    assert!(
        abandoned > 0,
        "no write was abandoned: the test proves nothing"
    );
    // Let anything still queued commit, then look.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied: Vec<String> = (0..5)
        .map(|r| format!("abandoned-{r}"))
        .filter(|k| {
            sys.nodes[leader]
                .node()
                .local_get(k.as_bytes())
                .unwrap()
                .is_some()
        })
        .collect();
    println!("{abandoned} writes abandoned in the queue; applied anyway: {applied:?}");
    assert!(
        applied.is_empty(),
        "abandoned writes were applied: {applied:?}"
    );
    sys.shutdown().await;
}

/// A deposed leader that catches up by snapshot never hears back about its
/// own unreplicated proposal (openraft 0.9 answers proposals when they are
/// applied or truncated, not when a snapshot replaces them). When it leads
/// again, its writes must not wait behind that proposal forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_proposal_does_not_block_later_writes() {
    let settings = TestSettings {
        snapshot: SnapshotSettings {
            logs_since_last: 20,
            keep_logs: 2,
            ..SnapshotSettings::default()
        },
        limits: Limits {
            request_timeout_ms: 2_000,
            ..Limits::default()
        },
        ..TestSettings::default()
    };
    let sys = TestSystem::start_with(1, 3, settings).await;
    let cluster = sys.cluster_ids()[0].clone();
    let old = sys.leader(&cluster, Duration::from_secs(10)).await;
    sys.run(old, "set", b"before", b"1").await.unwrap();
    // Cut the leader off; its proposal cannot commit.
    sys.partition(&[old]);
    let lost = run_with_timeout(&sys, old, "set", b"lost", b"?", Duration::from_millis(500)).await;
    assert!(lost.is_err(), "a cut-off leader committed a write");
    // The others elect a leader and write past a snapshot and a purge.
    let others: Vec<usize> = sys
        .members(&cluster)
        .into_iter()
        .filter(|&i| i != old)
        .collect();
    let new = wait_for(Duration::from_secs(10), "a leader among the others", || {
        let best = others.iter().copied().find(|&i| {
            let m = sys.nodes[i].node().raft().metrics().borrow().clone();
            m.state == openraft::ServerState::Leader
        });
        async move { best }
    })
    .await;
    for k in 0..60u32 {
        sys.run(new, "set", format!("k{k}").as_bytes(), b"v")
            .await
            .unwrap();
    }
    sys.heal();
    // The old leader catches up (by snapshot: its log is purged on the new
    // leader), then becomes leader again.
    wait_for(
        Duration::from_secs(20),
        "the old leader to catch up",
        || {
            let done = sys.nodes[old]
                .node()
                .local_get(b"k59")
                .ok()
                .flatten()
                .is_some();
            async move { done.then_some(()) }
        },
    )
    .await;
    wait_for(
        Duration::from_secs(20),
        "the old leader to lead again",
        || {
            let raft = sys.nodes[old].node().raft().clone();
            async move {
                let _ = raft.trigger().elect().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let m = raft.metrics().borrow().clone();
                (m.state == openraft::ServerState::Leader).then_some(())
            }
        },
    )
    .await;
    let r = run_with_timeout(&sys, old, "set", b"after", b"1", Duration::from_secs(3)).await;
    assert!(
        r.is_ok(),
        "a write on the re-elected leader failed: {r:?} (stuck behind its lost proposal?)"
    );
    sys.shutdown().await;
}
