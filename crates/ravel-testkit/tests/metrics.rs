//! Metrics: nodes serve Prometheus text on their `metrics_addr` (with
//! `/healthz` and `/readyz`), the admin on its HTTP port; a scrape of each
//! parses and shows the work just done.

use std::collections::BTreeSet;
use std::time::Duration;

use ravel_testkit::prom::{get, parse, scrape};
use ravel_testkit::{wait_for, TestSystem};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_admin_serve_metrics_that_parse() {
    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    for k in 0..20 {
        let r = sys
            .http(
                "POST",
                "/put",
                Some(json!({"key": format!("k{k}"), "val": k})),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    for k in 0..5 {
        let r = sys.http("GET", &format!("/v1/kv/k{k}"), None).await;
        assert_eq!(r.status, 200);
    }
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    // An unknown operation is counted as `other`, not as a new series.
    let _ = sys.run(leader, "bogus", b"k0", b"").await;

    let addr = sys.nodes[leader]
        .node()
        .metrics_addr()
        .expect("metrics on")
        .to_string();
    let (status, text) = scrape(&addr, "/metrics").await;
    assert_eq!(status, 200);
    let s = parse(&text);
    assert!(get(&s, "ravel_raft_term", &[]).unwrap() >= 1.0, "{text}");
    assert_eq!(
        get(&s, "ravel_raft_state", &[("state", "leader")]),
        Some(1.0)
    );
    assert!(get(&s, "ravel_raft_applied_index", &[]).unwrap() >= 20.0);
    assert!(
        get(
            &s,
            "ravel_run_requests_total",
            &[("op", "set"), ("code", "Ok")]
        )
        .unwrap()
            >= 20.0,
        "{text}"
    );
    assert!(
        get(
            &s,
            "ravel_run_requests_total",
            &[("op", "get"), ("code", "Ok")]
        )
        .unwrap()
            >= 5.0
    );
    assert_eq!(
        get(
            &s,
            "ravel_run_requests_total",
            &[("op", "other"), ("code", "InvalidArgument")]
        ),
        Some(1.0)
    );
    assert!(get(&s, "ravel_run_duration_seconds_count", &[("op", "set")]).unwrap() >= 20.0);
    assert!(get(&s, "ravel_proposal_commands_count", &[]).unwrap() >= 1.0);
    // Every write was appended and synced: 20 sets need at least one.
    let appends = get(&s, "ravel_log_append_duration_seconds_count", &[]).unwrap();
    assert!(appends >= 1.0, "{appends} synced appends");
    assert!(get(&s, "ravel_log_append_duration_seconds_sum", &[]).unwrap() > 0.0);
    assert!(
        get(
            &s,
            "ravel_proposal_duration_seconds_bucket",
            &[("le", "+Inf")]
        )
        .unwrap()
            >= 1.0
    );
    // RocksDB's own account: the writes sit in memtables; every column
    // family reports its L0 files; the stall time and the jobs are there.
    assert!(
        get(&s, "ravel_rocksdb_memtable_bytes", &[]).unwrap() > 0.0,
        "{text}"
    );
    for cf in ["raft_log", "raft_meta", "kv", "sm_meta"] {
        assert!(
            get(&s, "ravel_rocksdb_l0_files", &[("cf", cf)]).is_some(),
            "{cf}: {text}"
        );
    }
    assert!(get(&s, "ravel_rocksdb_write_stall_seconds_total", &[]).is_some());
    assert!(get(&s, "ravel_rocksdb_running_jobs", &[("kind", "flush")]).is_some());
    assert!(get(&s, "ravel_raft_quorum_contact_lost_total", &[]).is_some());
    let lags = s
        .keys()
        .filter(|(n, _)| n == "ravel_raft_follower_lag_entries")
        .count();
    assert_eq!(lags, 2, "one lag per follower: {text}");
    assert!(get(&s, "ravel_raft_leader_changes_total", &[]).unwrap() >= 1.0);
    let (status, body) = scrape(&addr, "/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready: leader"));
    assert_eq!(scrape(&addr, "/healthz").await.0, 200);

    let follower = sys.other_member(&cluster, leader);
    let faddr = sys.nodes[follower]
        .node()
        .metrics_addr()
        .unwrap()
        .to_string();
    let f = parse(&scrape(&faddr, "/metrics").await.1);
    assert_eq!(
        get(&f, "ravel_raft_state", &[("state", "follower")]),
        Some(1.0)
    );
    let (status, body) = scrape(&faddr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready: leader is "), "{body}");

    let (status, text) = scrape(sys.http_addr(), "/metrics").await;
    assert_eq!(status, 200);
    let a = parse(&text);
    assert!(
        get(
            &a,
            "ravel_admin_http_requests_total",
            &[("route", "/put"), ("status", "200")]
        )
        .unwrap()
            >= 20.0,
        "{text}"
    );
    assert_eq!(
        get(
            &a,
            "ravel_admin_http_requests_total",
            &[("route", "/v1/kv/{key}"), ("status", "200")]
        ),
        Some(5.0)
    );
    assert!(
        get(
            &a,
            "ravel_admin_http_duration_seconds_count",
            &[("route", "/put")]
        )
        .unwrap()
            >= 20.0
    );
    assert!(
        get(
            &a,
            "ravel_admin_cluster_calls_total",
            &[("cluster", &cluster), ("outcome", "ok")]
        )
        .unwrap()
            >= 25.0
    );
    assert_eq!(get(&a, "ravel_admin_ring_clusters", &[]), Some(1.0));
    assert_eq!(
        get(&a, "ravel_admin_relocation_in_progress", &[]),
        Some(0.0)
    );
    sys.shutdown().await;
}

/// The standard gRPC health service answers on nodes and the admin:
/// SERVING for a replica of a serving cluster and for the admin; unknown
/// services are NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    sys.leader(&cluster, Duration::from_secs(10)).await;
    let check = |addr: String, service: &'static str| async move {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
    };
    for n in &sys.nodes {
        // A follower learns the leader with the first heartbeat.
        ravel_testkit::wait_for(Duration::from_secs(10), "SERVING", || {
            let addr = n.addr.clone();
            async move {
                let r = check(addr, "RavelClusterPB.RavelNode").await.ok()?;
                (r.into_inner().status == ServingStatus::Serving as i32).then_some(())
            }
        })
        .await;
        let all = check(n.addr.clone(), "").await.unwrap().into_inner();
        assert_eq!(all.status, ServingStatus::Serving as i32);
    }
    let unknown = check(sys.nodes[0].addr.clone(), "no.such.Service").await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    let admin = check(
        sys.admin_addr().to_string(),
        "RavelClusterAdminPB.RavelClusterAdmin",
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(admin.status, ServingStatus::Serving as i32);
    sys.shutdown().await;
}

/// A replica whose Raft has stopped must not look healthy: the gRPC health
/// service turns NOT_SERVING and `/readyz` 503, so an orchestrator replaces
/// it, while the others keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_raft_stopped_reports_not_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let follower = sys.other_member(&cluster, leader);
    let node = sys.nodes[follower].node();
    let maddr = node.metrics_addr().unwrap().to_string();
    let status = |addr: String| async move {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .ok()?;
        let r = HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: "RavelClusterPB.RavelNode".into(),
            })
            .await
            .ok()?;
        Some(r.into_inner().status)
    };
    ravel_testkit::wait_for(Duration::from_secs(10), "the follower SERVING", || {
        let addr = sys.nodes[follower].addr.clone();
        async move { (status(addr).await? == ServingStatus::Serving as i32).then_some(()) }
    })
    .await;

    node.raft().shutdown().await.expect("Raft shuts down");
    ravel_testkit::wait_for(Duration::from_secs(10), "NOT_SERVING", || {
        let addr = sys.nodes[follower].addr.clone();
        async move { (status(addr).await? == ServingStatus::NotServing as i32).then_some(()) }
    })
    .await;
    let (code, body) = scrape(&maddr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("Raft stopped"), "{body}");
    assert_eq!(
        status(sys.nodes[leader].addr.clone()).await,
        Some(ServingStatus::Serving as i32),
        "the leader still serves"
    );
    sys.shutdown().await;
}

