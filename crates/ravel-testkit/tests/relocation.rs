//! Relocation: clusters come and go while clients read and write; no
//! acknowledged write is lost, no deleted key comes back, and only the keys
//! of partitions that changed owner move.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use ravel_admin::ring::HashRing;
use ravel_proto::partition_of;
use ravel_testkit::http::request;
use ravel_testkit::prom::{get, parse, scrape};
use ravel_testkit::{wait_for, TestSystem};
use serde_json::{json, Value};

/// What a writer last had acknowledged for a key: a value, or deleted.
type Model = HashMap<String, Option<Value>>;

async fn put(addr: &str, key: &str, val: &Value) -> bool {
    let body = serde_json::to_vec(&json!({"key": key, "val": val})).unwrap();
    matches!(request(addr, "POST", "/put", Some(&body), Duration::from_secs(10)).await, Ok(r) if r.status == 200)
}

async fn delete(addr: &str, key: &str) -> bool {
    let body = serde_json::to_vec(&json!({"key": key})).unwrap();
    matches!(request(addr, "POST", "/delete", Some(&body), Duration::from_secs(10)).await, Ok(r) if r.status == 200)
}

async fn preload(sys: &TestSystem, n: usize) -> Model {
    let addr = sys.http_addr().to_string();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut m = Model::new();
            for k in (w..n).step_by(8) {
                let key = format!("key-{k}");
                let v = json!({"k": k, "gen": 0});
                assert!(put(&addr, &key, &v).await, "preload {key}");
                m.insert(key, Some(v));
            }
            m
        }));
    }
    let mut model = Model::new();
    for t in tasks {
        model.extend(t.await.unwrap());
    }
    model
}

/// Writers own disjoint keys (k % writers == w), so each key's last
/// acknowledged operation is well defined. Returns their models.
fn start_writers(
    addr: String,
    n: usize,
    writers: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Model>> {
    (0..writers)
        .map(|w| {
            let (addr, stop) = (addr.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ w as u64);
                let mut m = Model::new();
                let mut gen = 1;
                while !stop.load(Ordering::Relaxed) {
                    let k = rng.random_range(0..n / writers) * writers + w;
                    let key = format!("key-{k}");
                    if rng.random_bool(0.1) {
                        if delete(&addr, &key).await {
                            m.insert(key, None);
                        }
                    } else {
                        let v = json!({"k": k, "gen": gen, "w": w});
                        gen += 1;
                        if put(&addr, &key, &v).await {
                            m.insert(key, Some(v));
                        }
                    }
                }
                m
            })
        })
        .collect()
}

