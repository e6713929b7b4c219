//! Membership through the admin: a fourth replica joins and gets all the
//! data; a replica leaves for good (`kill`): the group shrinks, the admin
//! forgets it and its data is deleted.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ravel_node::identity::Identity;
use ravel_testkit::{wait_for, TestSystem};
use serde_json::json;

fn voters(sys: &TestSystem, i: usize) -> BTreeSet<u64> {
    sys.nodes[i]
        .node()
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_replica_joins_then_one_leaves_for_good() {
    let mut sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    for k in 0..100u32 {
        sys.run(leader, "set", format!("k{k}").as_bytes(), b"v")
            .await
            .unwrap();
    }

    // Join: the admin assigns the new replica to the only cluster.
    let fourth = sys.add_node(false).await;
    assert_eq!(sys.nodes[fourth].cluster_id, cluster);
    let all: BTreeSet<u64> = sys
        .members(&cluster)
        .iter()
        .map(|&i| sys.nodes[i].id)
        .collect();
    assert_eq!(all.len(), 4);
    wait_for(Duration::from_secs(10), "4 voters", || {
        let v = voters(&sys, leader);
        let all = all.clone();
        async move { (v == all).then_some(()) }
    })
    .await;
    wait_for(
        Duration::from_secs(10),
        "the new replica to hold all data",
        || {
            let n = sys.nodes[fourth].node();
            let ok = (0..100u32).all(|k| {
                n.local_get(format!("k{k}").as_bytes())
                    .ok()
                    .flatten()
                    .is_some()
            });
            async move { ok.then_some(()) }
        },
    )
    .await;
    let reg = sys.admin().registry().snapshot();
    assert_eq!(reg.clusters[&cluster].members.len(), 4);

    // Leave for good: a follower, through the kill flow.
    let leaving = sys.other_member(&cluster, leader);
    let dir = sys.nodes[leaving].config.data_dir.clone();
    let identity = Identity::load(&dir).unwrap().unwrap();
    ravel_node::kill::leave_cluster(
        &identity,
        &Default::default(),
        tokio::time::Instant::now() + Duration::from_secs(20),
    )
    .await
    .expect("leave");
    sys.crash(leaving).await;
    std::fs::remove_dir_all(&dir).unwrap();

    let expected: BTreeSet<u64> = all
        .iter()
        .copied()
        .filter(|&id| id != sys.nodes[leaving].id)
        .collect();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    wait_for(Duration::from_secs(10), "3 voters after leave", || {
        let v = voters(&sys, leader);
        let e = expected.clone();
        async move { (v == e).then_some(()) }
    })
    .await;
    let reg = sys.admin().registry().snapshot();
    assert_eq!(reg.clusters[&cluster].members.len(), 3);
    assert!(!reg.clusters[&cluster]
        .members
        .contains_key(&sys.nodes[leaving].id.to_string()));
    // The smaller group still commits.
    sys.run(leader, "set", b"after-leave", b"1").await.unwrap();

    // Leaving again is harmless.
    ravel_node::kill::leave_cluster(
        &identity,
        &Default::default(),
        tokio::time::Instant::now() + Duration::from_secs(5),
    )
    .await
    .expect("second leave is idempotent");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_removes_data_and_registration() {
    let mut sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let victim = sys.other_member(&cluster, leader);
    let dir = sys.nodes[victim].config.data_dir.clone();
    // The in-process node is stopped first, as SIGTERM would stop a process.
    sys.crash(victim).await;
    ravel_node::kill::kill(&dir, &Default::default(), Duration::from_secs(20))
        .await
        .expect("kill");
    assert!(!dir.exists(), "kill left the data directory");
    let reg = sys.admin().registry().snapshot();
    assert!(!reg.clusters[&cluster]
        .members
        .contains_key(&sys.nodes[victim].id.to_string()));
    let v = voters(&sys, leader);
    assert!(!v.contains(&sys.nodes[victim].id));
    sys.shutdown().await;
}

/// A replica that crashed after the group added it but before it recorded
/// `joined` in its identity: `kill` must still take it out of the Raft
/// group (the leader's `Leave` is idempotent), not leave a dead voter
/// behind that every later quorum has to count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_a_replica_that_never_recorded_its_join_removes_it_from_raft() {
    let mut sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let victim = sys.other_member(&cluster, leader);
    let victim_id = sys.nodes[victim].id;
    let dir = sys.nodes[victim].config.data_dir.clone();
    sys.crash(victim).await;
    // As if it crashed before writing `joined: true`.
    ravel_testkit::edit_json(&dir.join("identity.json"), |ident| {
        ident["joined"] = serde_json::Value::Bool(false);
    });
    assert!(voters(&sys, leader).contains(&victim_id));

    ravel_node::kill::kill(&dir, &Default::default(), Duration::from_secs(20))
        .await
        .expect("kill");
    let members: BTreeSet<u64> = sys.nodes[leader]
        .node()
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .collect();
    assert!(
        !members.contains(&victim_id),
        "the killed replica is still in the group: {members:?}"
    );
    sys.shutdown().await;
}

/// A membership change whose proposer stops between its joint and its
/// final step (here: the change is dropped as soon as the joint
/// configuration appears, as a cancelled RPC or a crashed leader would)
/// must not leave the group in joint configuration, where every commit
/// needs a majority of both halves: the leader finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_abandoned_in_joint_configuration_is_finished() {
    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let victim = sys.other_member(&cluster, leader);
    let victim_id = sys.nodes[victim].id;
    let raft = sys.nodes[leader].node().raft().clone();
    let is_joint = |m: &ravel_consensus::types::RaftMetrics| {
        m.membership_config.membership().get_joint_config().len() > 1
    };
    {
        let mut metrics = raft.metrics();
        let change = raft.change_membership(
            openraft::ChangeMembers::RemoveVoters(BTreeSet::from([victim_id])),
            false,
        );
        tokio::pin!(change);
        loop {
            tokio::select! {
                biased;
                _ = metrics.changed() => {
                    if is_joint(&metrics.borrow()) {
                        break; // drop the change between its two steps
                    }
                }
                r = &mut change => panic!("the change finished before it could be abandoned: {r:?}"),
            }
        }
    }
    let done = ravel_testkit::wait_for(
        Duration::from_secs(10),
        "the joint configuration to be finished",
        || {
            let m = raft.metrics().borrow().clone();
            async move { (!is_joint(&m)).then_some(m) }
        },
    )
    .await;
    let voters: BTreeSet<u64> = done.membership_config.membership().voter_ids().collect();
    assert_eq!(voters.len(), 2, "{voters:?}");
    assert!(!voters.contains(&victim_id));
    // The cluster still commits.
    sys.run(leader, "set", b"after", b"joint")
        .await
        .expect("write after the change");
    sys.shutdown().await;
}