/// gRPC reflection lists every service on a node and on the admin, so
/// `grpcurl` works without the .proto files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_reflection_lists_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let sys = TestSystem::start(1, 1).await;
    let list = |addr: String| async move {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .expect("reflection answers")
            .into_inner();
        let answer = answers.message().await.unwrap().expect("one answer");
        match answer.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => l
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<BTreeSet<_>>(),
            other => panic!("unexpected reflection answer {other:?}"),
        }
    };
    let node = list(sys.nodes[0].addr.clone()).await;
    for s in [
        "RavelClusterPB.RavelNode",
        "ravel.node.v1.RavelNodeExt",
        "ravel.raft.v1.Raft",
    ] {
        assert!(node.contains(s), "{s} missing from {node:?}");
    }
    let admin = list(sys.admin_addr().to_string()).await;
    assert!(
        admin.contains("RavelClusterAdminPB.RavelClusterAdmin"),
        "{admin:?}"
    );
    sys.shutdown().await;
}

/// A leader cut off from both followers keeps believing it leads (openraft
/// has no check-quorum) but refuses writes once no majority acknowledged it
/// within an election timeout; its metrics count that loss of contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_counts_its_lost_contact_with_the_majority() {
    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    sys.run(leader, "set", b"k", b"v").await.expect("a write");
    let addr = sys.nodes[leader]
        .node()
        .metrics_addr()
        .expect("metrics on")
        .to_string();
    let lost = || async {
        let s = parse(&scrape(&addr, "/metrics").await.1);
        get(&s, "ravel_raft_quorum_contact_lost_total", &[]).expect("the counter is served")
    };
    let before = lost().await;

    sys.partition(&[leader]);
    let err = sys
        .run(leader, "set", b"k", b"cut off")
        .await
        .expect_err("a leader cut off from its majority committed a write");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    wait_for(
        Duration::from_secs(10),
        "the lost contact counted",
        || async { (lost().await > before).then_some(()) },
    )
    .await;
    sys.heal();
    sys.shutdown().await;
}

