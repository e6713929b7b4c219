//! The admin's HTTP API: JSON types round-trip (also across restarts), and
//! errors come back with precise status codes.

use std::time::Duration;

use ravel_testkit::TestSystem;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_values_round_trip_and_errors_are_precise() {
    let mut sys = TestSystem::start(2, 1).await;
    let values = [
        json!("a string"),
        json!(42),
        json!(-3.5),
        json!(true),
        json!(null),
        json!({"nested": {"list": [1, "two", false]}}),
        json!([1, 2, 3]),
    ];
    for (i, v) in values.iter().enumerate() {
        let key = format!("compat-{i}");
        let r = sys
            .http("POST", "/put", Some(json!({"key": key, "val": v})))
            .await;
        assert_eq!(
            (r.status, r.body.clone()),
            (200, json!({"msg": "ok"})),
            "{v}"
        );
        let r = sys.http("POST", "/get", Some(json!({"key": key}))).await;
        assert_eq!(
            (r.status, r.body.clone()),
            (200, json!({"key": key, "val": v}))
        );
        let path = format!("/v1/kv/clean-{i}");
        assert_eq!(sys.http("PUT", &path, Some(v.clone())).await.status, 200);
        let r = sys.http("GET", &path, None).await;
        assert_eq!(r.body["val"], *v);
    }
    // Existing clients send "value" instead of "val".
    let r = sys
        .http(
            "POST",
            "/put",
            Some(json!({"key": "alias", "value": {"x": 1}})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        sys.http("POST", "/get", Some(json!({"key": "alias"})))
            .await
            .body["val"],
        json!({"x": 1})
    );

    // Types survive an admin restart and a node restart.
    sys.stop_admin().await;
    sys.restart_admin().await;
    for i in 0..sys.nodes.len() {
        sys.crash(i).await;
        sys.restart(i).await;
    }
    for (i, v) in values.iter().enumerate() {
        let r = sys
            .http("POST", "/get", Some(json!({"key": format!("compat-{i}")})))
            .await;
        assert_eq!((r.status, &r.body["val"]), (200, v), "after restarts");
    }

    // Delete, then 404.
    assert_eq!(
        sys.http("POST", "/delete", Some(json!({"key": "alias"})))
            .await
            .status,
        200
    );
    let r = sys
        .http("POST", "/get", Some(json!({"key": "alias"})))
        .await;
    assert_eq!(r.status, 404);
    assert!(r.body["error"].as_str().unwrap().contains("not found"));
    assert_eq!(
        sys.http("GET", "/v1/kv/never-written", None).await.status,
        404
    );
    assert_eq!(sys.http("DELETE", "/v1/kv/clean-0", None).await.status, 200);
    assert_eq!(sys.http("GET", "/v1/kv/clean-0", None).await.status, 404);

    // 400: bad JSON, missing or wrong key, missing value.
    for body in [
        &b"{not json"[..],
        b"[1,2]",
        b"{\"val\": 1}",
        b"{\"key\": 7, \"val\": 1}",
        b"{\"key\": \"\", \"val\": 1}",
        b"{\"key\": \"k\"}",
    ] {
        let r = ravel_testkit::http::request(
            sys.http_addr(),
            "POST",
            "/put",
            Some(body),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        assert!(r.body["error"].is_string());
    }
    let r = ravel_testkit::http::request(
        sys.http_addr(),
        "PUT",
        "/v1/kv/x",
        Some(b"{oops"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);

    // 413: value or key over the limit.
    let big = "v".repeat(1 << 20);
    let r = sys
        .http("POST", "/put", Some(json!({"key": "big", "val": big})))
        .await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    let r = sys
        .http(
            "POST",
            "/put",
            Some(json!({"key": "k".repeat(5000), "val": 1})),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(
        sys.http("POST", "/get", Some(json!({"key": "big"})))
            .await
            .status,
        404,
        "an oversized value was stored"
    );

    // Health and readiness.
    assert_eq!(sys.http("GET", "/healthz", None).await.status, 200);
    let r = sys.http("GET", "/readyz", None).await;
    assert_eq!((r.status, r.body["clusters"].as_u64()), (200, Some(2)));

    // /v1/cluster describes the system.
    let r = sys.http("GET", "/v1/cluster", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["partitions"], 271);
    assert_eq!(r.body["clusters"].as_array().unwrap().len(), 2);
    let owned: u64 = r.body["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["partitions"].as_u64().unwrap())
        .sum();
    assert_eq!(owned, 271);

    // 503: the only replica of the key's cluster is down.
    let key = (0..)
        .map(|i| format!("probe-{i}"))
        .find(|k| {
            let p = ravel_proto::partition_of(k.as_bytes(), 271);
            let owners = ravel_admin::ring::HashRing::default()
                .owners(&sys.admin().registry().snapshot().ring.members);
            owners[p as usize] == sys.nodes[0].cluster_id
        })
        .unwrap();
    sys.crash(0).await;
    let r = sys
        .http("POST", "/put", Some(json!({"key": key, "val": 1})))
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cluster_is_503() {
    let sys = TestSystem::start(0, 0).await;
    let r = sys
        .http("POST", "/put", Some(json!({"key": "k", "val": 1})))
        .await;
    assert_eq!(r.status, 503);
    assert!(r.body["error"].as_str().unwrap().contains("no cluster"));
    sys.shutdown().await;
}