/// `kill --timeout` is a bound on the whole command: with an admin that
/// accepts connections but never answers, kill gives up at its timeout
/// (not after a call's own longer timeout) and deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_gives_up_at_its_timeout_and_keeps_the_data() {
    let mut sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let victim = sys.other_member(&cluster, leader);
    let dir = sys.nodes[victim].config.data_dir.clone();
    sys.crash(victim).await;
    // A listener nobody accepts from: connections hang in its backlog.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    ravel_testkit::edit_json(&dir.join("identity.json"), |ident| {
        ident["admin_addr"] = serde_json::Value::String(silent.local_addr().unwrap().to_string());
    });

    let started = std::time::Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        ravel_node::kill::kill(&dir, &Default::default(), Duration::from_secs(1)),
    )
    .await
    .expect("kill returns");
    let took = started.elapsed();
    println!("kill with a silent admin: {res:?} after {took:?}");
    assert!(
        matches!(res, Err(ravel_node::kill::KillError::Timeout(_))),
        "{res:?}"
    );
    // Its own deadline, not the 5 s of one admin call (slack for a loaded machine).
    assert!(took < Duration::from_secs(4), "kill took {took:?}");
    assert!(dir.join("identity.json").exists(), "kill deleted data");
    sys.shutdown().await;
}

async fn put(sys: &TestSystem, k: &str) -> u16 {
    sys.http("POST", "/put", Some(json!({"key": k, "val": k})))
        .await
        .status
}

