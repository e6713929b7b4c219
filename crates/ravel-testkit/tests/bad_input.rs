//! Bad requests get INVALID_ARGUMENT (or the documented status) with the
//! reason, and write nothing.

use std::time::Duration;

use ravel_proto::node::Node;
use ravel_testkit::TestSystem;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_write_nothing() {
    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let follower = sys.other_member(&cluster, leader);
    let limits = sys.settings.limits.clone();

    let big_key = vec![b'k'; limits.max_key_bytes + 1];
    let big_value = vec![b'v'; limits.max_value_bytes + 1];
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "frobnicate",
            b"k1".to_vec(),
            b"v".to_vec(),
            "unknown operation",
        ),
        ("", b"k1".to_vec(), b"v".to_vec(), "unknown operation"),
        ("SET", b"k1".to_vec(), b"v".to_vec(), "unknown operation"),
        ("set", Vec::new(), b"v".to_vec(), "key must not be empty"),
        ("get", Vec::new(), Vec::new(), "key must not be empty"),
        ("set", big_key.clone(), b"v".to_vec(), "key is"),
        ("delete", big_key.clone(), Vec::new(), "key is"),
        ("set", b"k1".to_vec(), big_value, "value is"),
    ];
    for via in [leader, follower] {
        for (op, key, value, reason) in &cases {
            let err = sys.run(via, op, key, value).await.expect_err(op);
            assert_eq!(err.code(), Code::InvalidArgument, "{op}: {err:?}");
            assert!(
                err.message().contains(reason),
                "{op}: {:?} lacks {reason:?}",
                err.message()
            );
        }
    }
    // Nothing was written.
    let err = sys
        .run(leader, "get", b"k1", b"")
        .await
        .expect_err("k1 must not exist");
    assert_eq!(err.code(), Code::NotFound);
    let applied_before = sys.nodes[leader]
        .node()
        .raft()
        .metrics()
        .borrow()
        .last_applied;
    let err = sys
        .run(leader, "set", b"k1", &vec![0; limits.max_value_bytes + 1])
        .await
        .expect_err("oversized");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        sys.nodes[leader]
            .node()
            .raft()
            .metrics()
            .borrow()
            .last_applied,
        applied_before
    );

    // Edge values that are fine: a key at the limit, an empty value.
    let key = vec![b'x'; limits.max_key_bytes];
    sys.run(follower, "set", &key, b"")
        .await
        .expect("key at the limit");
    assert_eq!(
        sys.run(leader, "get", &key, b"")
            .await
            .unwrap()
            .get_ref()
            .data,
        b""
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_operations_semantics() {
    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    assert_eq!(
        sys.run(leader, "get", b"a", b"").await.unwrap_err().code(),
        Code::NotFound
    );
    sys.run(leader, "set", b"a", b"1").await.unwrap();
    let r = sys.run(leader, "getAndDelete", b"a", b"").await.unwrap();
    assert_eq!(r.get_ref().data, b"1");
    assert_eq!(
        sys.run(leader, "get", b"a", b"").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        sys.run(leader, "getAndDelete", b"a", b"")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    sys.run(leader, "set", b"b", b"2").await.unwrap();
    sys.run(leader, "delete", b"b", b"").await.unwrap();
    sys.run(leader, "delete", b"b", b"")
        .await
        .expect("deleting a missing key is fine");
    assert_eq!(
        sys.run(leader, "get", b"b", b"").await.unwrap_err().code(),
        Code::NotFound
    );

    // IsLeader: exactly one replica says yes.
    let mut yes = Vec::new();
    for i in sys.members(&cluster) {
        let r = sys
            .client(i)
            .await
            .is_leader(ravel_proto::node::Void {})
            .await
            .unwrap();
        if r.get_ref().leader {
            yes.push(i);
        }
    }
    assert_eq!(yes, vec![leader]);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_validate_and_are_idempotent() {
    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let mut c = sys.client(leader).await;
    for bad in ["", "abc", "0", "-1"] {
        let err = c
            .join(Node {
                node_id: bad.into(),
                grpc_address: "127.0.0.1:1".into(),
                ..Default::default()
            })
            .await
            .expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
    }
    // A member joining again: existing nodes expect exactly this answer.
    let member = &sys.nodes[sys.other_member(&cluster, leader)];
    let err = c
        .join(Node {
            node_id: member.id.to_string(),
            grpc_address: member.addr.clone(),
            ..Default::default()
        })
        .await
        .expect_err("duplicate join");
    assert_eq!(err.code(), Code::Unknown);
    assert_eq!(err.message(), ravel_proto::NODE_ALREADY_EXISTS);
    // Leaving when not a member is a no-op.
    c.leave(Node {
        node_id: "12345".into(),
        ..Default::default()
    })
    .await
    .expect("leave of a non-member");
    sys.shutdown().await;
}
