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

/// Values above tonic's default 4 MiB message limit but within the
/// configured limit travel everywhere (to the leader, forwarded by a
/// follower, through the admin's HTTP API); larger ones are refused as too
/// large (INVALID_ARGUMENT, or OUT_OF_RANGE from the decoder; HTTP 413), never as an
/// internal error. Before the node's limits came from its configuration, a
/// 6 MiB value was refused by the server's 4 MiB decoder and the admin
/// answered 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_within_the_configured_limit_work_everywhere() {
    let mut settings = ravel_testkit::TestSettings::default();
    settings.limits.max_value_bytes = 8 << 20;
    let sys = TestSystem::start_with(1, 3, settings).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let follower = sys.other_member(&cluster, leader);

    let big = vec![b'v'; 6 << 20];
    sys.run(leader, "set", b"big1", &big)
        .await
        .expect("6 MiB set");
    let got = sys
        .run(follower, "get", b"big1", b"")
        .await
        .expect("forwarded get");
    assert_eq!(got.get_ref().data.len(), big.len());
    sys.run(follower, "set", b"big2", &big)
        .await
        .expect("6 MiB set forwarded by a follower");

    // Through the admin: a JSON string of ~6 MiB.
    let text = "x".repeat(6 << 20);
    let r = sys
        .http(
            "POST",
            "/put",
            Some(serde_json::json!({"key": "big3", "value": text})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = sys
        .http("POST", "/get", Some(serde_json::json!({"key": "big3"})))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["val"].as_str().map(str::len), Some(text.len()));

    // Over the limit: refused as too large, with the reason.
    let over = vec![b'v'; (8 << 20) + 1];
    for via in [leader, follower] {
        let err = sys.run(via, "set", b"big4", &over).await.expect_err("over");
        assert!(
            matches!(err.code(), Code::InvalidArgument | Code::OutOfRange),
            "{err:?}"
        );
    }
    let way_over = vec![b'v'; 12 << 20];
    let err = sys
        .run(leader, "set", b"big4", &way_over)
        .await
        .expect_err("way over");
    // Refused by the node's decoder (tonic says OUT_OF_RANGE), not internal.
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");
    let r = sys
        .http(
            "POST",
            "/put",
            Some(serde_json::json!({"key": "big4", "value": "y".repeat((8 << 20) + 10)})),
        )
        .await;
    assert_eq!(r.status, 413, "{:?}", r.body);

    // A listing page is bounded by bytes, whatever `limit` asks for: with
    // three 6 MiB values it holds one or two entries, and paging on from
    // its last key reaches all three.
    use ravel_proto::ext::ravel_node_ext_client::RavelNodeExtClient;
    use ravel_proto::ext::ListPartitionsRequest;
    let mut ext = RavelNodeExtClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", sys.nodes[leader].addr))
            .unwrap()
            .connect_lazy(),
    )
    .max_decoding_message_size(ravel_proto::limits::MAX_MESSAGE_BYTES);
    let (mut after, mut has_after, mut seen, mut pages) = (Vec::new(), false, 0, 0);
    loop {
        let page = ext
            .list_partitions(ListPartitionsRequest {
                partition_count: 1,
                partitions: vec![0],
                after_key: after.clone(),
                has_after,
                limit: 10_000,
            })
            .await
            .expect("list")
            .into_inner();
        let bytes: usize = page
            .entries
            .iter()
            .map(|e| e.key.len() + e.value.len())
            .sum();
        assert!(
            bytes <= ravel_proto::limits::LIST_PAGE_BYTES + (8 << 20),
            "a page of {bytes} bytes"
        );
        seen += page.entries.len();
        pages += 1;
        if page.done {
            break;
        }
        after = page.last_key;
        has_after = true;
    }
    assert_eq!(seen, 3);
    assert!(pages >= 2, "{pages} pages");
    sys.shutdown().await;
}