/// `ravel member remove` (`DELETE /v1/members/{id}`): the admin drives
/// `Leave` and then `LeaveCluster` for a host that is gone with its disk,
/// and for a live leader; each ends with a Raft configuration and a
/// registry that agree, and the cluster serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_removes_a_dead_host_and_the_leader() {
    let mut sys = TestSystem::start(1, 3).await;
    let cluster = sys.nodes[0].cluster_id.clone();
    assert_eq!(put(&sys, "before").await, 200);
    let registered = |sys: &TestSystem| -> BTreeSet<u64> {
        sys.admin().registry().snapshot().clusters[&cluster]
            .members
            .keys()
            .map(|k| k.parse().unwrap())
            .collect()
    };

    // A follower's host dies with its disk.
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let dead = sys.other_member(&cluster, leader);
    let dead_id = sys.nodes[dead].id;
    sys.crash(dead).await;
    std::fs::remove_dir_all(&sys.nodes[dead].config.data_dir).unwrap();
    let r = sys
        .http("DELETE", &format!("/v1/members/{dead_id}"), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(!voters(&sys, leader).contains(&dead_id));
    assert!(!registered(&sys).contains(&dead_id));
    assert_eq!(put(&sys, "after-dead-host").await, 200);
    // Again: it is gone.
    let r = sys
        .http("DELETE", &format!("/v1/members/{dead_id}"), None)
        .await;
    assert_eq!(r.status, 404, "{:?}", r.body);

    // A third replica joins; then the live leader is removed and one of
    // the other two takes over.
    let third = sys.add_node(false).await;
    assert_eq!(sys.nodes[third].cluster_id, cluster);
    let leader_id = sys.nodes[leader].id;
    let r = sys
        .http("DELETE", &format!("/v1/members/{leader_id}"), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let new_leader = wait_for(Duration::from_secs(15), "a new leader", || {
        let l = (0..sys.nodes.len()).find(|&i| {
            i != leader
                && sys.nodes[i].is_running()
                && sys.nodes[i].node().raft().metrics().borrow().state
                    == openraft::ServerState::Leader
        });
        async move { l }
    })
    .await;
    assert!(!voters(&sys, new_leader).contains(&leader_id));
    assert!(!registered(&sys).contains(&leader_id));
    assert_eq!(voters(&sys, new_leader), registered(&sys));
    assert_eq!(put(&sys, "after-leader").await, 200);
    sys.shutdown().await;
}

/// The registry's members of `cluster`, as node ids.
fn registered(sys: &TestSystem, cluster: &str) -> BTreeSet<u64> {
    sys.admin()
        .registry()
        .snapshot()
        .clusters
        .get(cluster)
        .map(|c| c.members.keys().map(|k| k.parse().unwrap()).collect())
        .unwrap_or_default()
}

/// Two replicas of a three-replica cluster leave at the same time (two
/// operators, or a script, running `kill`): both go, Raft keeps its last
/// voter, and Raft and the registry agree on who is left. Then a `kill`
/// whose `Leave` went through but whose `LeaveCluster` never ran (the
/// admin was down) is run again: the second run finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_and_half_failed_kills_end_with_raft_and_registry_agreeing() {
    // A panic inside a node's Raft core (a task, so the test would not see
    // it otherwise) fails the test: openraft asserted "Only leader is
    // allowed to call update_effective_membership()" in 4 runs of 18 when
    // a second change reached a leader the first was removing.
    let panics = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = panics.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.lock().unwrap().push(info.to_string());
        default(info);
    }));
    let mut sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    assert_eq!(put(&sys, "before").await, 200);
    // The leader and a follower leave at once.
    let follower = sys.other_member(&cluster, leader);
    let leaving = [leader, follower];
    let kills: Vec<_> = leaving
        .iter()
        .map(|&i| {
            let identity = Identity::load(&sys.nodes[i].config.data_dir)
                .unwrap()
                .unwrap();
            tokio::spawn(async move {
                ravel_node::kill::leave_cluster(
                    &identity,
                    &Default::default(),
                    tokio::time::Instant::now() + Duration::from_secs(30),
                )
                .await
            })
        })
        .collect();
    for k in kills {
        k.await.unwrap().expect("concurrent leave");
    }
    for i in leaving {
        sys.crash(i).await;
    }
    let left = (0..sys.nodes.len()).find(|i| !leaving.contains(i)).unwrap();
    let new_leader = sys.leader(&cluster, Duration::from_secs(15)).await;
    assert_eq!(new_leader, left);
    assert_eq!(voters(&sys, left), BTreeSet::from([sys.nodes[left].id]));
    assert_eq!(registered(&sys, &cluster), voters(&sys, left));
    assert_eq!(put(&sys, "after-concurrent").await, 200);

    // Grow again, then a kill that stops half way: the Raft `Leave` is
    // done, the admin never heard of it.
    let joined = sys.add_node(false).await;
    let joined_id = sys.nodes[joined].id;
    let dir = sys.nodes[joined].config.data_dir.clone();
    let identity = Identity::load(&dir).unwrap().unwrap();
    sys.stop_admin().await;
    let mut c = sys.client(left).await;
    c.leave(ravel_proto::node::Node {
        node_id: joined_id.to_string(),
        grpc_address: sys.nodes[joined].addr.clone(),
        raft_address: sys.nodes[joined].addr.clone(),
        cluster_id: cluster.clone(),
    })
    .await
    .expect("Raft Leave");
    sys.restart_admin().await;
    assert!(!voters(&sys, left).contains(&joined_id));
    assert!(registered(&sys, &cluster).contains(&joined_id));
    // The second kill.
    ravel_node::kill::leave_cluster(
        &identity,
        &Default::default(),
        tokio::time::Instant::now() + Duration::from_secs(30),
    )
    .await
    .expect("second kill");
    sys.crash(joined).await;
    assert_eq!(registered(&sys, &cluster), voters(&sys, left));
    assert_eq!(put(&sys, "after-half-failed").await, 200);
    sys.shutdown().await;
    let panics = panics.lock().unwrap().clone();
    assert!(panics.is_empty(), "panics in node tasks: {panics:?}");
}