/// Every key reads back as the model says, and lives only on its owner.
async fn verify(sys: &TestSystem, model: &Model) {
    let members = sys.admin().registry().snapshot().ring.members.clone();
    let owners = HashRing::default().owners(&members);
    let mut wrong = Vec::new();
    for (key, expected) in model {
        let r = sys.http("POST", "/get", Some(json!({"key": key}))).await;
        let got = match r.status {
            200 => Some(r.body["val"].clone()),
            404 => None,
            s => panic!("get {key}: status {s} {:?}", r.body),
        };
        if &got != expected {
            wrong.push(format!("{key}: expected {expected:?}, got {got:?}"));
        }
        let owner = &owners[ravel_proto::partition_of(key.as_bytes(), 271) as usize];
        for n in sys.nodes.iter().filter(|n| n.is_running()) {
            let held = n.node().local_get(key.as_bytes()).unwrap();
            if &n.cluster_id != owner && held.is_some() {
                wrong.push(format!("{key}: still on {} (owner {owner})", n.cluster_id));
            }
            if &n.cluster_id == owner && held.as_deref() == Some(ravel_admin::TOMBSTONE) {
                wrong.push(format!("{key}: tombstone left on {owner}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} keys wrong, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}

async fn wait_relocations(sys: &TestSystem, done: u64) {
    wait_for(
        Duration::from_secs(60),
        &format!("{done} relocations to finish"),
        || {
            let r = sys.admin().registry().snapshot().ring.clone();
            async move { (r.relocation.is_none() && r.relocations_done >= done).then_some(()) }
        },
    )
    .await;
}

fn seed() -> u64 {
    let seed = std::env::var("RAVEL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed: {seed} (replay with RAVEL_TEST_SEED={seed})");
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_cluster_added_while_writers_run() {
    let seed = seed();
    let mut sys = TestSystem::start(2, 1).await;
    wait_relocations(&sys, 1).await; // the second cluster joined the ring
    const N: usize = 3000;
    let mut model = preload(&sys, N).await;
    let before = sys.admin().registry().snapshot().ring.moved_keys_total;

    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(sys.http_addr().to_string(), N, 4, seed, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await; // writers under way
    let third = sys.add_node(true).await;
    let third_id = sys.nodes[third].cluster_id.clone();
    wait_relocations(&sys, 2).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        model.extend(w.await.unwrap());
    }

    let ring = sys.admin().registry().snapshot().ring.clone();
    assert!(ring.members.contains(&third_id));
    let moved = ring.moved_keys_total - before;
    let expected = N as f64 / 3.0;
    println!("relocation moved {moved} keys; expected share {expected:.0} (of {N})");
    assert!(
        (moved as f64 - expected).abs() <= expected * 0.25,
        "moved {moved} keys, expected {expected:.0} ± 25%"
    );
    verify(&sys, &model).await;
    // The admin counts what it moved (Prometheus derives the rate).
    let metrics = reqwest::get(format!("http://{}/metrics", sys.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ravel_admin_relocation_keys_moved_total "))
        .expect("the keys-moved counter")
        .parse()
        .unwrap();
    assert_eq!(counted, ring.moved_keys_total, "{metrics}");
    sys.shutdown().await;
}

/// Nodes of an older version lack the move-batch calls: the admin moves
/// their keys one by one instead, and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_move_one_by_one_between_nodes_without_move_batches() {
    let mut sys = TestSystem::start(2, 1).await;
    wait_relocations(&sys, 1).await;
    const N: usize = 600;
    let model = preload(&sys, N).await;
    let before = sys.admin().registry().snapshot().ring.moved_keys_total;
    // Into a new cluster from old ones (their deletes fall back), then
    // back out of it (the old ones' copies fall back, then its deletes).
    for n in &sys.nodes {
        sys.faults.remove_move_batches(n.id);
    }
    let third = sys.add_node(true).await;
    let third_id = sys.nodes[third].cluster_id.clone();
    wait_relocations(&sys, 2).await;
    sys.faults.remove_move_batches(sys.nodes[third].id);
    decommission(&mut sys, &third_id).await;
    wait_relocations(&sys, 3).await;
    let moved = sys.admin().registry().snapshot().ring.moved_keys_total - before;
    assert!(moved > 0, "nothing moved");
    verify(&sys, &model).await;
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_replica_leaving_moves_its_keys_away() {
    let mut sys = TestSystem::start(3, 1).await;
    wait_relocations(&sys, 2).await;
    let model = preload(&sys, 1500).await;
    let leaving = 2;
    let cluster = sys.nodes[leaving].cluster_id.clone();
    let identity = ravel_node::identity::Identity::load(&sys.nodes[leaving].config.data_dir)
        .unwrap()
        .unwrap();
    // The kill flow: LeaveCluster answers only once the keys are elsewhere.
    ravel_node::kill::leave_cluster(
        &identity,
        &Default::default(),
        tokio::time::Instant::now() + Duration::from_secs(60),
    )
    .await
    .expect("leave");
    let reg = sys.admin().registry().snapshot();
    assert!(
        !reg.clusters.contains_key(&cluster),
        "cluster still registered"
    );
    assert!(!reg.ring.members.contains(&cluster));
    sys.crash(leaving).await;
    std::fs::remove_dir_all(&sys.nodes[leaving].config.data_dir).unwrap();
    verify(&sys, &model).await;
    sys.shutdown().await;
}

/// Reproduced on release binaries: a replica registers for a one-replica
/// cluster but never joins (a phantom in the registry, listed under the
/// cluster as `unreachable`), then the cluster's only real replica is
/// decommissioned with `kill`. `Leave` is a no-op for the last voter, and
/// the admin counted two registry members, so no relocation ran and 117 of
/// 300 acknowledged keys were deleted with the data. The admin now decides
/// on the cluster's Raft voters: the keys move away first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommissioning_a_cluster_with_a_phantom_member_moves_its_keys_first() {
    use ravel_proto::admin::ravel_cluster_admin_client::RavelClusterAdminClient;
    use ravel_proto::admin::Node;

    let mut sys = TestSystem::start(2, 1).await;
    wait_relocations(&sys, 1).await;
    let model = preload(&sys, 300).await;
    let mut admin = RavelClusterAdminClient::connect(format!("http://{}", sys.admin_addr()))
        .await
        .unwrap();
    let phantom = admin
        .join_existing_cluster(Node {
            node_id: "4242".into(),
            grpc_address: "127.0.0.1:9".into(),
            raft_address: String::new(),
            cluster_id: String::new(),
        })
        .await
        .expect("register a phantom")
        .into_inner();
    let cluster = phantom.cluster_id.clone();
    decommission(&mut sys, &cluster).await;
    let reg = sys.admin().registry().snapshot();
    assert!(
        !reg.ring.members.contains(&cluster),
        "{cluster} is still on the ring after its last replica left"
    );
    verify(&sys, &model).await;
    // The phantom goes with its cluster once it leaves too.
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_killed_mid_relocation_resumes_and_loses_nothing() {
    let mut sys = TestSystem::start(2, 1).await;
    wait_relocations(&sys, 1).await;
    const N: usize = 4000;
    let mut model = preload(&sys, N).await;
    // Stop the admin once some, but not all, keys have moved: held after
    // the first page's cursor is persisted, before the move ends (a kill
    // timed by polling could land after it, and test nothing).
    sys.admin().holds().arm("mover.after_page");
    sys.add_node(true).await;
    sys.admin().holds().reached("mover.after_page").await;
    sys.stop_admin().await;
    let on_disk = ravel_admin::registry::Registry::open(&sys.root().join("admin"))
        .unwrap()
        .snapshot();
    let r = on_disk
        .ring
        .relocation
        .clone()
        .expect("relocation persisted as in progress");
    println!(
        "admin stopped with {} of {} partitions pending, {} keys moved",
        r.pending.len(),
        r.total_partitions,
        r.moved_keys
    );
    assert!(!r.pending.is_empty());
    assert!(
        !r.pair_cursors.is_empty(),
        "no cursor persisted to resume from"
    );

    sys.restart_admin().await;
    // Writes during the resumed move.
    for k in (0..N).step_by(10) {
        let key = format!("key-{k}");
        let v = json!({"after": "restart", "k": k});
        assert!(put(sys.http_addr(), &key, &v).await);
        model.insert(key, Some(v));
    }
    wait_relocations(&sys, 2).await;
    verify(&sys, &model).await;
    sys.shutdown().await;
}

/// Once every key of a pair's partitions is copied, the old owner's copies
/// go in one step (`DeletePartitions`). An admin stopped right after that
/// step, before the move's end is recorded, resumes: its listing finds
/// nothing left, the removal is repeated, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_stopped_after_the_old_owner_is_emptied_resumes_and_loses_nothing() {
    let mut sys = TestSystem::start(1, 1).await;
    let source = sys.cluster_ids()[0].clone();
    let mut model = preload(&sys, 1500).await;
    sys.admin().holds().arm("mover.after_removal");
    let second = sys.add_node(true).await;
    let dest = sys.nodes[second].cluster_id.clone();
    sys.admin().holds().reached("mover.after_removal").await;
    let members = sys.admin().registry().snapshot().ring.members.clone();
    let owners = HashRing::default().owners(&members);
    let moving: Vec<String> = model
        .keys()
        .filter(|k| owners[ravel_proto::partition_of(k.as_bytes(), 271) as usize] == dest)
        .cloned()
        .collect();
    assert!(moving.len() > 300, "{} keys moving", moving.len());
    let old = sys.nodes.iter().find(|n| n.cluster_id == source).unwrap();
    let new = &sys.nodes[second];
    for k in &moving {
        assert_eq!(
            old.node().local_get(k.as_bytes()).unwrap(),
            None,
            "{k} left on the old owner"
        );
        assert!(
            new.node().local_get(k.as_bytes()).unwrap().is_some(),
            "{k} not copied"
        );
    }
    assert!(
        sys.admin().registry().snapshot().ring.relocation.is_some(),
        "the move's end is not recorded yet"
    );
    sys.stop_admin().await;
    sys.restart_admin().await;
    // Writes once the admin is back: to the new owner.
    for k in moving.iter().take(50) {
        let v = json!({"after": "restart"});
        assert!(put(sys.http_addr(), k, &v).await);
        model.insert(k.clone(), Some(v));
    }
    wait_relocations(&sys, 1).await;
    verify(&sys, &model).await;
    sys.shutdown().await;
}

/// A founder whose `InitiateDataRelocation` the admin never acknowledged
/// (the admin was down, the founder then crashed) announces its cluster
/// again when it restarts; before, `joined` was saved before the
/// acknowledgement and a restart never sent it, so the cluster stayed off
/// the ring for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founder_announces_its_cluster_again_until_acknowledged() {
    let mut sys = TestSystem::start(2, 1).await;
    wait_relocations(&sys, 1).await;
    let founder = 1;
    let cluster = sys.nodes[founder].cluster_id.clone();
    sys.crash(founder).await;
    sys.stop_admin().await;
    // As if the announcement had never reached the admin...
    ravel_testkit::edit_json(&sys.root().join("admin").join("registry.json"), |reg| {
        reg["clusters"][&cluster]["ready"] = json!(false);
        reg["ring"]["members"] = json!(reg["ring"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m.as_str() != Some(cluster.as_str()))
            .cloned()
            .collect::<Vec<_>>());
    });
    // ...and the founder had not recorded an acknowledgement.
    let id_path = sys.nodes[founder].config.data_dir.join("identity.json");
    ravel_testkit::edit_json(&id_path, |ident| ident["announced"] = json!(false));

    sys.restart_admin().await;
    assert!(!sys
        .admin()
        .registry()
        .snapshot()
        .ring
        .members
        .contains(&cluster));
    sys.restart(founder).await;
    wait_for(
        Duration::from_secs(30),
        &format!("{cluster} back on the ring"),
        || {
            let on = sys
                .admin()
                .registry()
                .snapshot()
                .ring
                .members
                .contains(&cluster);
            async move { on.then_some(()) }
        },
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the founder to record the acknowledgement",
        || {
            let v: Option<Value> = std::fs::read(&id_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            async move { v.filter(|v| v["announced"] == json!(true)).map(|_| ()) }
        },
    )
    .await;
    sys.shutdown().await;
}

/// Partitions of large values move: listing pages are bounded by bytes,
/// not only by count. Before, a page of up to 256 entries with ~1 MB
/// values outgrew the admin's decoding limit, the step failed the same way
/// every 200 ms, and no ring change could ever finish. (80 values of 1 MB:
/// about half of them move, one page's worth above the admin's limit
/// without the byte bound.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_of_large_values_move() {
    let mut sys = TestSystem::start(1, 1).await;
    let addr = sys.http_addr().to_string();
    let big = "v".repeat(1_000_000);
    let mut model = Model::new();
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let (addr, big) = (addr.clone(), big.clone());
            tokio::spawn(async move {
                let mut m = Model::new();
                for k in (w..80).step_by(4) {
                    let key = format!("big-{k}");
                    let v = json!(format!("{k}:{big}"));
                    assert!(put(&addr, &key, &v).await, "put {key}");
                    m.insert(key, Some(v));
                }
                m
            })
        })
        .collect();
    for t in tasks {
        model.extend(t.await.unwrap());
    }
    sys.add_node(true).await;
    wait_relocations(&sys, 1).await;
    let moved = sys.admin().registry().snapshot().ring.moved_keys_total;
    println!("moved {moved} keys of ~1 MB");
    assert!(moved >= 20, "only {moved} keys moved");
    verify(&sys, &model).await;
    sys.shutdown().await;
}

/// `relocation_mib_per_s` holds a move to its rate: at 1 MiB/s, the ~5 MB
/// that move here take at least their bytes' time less the first batch's
/// (up to 1 MiB goes at once). Unpaced, the same move takes well under
/// that (printed, for comparison), so a pacer that stopped pacing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_relocation_moves_no_faster_than_its_rate() {
    const VALUE: usize = 100_000;
    for rate in [0u64, 1] {
        let settings = ravel_testkit::TestSettings {
            relocation_mib_per_s: rate,
            ..Default::default()
        };
        let mut sys = TestSystem::start_with(1, 1, settings).await;
        let addr = sys.http_addr().to_string();
        let mut model = Model::new();
        let big = "v".repeat(VALUE);
        for k in 0..100 {
            let (key, v) = (format!("paced-{k}"), json!(format!("{k}:{big}")));
            assert!(put(&addr, &key, &v).await, "put {key}");
            model.insert(key, Some(v));
        }
        let t0 = std::time::Instant::now();
        sys.add_node(true).await;
        wait_relocations(&sys, 1).await;
        let took = t0.elapsed();
        let moved = sys.admin().registry().snapshot().ring.moved_keys_total;
        let bytes = moved as f64 * VALUE as f64;
        println!("relocation_mib_per_s = {rate}: {moved} keys ({bytes} bytes) in {took:?}");
        verify(&sys, &model).await;
        sys.shutdown().await;
        if rate > 0 {
            let floor = (bytes - (1 << 20) as f64) / (rate << 20) as f64;
            assert!(
                floor >= 2.0,
                "too little moved to measure the pace: {moved} keys"
            );
            assert!(
                took.as_secs_f64() >= floor,
                "{bytes} bytes moved in {took:?} at {rate} MiB/s (at least {floor:.1} s)"
            );
        }
    }
}

/// The index of the (only) replica of `cluster` in a system of one-replica
/// clusters.
fn replica_of(sys: &TestSystem, cluster: &str) -> usize {
    (0..sys.nodes.len())
        .find(|&i| sys.nodes[i].cluster_id == cluster && sys.nodes[i].is_running())
        .unwrap_or_else(|| panic!("no running replica of {cluster}"))
}

/// Decommissions a one-replica cluster the way `ravel-node kill` does: its
/// replica leaves (its keys move away first), then stops with its data
/// deleted.
async fn decommission(sys: &mut TestSystem, cluster: &str) {
    let i = replica_of(sys, cluster);
    let dir = sys.nodes[i].config.data_dir.clone();
    let identity = ravel_node::identity::Identity::load(&dir).unwrap().unwrap();
    ravel_node::kill::leave_cluster(
        &identity,
        &Default::default(),
        tokio::time::Instant::now() + Duration::from_secs(60),
    )
    .await
    .expect("leave");
    sys.crash(i).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A write the admin routed by an old ring and gave up on (its deadline
/// passed while it sat in a queue or on the wire) reaches the partition's
/// old owner after the move. Before fencing it was applied there: a ghost
/// value, invisible while the partition lived elsewhere, until the
/// partition moved back (a cluster added, then removed): the copy step
/// took the ghost for a newer write, kept it, and deleted the only copy of
/// the acknowledged value. Writes carry the ring epoch they were routed by
/// (`x-ravel-ring-epoch`) and an old owner, fenced when the move began,
/// refuses older epochs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_write_routed_by_an_old_ring_is_refused_by_the_old_owner() {
    let mut sys = TestSystem::start(2, 1).await;
    wait_relocations(&sys, 1).await;
    let model = preload(&sys, 300).await;
    let before = sys.admin().registry().snapshot().ring.clone();
    let old_owners = HashRing::default().owners(&before.members);

    let third = sys.add_node(true).await;
    let third_id = sys.nodes[third].cluster_id.clone();
    wait_relocations(&sys, 2).await;
    let members = sys.admin().registry().snapshot().ring.members.clone();
    let new_owners = HashRing::default().owners(&members);
    let (key, old_owner) = model
        .keys()
        .find_map(|k| {
            let p = ravel_proto::partition_of(k.as_bytes(), 271) as usize;
            (new_owners[p] == third_id).then(|| (k.clone(), old_owners[p].clone()))
        })
        .expect("a key that moved to the new cluster");

    // The late write, as the admin sent it under the old ring.
    let mut client = sys.client(replica_of(&sys, &old_owner)).await;
    let mut req = tonic::Request::new(ravel_proto::node::Command {
        operation: "set".into(),
        key: key.clone().into_bytes(),
        value: serde_json::to_vec(&json!("ghost")).unwrap(),
    });
    req.metadata_mut().insert(
        ravel_proto::metadata::RING_EPOCH,
        before.generation.to_string().parse().unwrap(),
    );
    let late = client.run(req).await;

    // The new cluster leaves again: its partitions move back to their old
    // owners.
    decommission(&mut sys, &third_id).await;
    wait_relocations(&sys, 3).await;
    verify(&sys, &model).await;
    let refused = late.expect_err("the old owner applied a write routed by an old ring");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    println!("late write refused: {}", refused.message());
    sys.shutdown().await;
}

/// Deletes during a move leave tombstones on the destination; they are
/// swept once the move is done. An admin stopped between the two used to
/// forget the sweep: the tombstones stayed for good, and the next move of
/// those partitions into that cluster took them for newer deletes and
/// dropped the values it was moving (acknowledged writes). The pending
/// sweep is persisted with the move's end and run after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_swept_even_when_the_admin_stops_before_the_sweep() {
    let mut sys = TestSystem::start(1, 1).await;
    let mut model = preload(&sys, 300).await;
    sys.admin().holds().arm("mover.before_copy");
    let second = sys.add_node(true).await;
    let second_id = sys.nodes[second].cluster_id.clone();
    sys.admin().holds().reached("mover.before_copy").await;
    // Delete keys of moving partitions: tombstones on the new owner.
    let members = sys.admin().registry().snapshot().ring.members.clone();
    let owners = HashRing::default().owners(&members);
    let moving: Vec<String> = model
        .keys()
        .filter(|k| owners[ravel_proto::partition_of(k.as_bytes(), 271) as usize] == second_id)
        .take(20)
        .cloned()
        .collect();
    assert_eq!(moving.len(), 20);
    for k in &moving {
        assert!(delete(sys.http_addr(), k).await, "delete {k}");
        model.insert(k.clone(), None);
    }
    let tombstones = |sys: &TestSystem| {
        let node = sys.nodes[second].node();
        moving
            .iter()
            .filter(|k| {
                node.local_get(k.as_bytes()).unwrap().as_deref() == Some(ravel_admin::TOMBSTONE)
            })
            .count()
    };
    assert_eq!(
        tombstones(&sys),
        20,
        "deletes of moving keys leave tombstones"
    );
    // Let the copy run, and stop the admin just before the sweep.
    sys.admin().holds().arm("mover.before_sweep");
    sys.admin().holds().release("mover.before_copy");
    sys.admin().holds().reached("mover.before_sweep").await;
    sys.stop_admin().await;
    sys.restart_admin().await;
    wait_relocations(&sys, 1).await;
    wait_for(
        Duration::from_secs(30),
        "the tombstones to be swept",
        || {
            let left = tombstones(&sys);
            async move { (left == 0).then_some(()) }
        },
    )
    .await;
    verify(&sys, &model).await;
    sys.shutdown().await;
}

/// Calls the admin made to `cluster`'s leader, whatever their outcome.
async fn calls_to(sys: &TestSystem, cluster: &str) -> f64 {
    let s = parse(&scrape(sys.http_addr(), "/metrics").await.1);
    ["ok", "status", "unavailable"]
        .iter()
        .filter_map(|o| {
            get(
                &s,
                "ravel_admin_cluster_calls_total",
                &[("cluster", cluster), ("outcome", o)],
            )
        })
        .sum()
}

/// While a partition moves, a key the mover has already passed is served
/// by the new owner alone: reading or deleting it costs no call to the old
/// owner. A key it has not passed yet is still read from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_the_mover_passed_are_read_from_the_new_owner_only() {
    let mut sys = TestSystem::start(1, 1).await;
    let source = sys.cluster_ids()[0].clone();
    // Enough keys for the moving half (about half the partitions) to fill
    // more than one of the mover's pages.
    let mut model = preload(&sys, 3 * ravel_admin::RELOCATION_PAGE as usize).await;
    sys.admin().holds().arm("mover.after_page");
    let second = sys.add_node(true).await;
    let dest = sys.nodes[second].cluster_id.clone();
    sys.admin().holds().reached("mover.after_page").await;

    let state = sys.admin().registry().snapshot();
    let rel = state.ring.relocation.clone().expect("a move in progress");
    let owners = HashRing::default().owners(&state.ring.members);
    let moving: Vec<&String> = model
        .keys()
        .filter(|k| owners[ravel_proto::partition_of(k.as_bytes(), 271) as usize] == dest)
        .collect();
    let passed: Vec<String> = moving
        .iter()
        .filter(|k| {
            rel.moved_past(
                &source,
                &dest,
                partition_of(k.as_bytes(), 271),
                k.as_bytes(),
            )
        })
        .take(20)
        .map(|k| k.to_string())
        .collect();
    let ahead: Vec<String> = moving
        .iter()
        .filter(|k| {
            !rel.moved_past(
                &source,
                &dest,
                partition_of(k.as_bytes(), 271),
                k.as_bytes(),
            )
        })
        .take(20)
        .map(|k| k.to_string())
        .collect();
    assert_eq!((passed.len(), ahead.len()), (20, 20), "{rel:?}");

    let read_all = |keys: Vec<String>| {
        let sys = &sys;
        let model = &model;
        async move {
            for k in keys {
                let r = sys.http("POST", "/get", Some(json!({"key": k}))).await;
                assert_eq!(r.status, 200, "get {k}: {:?}", r.body);
                assert_eq!(Some(&r.body["val"]), model[&k].as_ref(), "{k}");
            }
        }
    };
    let (src0, dst0) = (calls_to(&sys, &source).await, calls_to(&sys, &dest).await);
    read_all(passed.clone()).await;
    let (src1, dst1) = (calls_to(&sys, &source).await, calls_to(&sys, &dest).await);
    assert_eq!(src1, src0, "reads of moved keys called the old owner");
    assert!(dst1 - dst0 >= 20.0, "{dst0} -> {dst1}");
    read_all(ahead).await;
    let src2 = calls_to(&sys, &source).await;
    assert!(
        src2 - src1 >= 20.0,
        "keys not moved yet are read from both owners: {src1} -> {src2}"
    );

    // A delete of a moved key is a plain delete on the new owner.
    let k = &passed[0];
    assert!(delete(sys.http_addr(), k).await, "delete {k}");
    model.insert(k.clone(), None);
    assert_eq!(
        calls_to(&sys, &source).await,
        src2,
        "the delete called the old owner"
    );
    assert_eq!(
        sys.nodes[second].node().local_get(k.as_bytes()).unwrap(),
        None
    );

    sys.admin().holds().release("mover.after_page");
    wait_relocations(&sys, 1).await;
    verify(&sys, &model).await;
    sys.shutdown().await;
}
