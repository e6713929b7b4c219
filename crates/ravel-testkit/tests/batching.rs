//! The write batcher: concurrent writes share Raft entries, and every caller
//! still gets its own result.

use std::time::Duration;

use ravel_testkit::TestSystem;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_with_their_own_results() {
    let sys = TestSystem::start(1, 3).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let before = sys.nodes[leader]
        .node()
        .raft()
        .metrics()
        .borrow()
        .last_log_index
        .unwrap_or(0);

    const N: usize = 300;
    // One HTTP/2 connection, many concurrent calls on it.
    let client = sys.client(leader).await;
    let mut tasks = Vec::new();
    for k in 0..N {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.run(ravel_proto::node::Command {
                operation: "set".into(),
                key: format!("c{k}").into_bytes(),
                value: format!("{k}").into_bytes(),
            })
            .await
            .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("concurrent write");
    }
    let after = sys.nodes[leader]
        .node()
        .raft()
        .metrics()
        .borrow()
        .last_log_index
        .unwrap_or(0);
    let entries = after - before;
    println!("batching: {N} concurrent writes took {entries} log entries");
    assert!(
        entries < N as u64,
        "no batching: {entries} entries for {N} writes"
    );
    for k in (0..N).step_by(17) {
        let r = sys
            .run(leader, "get", format!("c{k}").as_bytes(), b"")
            .await
            .unwrap();
        assert_eq!(r.get_ref().data, format!("{k}").into_bytes());
    }

    // Racing getAndDelete on one key: exactly one caller gets the value,
    // even when they share an entry.
    sys.run(leader, "set", b"prize", b"gold").await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.run(ravel_proto::node::Command {
                operation: "getAndDelete".into(),
                key: b"prize".to_vec(),
                value: Vec::new(),
            })
            .await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.get_ref().data, b"gold");
                winners += 1;
            }
            Err(s) => assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}"),
        }
    }
    assert_eq!(winners, 1);
    sys.shutdown().await;
}
