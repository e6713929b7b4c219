//! A write whose outcome the caller did not learn is retried (by the admin's
//! router, or by a node forwarding to a new leader); the retry must not
//! take effect a second time. Each history is checked for linearizability.

use std::sync::Arc;
use std::time::Duration;

use ravel_testkit::history::{History, Op, Outcome, Output};
use ravel_testkit::linearizability::{check, KeyVerdict};
use ravel_testkit::TestSystem;
use serde_json::json;

/// A PUT through the admin, recorded.
async fn put(sys: &TestSystem, h: &History, client: usize, key: &str, v: &str) {
    let value = serde_json::to_vec(&json!(v)).unwrap();
    let p = h.invoke(client, key, Op::Set(value));
    let r = sys
        .http("POST", "/put", Some(json!({"key": key, "val": v})))
        .await;
    h.complete(
        p,
        match r.status {
            200 => Outcome::Ok(Output::Done),
            400 | 413 => Outcome::Fail,
            _ => Outcome::Unknown,
        },
    );
}

/// A GET through the admin, recorded; returns the value read.
async fn get(sys: &TestSystem, h: &History, client: usize, key: &str) -> Option<String> {
    let p = h.invoke(client, key, Op::Get);
    let r = sys.http("POST", "/get", Some(json!({"key": key}))).await;
    let (outcome, seen) = match r.status {
        200 => (
            Outcome::Ok(Output::Value(Some(
                serde_json::to_vec(&r.body["val"]).unwrap(),
            ))),
            r.body["val"].as_str().map(str::to_string),
        ),
        404 => (Outcome::Ok(Output::Value(None)), None),
        _ => (Outcome::Unknown, None),
    };
    h.complete(p, outcome);
    seen
}

fn assert_linearizable(h: &History) {
    if let Some((key, verdict)) = check(&h.operations()).into_iter().next() {
        match verdict {
            KeyVerdict::Violation(v) => panic!("key {key}:\n{}", v.timeline()),
            other => panic!("key {key}: {other:?}"),
        }
    }
}

/// The admin's router retries a `set` whose answer was lost (the node
/// applied it, then the connection broke). Meanwhile another client
/// overwrote the key and a reader saw both values. The retry must not
/// apply the first value again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_retry_of_a_write_whose_answer_was_lost_applies_once() {
    let sys = Arc::new(TestSystem::start(1, 1).await);
    let h = Arc::new(History::new());
    let key = "contended";
    let leader = sys
        .leader(&sys.cluster_ids()[0], Duration::from_secs(10))
        .await;
    put(&sys, &h, 9, key, "initial").await;
    sys.faults.lose_answer(
        sys.nodes[leader].id,
        key.as_bytes(),
        Duration::from_millis(600),
    );
    let a = {
        let (sys, h) = (sys.clone(), h.clone());
        tokio::spawn(async move { put(&sys, &h, 0, key, "a").await })
    };
    // A's write has taken effect (its answer is being held back).
    ravel_testkit::wait_for(Duration::from_secs(5), "A's write to apply", || {
        let sys = sys.clone();
        async move {
            sys.nodes[leader]
                .node()
                .local_get(key.as_bytes())
                .ok()
                .flatten()
                .filter(|v| v.as_slice() == br#""a""#)
        }
    })
    .await;
    assert_eq!(get(&sys, &h, 1, key).await.as_deref(), Some("a"));
    put(&sys, &h, 2, key, "b").await;
    assert_eq!(get(&sys, &h, 1, key).await.as_deref(), Some("b"));
    a.await.unwrap();
    let last = get(&sys, &h, 1, key).await;
    println!("after A's retried write: {last:?}");
    assert_linearizable(&h);
    Arc::try_unwrap(sys).ok().unwrap().shutdown().await;
}
