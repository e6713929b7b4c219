//! Real processes under load: SIGTERM stops a node promptly.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ravel_testkit::history::History;
use ravel_testkit::process::{ProcSettings, ProcSystem};
use ravel_testkit::workload::{Targets, Workload, WorkloadConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_promptly() {
    let mut sys = ProcSystem::start(ProcSettings::default()).await;
    let founder = sys.add_node(true).await;
    let cluster = sys.nodes[founder].cluster_id.clone();
    sys.add_node(false).await;
    sys.add_node(false).await;
    let targets = Targets {
        nodes: Arc::new(RwLock::new(
            sys.nodes.iter().map(|n| n.addr.clone()).collect(),
        )),
        http: Some(sys.admin_http.clone()),
        leader: Arc::new(RwLock::new(None)),
    };
    let history = Arc::new(History::new());
    let load = Workload::start(&WorkloadConfig::default(), 7, targets, history.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    for role in ["follower", "leader"] {
        let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
        let victim = if role == "leader" {
            leader
        } else {
            sys.members(&cluster)
                .into_iter()
                .find(|&i| i != leader && sys.nodes[i].is_running())
                .unwrap()
        };
        let t = Instant::now();
        let status = sys.stop_node(victim);
        let took = t.elapsed();
        println!("SIGTERM to the {role}: exited with {status:?} after {took:?}");
        assert!(
            status.is_some_and(|s| s.success()) && took < Duration::from_secs(5),
            "the {role} took {took:?} to exit ({status:?})\n{}",
            sys.log_tails(20)
        );
        sys.start_node(victim).await;
    }
    // `ravel-node kill` of a follower under load: it leaves, deregisters,
    // and its process stops promptly once told to.
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let victim = sys
        .members(&cluster)
        .into_iter()
        .find(|&i| i != leader)
        .unwrap();
    let t = Instant::now();
    let removed = sys.remove_node(victim, Duration::from_secs(30)).await;
    let took = t.elapsed();
    println!("ravel-node kill of a follower under load: {removed:?} after {took:?}");
    assert!(
        removed.is_ok() && took < Duration::from_secs(10),
        "kill took {took:?}: {removed:?}\n{}",
        sys.log_tails(30)
    );
    load.stop().await;
}

/// `ravel-node kill` of the leader under load (it removes itself from the
/// group): the others elect a new leader and serve again promptly. Before
/// the fix, every request on a follower spun in `await_leader` (the old
/// leader was still "known" but no longer a member), starving the node's
/// runtime so that it answered no vote request for seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_under_load_elects_a_new_one_promptly() {
    let mut sys = ProcSystem::start(ProcSettings::default()).await;
    let founder = sys.add_node(true).await;
    let cluster = sys.nodes[founder].cluster_id.clone();
    for _ in 0..3 {
        sys.add_node(false).await;
    }
    let targets = Targets {
        nodes: Arc::new(RwLock::new(
            sys.nodes.iter().map(|n| n.addr.clone()).collect(),
        )),
        http: Some(sys.admin_http.clone()),
        leader: Arc::new(RwLock::new(None)),
    };
    let history = Arc::new(History::new());
    let load = Workload::start(
        &WorkloadConfig::default(),
        11,
        targets.clone(),
        history.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let removed_at = history.elapsed();
    sys.remove_node(leader, Duration::from_secs(30))
        .await
        .expect("remove the leader");
    let t = Instant::now();
    let new_leader = sys.leader(&cluster, Duration::from_secs(20)).await;
    println!(
        "leader removed; node {new_leader} leads {:?} after the removal finished",
        t.elapsed()
    );
    *targets.nodes.write().unwrap() = sys
        .members(&cluster)
        .into_iter()
        .map(|i| sys.nodes[i].addr.clone())
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop().await;
    let gap = history.longest_gap_without_success(removed_at, history.elapsed());
    println!(
        "longest stretch without a successful operation: {} ms",
        gap / 1_000_000
    );
    assert!(
        gap < 3_000_000_000,
        "no operation succeeded for {} ms after the leader left\n{}",
        gap / 1_000_000,
        sys.log_tails(20)
    );
}