/// The mover's batch calls: one result per entry, each entry seeing the
/// ones before it; one request id, so a retried batch takes effect once;
/// a fenced batch applies nothing; bad batches are refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_batches_apply_once_in_order_and_refuse_bad_batches() {
    use ravel_proto::ext::ravel_node_ext_client::RavelNodeExtClient;
    use ravel_proto::ext::{FenceRequest, KeyValue, KeyValueBatch};
    use ravel_proto::limits::{MOVE_BATCH_BYTES, MOVE_BATCH_ENTRIES};
    use ravel_transport::session::ClientSession;

    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let mut ext = RavelNodeExtClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", sys.nodes[leader].addr))
            .unwrap()
            .connect_lazy(),
    );
    let kv = |k: &str, v: &[u8]| KeyValue {
        key: k.as_bytes().to_vec(),
        value: v.to_vec(),
    };
    let batch = |entries: Vec<KeyValue>| KeyValueBatch { entries };
    let session = ClientSession::new();

    // In order, each entry seeing the ones before it.
    let ticket = session.begin();
    let mut req = tonic::Request::new(batch(vec![kv("a", b"1"), kv("b", b"2"), kv("a", b"3")]));
    ticket.id().insert(req.metadata_mut());
    let r = ext.set_if_absent_batch(req).await.unwrap().into_inner();
    assert_eq!(r.applied, vec![true, true, false]);
    assert_eq!(
        sys.run(leader, "get", b"a", b"")
            .await
            .unwrap()
            .get_ref()
            .data,
        b"1"
    );

    // The same request again (a retry whose first answer was lost) returns
    // the recorded results and changes nothing, even after "a" was removed.
    sys.run(leader, "delete", b"a", b"").await.unwrap();
    let mut again = tonic::Request::new(batch(vec![kv("a", b"1"), kv("b", b"2"), kv("a", b"3")]));
    ticket.id().insert(again.metadata_mut());
    let r = ext.set_if_absent_batch(again).await.unwrap().into_inner();
    assert_eq!(r.applied, vec![true, true, false]);
    assert_eq!(
        sys.run(leader, "get", b"a", b"").await.unwrap_err().code(),
        Code::NotFound,
        "a retried batch applied twice"
    );
    drop(ticket);

    let r = ext
        .delete_if_equal_batch(batch(vec![kv("b", b"9"), kv("b", b"2"), kv("c", b"")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.applied, vec![false, true, false]);
    assert_eq!(
        sys.run(leader, "get", b"b", b"").await.unwrap_err().code(),
        Code::NotFound
    );

    // Fenced: a batch routed by an older ring applies none of its entries.
    ext.fence(FenceRequest { epoch: 7 }).await.unwrap();
    let mut late = tonic::Request::new(batch(vec![kv("d", b"1"), kv("e", b"1")]));
    ravel_proto::metadata::insert_ring_epoch(late.metadata_mut(), 6);
    let err = ext.set_if_absent_batch(late).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    for k in [b"d", b"e"] {
        assert_eq!(
            sys.run(leader, "get", k, b"").await.unwrap_err().code(),
            Code::NotFound
        );
    }

    // Refused whole, with the reason: empty, too many entries, too many
    // bytes, one bad entry. Nothing of them is written.
    let limits = sys.settings.limits.clone();
    let many = (0..=MOVE_BATCH_ENTRIES)
        .map(|i| kv(&format!("m{i}"), b"v"))
        .collect();
    let half = vec![b'v'; MOVE_BATCH_BYTES / 2 + 1];
    let cases: Vec<(Vec<KeyValue>, &str)> = vec![
        (Vec::new(), "at least one entry"),
        (many, "entries; the limit is"),
        (
            vec![kv("f", &half), kv("g", &half)],
            "bytes of keys and values",
        ),
        (vec![kv("h", b"1"), kv("", b"1")], "key must not be empty"),
        (
            vec![kv("i", &vec![0; limits.max_value_bytes + 1])],
            "value is",
        ),
    ];
    for (entries, reason) in cases {
        let err = ext.set_if_absent_batch(batch(entries)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(reason),
            "{:?} lacks {reason:?}",
            err.message()
        );
    }
    for k in [&b"f"[..], b"g", b"h", b"i", b"m0"] {
        assert_eq!(
            sys.run(leader, "get", k, b"").await.unwrap_err().code(),
            Code::NotFound
        );
    }
    // A single entry may exceed the batch's byte bound (up to the value
    // limit).
    let big = vec![b'v'; limits.max_value_bytes];
    assert!(
        big.len() + 3 > MOVE_BATCH_BYTES,
        "the default limits changed"
    );
    let r = ext
        .set_if_absent_batch(batch(vec![kv("big", &big)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.applied, vec![true]);
    assert_eq!(
        sys.run(leader, "get", b"big", b"")
            .await
            .unwrap()
            .get_ref()
            .data,
        big
    );
    sys.shutdown().await;
}