/// Reads on a leader holding a read lease skip the quorum round; with
/// `lease_reads = false` every read waits for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_under_the_leaders_lease_skip_the_quorum_round() {
    for lease_reads in [true, false] {
        let mut settings = ravel_testkit::TestSettings::default();
        settings.raft.lease_reads = lease_reads;
        let sys = TestSystem::start_with(1, 3, settings).await;
        let cluster = sys.cluster_ids()[0].clone();
        let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
        sys.run(leader, "set", b"k", b"v").await.unwrap();
        let reads = 200;
        for _ in 0..reads {
            let r = sys.run(leader, "get", b"k", b"").await.expect("read");
            assert_eq!(r.get_ref().data, b"v");
        }
        let addr = sys.nodes[leader]
            .node()
            .metrics_addr()
            .expect("metrics on")
            .to_string();
        let (_, text) = scrape(&addr, "/metrics").await;
        let s = parse(&text);
        let by_lease = get(&s, "ravel_read_lease_reads_total", &[]).unwrap();
        let by_round = get(&s, "ravel_read_index_round_reads_sum", &[]).unwrap();
        // Every read is counted once (the admin's IsLeader calls, if any,
        // are confirmed the same way).
        assert!(by_lease + by_round >= f64::from(reads), "{text}");
        if lease_reads {
            // The first read waits for a round; renewals run beside reads.
            assert!(
                by_lease >= f64::from(reads) * 0.9,
                "lease reads: {by_lease}"
            );
        } else {
            assert_eq!(by_lease, 0.0);
        }
        sys.shutdown().await;
    }
}
