//! Failover, measured: the leader of a 3-replica cluster of real
//! processes is SIGKILLed under load, again and again, and each time the
//! time from the kill to the first acknowledgement of a write sent after
//! it is recorded (a write sent before the kill may be answered by the
//! old leader just before it dies). Prints every kill, the median and the worst.
//!
//! CI runs 3 kills; the issue "Faster than etcd" asks for at least 20:
//! `RAVEL_FAILOVER_KILLS=20 cargo test --workspace --test failover_kills -- --nocapture`
//! (results in docs/benchmarks.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ravel_testkit::history::History;
use ravel_testkit::process::{ProcSettings, ProcSystem};
use ravel_testkit::workload::{Workload, WorkloadConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kills_under_load_fail_over_quickly() {
    let kills: usize = std::env::var("RAVEL_FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (mut sys, cluster) = ProcSystem::start_cluster(ProcSettings::default()).await;
    let targets = sys.targets();
    let history = Arc::new(History::new());
    let load = Workload::start(&WorkloadConfig::default(), 5, targets, history.clone());
    let mut took = Vec::new();
    for k in 0..kills {
        let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
        // Writes are flowing before the kill.
        let before = history.elapsed();
        ravel_testkit::wait_for(Duration::from_secs(10), "writes before the kill", || {
            let acked = history.first_write_acked_after(before);
            async move { acked }
        })
        .await;
        let t0 = Instant::now();
        sys.kill_node(leader);
        let killed_at = history.elapsed();
        let acked = ravel_testkit::wait_for(
            Duration::from_secs(10),
            "a write acknowledged after the leader's kill",
            || {
                let acked = history.first_write_acked_after(killed_at);
                async move { acked }
            },
        )
        .await;
        let gap = Duration::from_nanos(acked - killed_at);
        println!(
            "kill {}/{kills}: first write sent after the leader's SIGKILL acknowledged {} ms after it",
            k + 1,
            gap.as_millis()
        );
        assert!(t0.elapsed() < Duration::from_secs(10));
        took.push(gap);
        // Back to three replicas, all following one leader.
        sys.start_node(leader).await;
        let members = sys.members(&cluster);
        ravel_testkit::wait_for(
            Duration::from_secs(20),
            "every replica to follow one leader",
            || {
                let (sys, members) = (&sys, members.clone());
                async move {
                    let mut leaders = Vec::new();
                    for m in members {
                        leaders.push(sys.status(m).await?.leader_id);
                    }
                    (!leaders[0].is_empty() && leaders.iter().all(|l| *l == leaders[0]))
                        .then_some(())
                }
            },
        )
        .await;
    }
    load.stop().await;
    took.sort();
    let median = took[took.len() / 2];
    let worst = took[took.len() - 1];
    println!(
        "failover over {kills} leader kills: median {} ms, worst {} ms",
        median.as_millis(),
        worst.as_millis()
    );
    for (i, t) in took.iter().enumerate() {
        assert!(
            *t < Duration::from_secs(3),
            "a failover took {t:?} (kill {i} in sorted order)"
        );
    }
}
