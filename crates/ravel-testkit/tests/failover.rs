//! Three replicas: acknowledged writes survive the leader's crash, and the
//! time from the crash to the first successful write is measured.

use std::time::{Duration, Instant};

use ravel_testkit::TestSystem;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_leader_crash() {
    let mut sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;

    // Writes through every replica: followers forward to the leader.
    let mut acked = Vec::new();
    for k in 0..150u32 {
        let via = sys.members(&cluster)[k as usize % 3];
        let key = format!("key-{k}");
        let value = format!("value-{k}");
        sys.run(via, "set", key.as_bytes(), value.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("write {k} via node {via}: {e}"));
        acked.push((key, value));
    }

    let crashed_at = Instant::now();
    sys.crash(leader).await;
    let survivors: Vec<usize> = sys
        .members(&cluster)
        .into_iter()
        .filter(|&i| i != leader)
        .collect();

    // Keep writing until a write succeeds through a survivor.
    let mut attempt = 0;
    let failover = loop {
        let via = survivors[attempt % survivors.len()];
        attempt += 1;
        if sys.run(via, "set", b"after-failover", b"1").await.is_ok() {
            break crashed_at.elapsed();
        }
        assert!(
            crashed_at.elapsed() < Duration::from_secs(10),
            "no write succeeded within 10 s of the crash"
        );
    };
    println!(
        "failover: first successful write {} ms after the leader crashed",
        failover.as_millis()
    );
    assert!(
        failover < Duration::from_secs(2),
        "failover took {failover:?}"
    );

    let new_leader = sys.leader(&cluster, Duration::from_secs(5)).await;
    assert_ne!(new_leader, leader);
    for (key, value) in &acked {
        let got = sys
            .run(new_leader, "get", key.as_bytes(), b"")
            .await
            .unwrap_or_else(|e| panic!("read {key} after failover: {e}"));
        assert_eq!(got.get_ref().data, value.as_bytes(), "{key}");
    }
    sys.shutdown().await;
}

/// The admin's registry names a leader that is alive but cut off from its
/// cluster (its successor's report has not won: here it is made to lose,
/// as a report that never arrived would). A read sent there waits for a
/// quorum that never answers; the router used to spend the whole request
/// deadline on that first attempt and answer 503. Each attempt now gets
/// a share of the deadline, and the replicas are asked who leads (all at
/// once) within the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_finds_the_new_leader_within_the_deadline() {
    let mut sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let r = sys
        .http(
            "POST",
            "/put",
            Some(serde_json::json!({"key": "k", "val": 1})),
        )
        .await;
    assert_eq!(r.status, 200);
    let old = sys.leader(&cluster, Duration::from_secs(10)).await;
    let old_id = sys.nodes[old].id;
    sys.stop_admin().await;
    sys.partition(&[old]);
    let new = ravel_testkit::wait_for(Duration::from_secs(15), "a new leader", || {
        let l = (0..sys.nodes.len()).find(|&i| {
            i != old
                && sys.nodes[i].node().raft().metrics().borrow().state
                    == openraft::ServerState::Leader
        });
        async move { l }
    })
    .await;
    assert_ne!(new, old);
    // The registry still names the cut-off leader, with a term no report
    // can beat.
    ravel_testkit::edit_json(&sys.root().join("admin").join("registry.json"), |reg| {
        let c = &mut reg["clusters"][&cluster];
        c["leader"] = serde_json::json!(old_id.to_string());
        c["leader_term"] = serde_json::json!(u64::MAX / 2);
    });
    sys.restart_admin().await;
    let started = Instant::now();
    let r = sys
        .http("POST", "/get", Some(serde_json::json!({"key": "k"})))
        .await;
    println!(
        "read through the admin with the registry naming a cut-off leader: {} in {} ms",
        r.status,
        started.elapsed().as_millis()
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["val"], 1);
    sys.heal();
    sys.shutdown().await;
}

/// A restarted leader does not lead again in its old term (its followers
/// may hold entries of that term that its own disk lost): it leads, if at
/// all, after a new election, in a later term. A lone replica shows it
/// plainly: before, it came back as the leader of the same term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_leads_only_in_a_new_term() {
    let mut sys = TestSystem::start(1, 1).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    sys.run(leader, "set", b"before", b"1").await.unwrap();
    let term = |sys: &TestSystem| {
        sys.nodes[leader]
            .node()
            .raft()
            .metrics()
            .borrow()
            .current_term
    };
    let before = term(&sys);
    sys.crash(leader).await;
    sys.restart(leader).await;
    assert_eq!(sys.leader(&cluster, Duration::from_secs(15)).await, leader);
    let after = term(&sys);
    assert!(
        after > before,
        "led again in term {after}, the term it led before the restart"
    );
    let got = sys.run(leader, "get", b"before", b"").await.unwrap();
    assert_eq!(got.get_ref().data, b"1");
    sys.shutdown().await;
}
