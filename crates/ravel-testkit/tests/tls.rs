//! TLS and bearer tokens: a system whose admin and nodes all run with
//! `[tls]` and `auth_token_file` works end to end (registration, Raft,
//! joins and the HTTP API all cross mutual TLS), and refuses whoever lacks
//! a certificate of its CA or the token.

use std::time::Duration;

use ravel_proto::admin::ravel_cluster_admin_client::RavelClusterAdminClient;
use ravel_proto::admin::{Cluster, Node as AdminNode};
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_proto::node::Command as PbCommand;
use ravel_runtime::tls::TlsFiles;
use ravel_testkit::certs::{token_file, TestCa};
use ravel_testkit::process::{ravel_cli, run_binary};
use ravel_testkit::{TestSettings, TestSystem};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const TOKEN: &str = "test-token-0123456789abcdef";

/// A system of one cluster of three replicas, TLS and token on, and the
/// files it runs with.
async fn secure_system(dir: &std::path::Path) -> (TestSystem, TlsFiles, TestCa) {
    let ca = TestCa::new(dir, "ravel");
    let files = ca.issue("server", &["127.0.0.1", "localhost"]);
    let settings = TestSettings {
        tls: Some(files.clone()),
        auth_token_file: Some(token_file(dir, "token", TOKEN)),
        ..TestSettings::default()
    };
    (TestSystem::start_with(1, 3, settings).await, files, ca)
}

/// A channel to `addr` over TLS, trusting `ca`, presenting `identity`.
fn tls_channel(addr: &str, ca: &std::path::Path, identity: Option<&TlsFiles>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("read CA")));
    if let Some(f) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(&f.cert).expect("cert"),
            std::fs::read(&f.key).expect("key"),
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

async fn get(channel: Channel, key: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let mut req = tonic::Request::new(PbCommand {
        operation: "get".into(),
        key: key.to_vec(),
        value: vec![],
    });
    req.set_timeout(Duration::from_secs(5));
    Ok(RavelNodeClient::new(channel)
        .run(req)
        .await?
        .into_inner()
        .data)
}

/// Whether a call failed in the transport (the server refused the TLS
/// handshake, or the connection) rather than being answered by the
/// service. Under TLS 1.3 the client learns of the refusal after its side
/// of the handshake: as the server's alert, or as the connection closing,
/// depending on timing.
fn refused_in_handshake(e: &tonic::Status) -> bool {
    matches!(
        e.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
    ) && std::error::Error::source(e).is_some()
}

fn https_client(ca: &std::path::Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).expect("CA")).expect("CA pem");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_serves_https_and_wants_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (sys, files, _ca) = secure_system(dir.path()).await;
    let base = format!("https://{}", sys.http_addr());
    let client = https_client(&files.ca);
    let bearer = format!("Bearer {TOKEN}");

    let put = client
        .put(format!("{base}/v1/kv/greeting"))
        .header("authorization", &bearer)
        .body(r#"{"to":"tls"}"#)
        .send()
        .await
        .expect("put over https");
    assert_eq!(put.status(), 200, "{:?}", put.text().await);
    let got = client
        .get(format!("{base}/v1/kv/greeting"))
        .header("authorization", &bearer)
        .send()
        .await
        .expect("get over https");
    assert_eq!(got.status(), 200);
    let body: serde_json::Value = got.json().await.unwrap();
    assert_eq!(body["val"]["to"], "tls", "{body}");

    // No token, or another one: 401, and nothing written.
    for auth in [None, Some("Bearer test-token-0123456789abcdeX")] {
        let mut req = client
            .put(format!("{base}/v1/kv/greeting"))
            .body(r#""overwritten""#);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let answer = req.send().await.expect("send");
        assert_eq!(answer.status(), 401, "token {auth:?}");
        assert_eq!(answer.headers()["www-authenticate"], "Bearer");
    }
    let got: serde_json::Value = client
        .get(format!("{base}/v1/kv/greeting"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        got["val"]["to"], "tls",
        "an unauthenticated write took effect"
    );

    // Probes and metrics stay open to orchestrators and Prometheus.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let answer = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{path}");
    }
    // Plain HTTP on the HTTPS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/v1/kv/greeting", sys.http_addr()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_refuse_clients_without_a_certificate_of_their_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (sys, files, _ca) = secure_system(dir.path()).await;
    let cluster = sys.cluster_ids()[0].clone();
    let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
    let addr = sys.nodes[leader].addr.clone();

    // With the CA's certificate: served (the key is absent: NOT_FOUND is
    // an answer from the node).
    match get(tls_channel(&addr, &files.ca, Some(&files)), b"k").await {
        Ok(_) => {}
        Err(s) => assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}"),
    }
    // TLS without a client certificate: the handshake is refused (under
    // TLS 1.3 the client learns it from the server's alert, as a transport
    // error of the call).
    let e = get(tls_channel(&addr, &files.ca, None), b"k")
        .await
        .expect_err("served a client without a certificate");
    assert!(refused_in_handshake(&e), "{e:?}");
    // A certificate of another CA: refused too.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = TestCa::new(rogue_dir.path(), "rogue");
    let rogue_files = rogue.issue("intruder", &["127.0.0.1"]);
    let e = get(tls_channel(&addr, &files.ca, Some(&rogue_files)), b"k")
        .await
        .expect_err("served a client whose certificate another CA signed");
    assert!(refused_in_handshake(&e), "{e:?}");
    // Plain TCP: refused.
    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let e = get(plain, b"k").await.expect_err("served plain TCP");
    assert!(refused_in_handshake(&e), "{e:?}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_grpc_wants_the_token_as_well_as_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (sys, files, _ca) = secure_system(dir.path()).await;
    let cluster = sys.cluster_ids()[0].clone();
    let channel = tls_channel(sys.admin_addr(), &files.ca, Some(&files));
    let mut admin = RavelClusterAdminClient::new(channel);

    // A valid certificate but no token: LeaveCluster is refused, and the
    // replica is still registered.
    let victim = sys.nodes[0].id.to_string();
    let e = admin
        .leave_cluster(AdminNode {
            node_id: victim.clone(),
            ..Default::default()
        })
        .await
        .expect_err("LeaveCluster without the token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let registered = sys.admin().registry().snapshot().clusters[&cluster]
        .members
        .contains_key(&victim);
    assert!(registered, "the replica was deregistered without the token");

    // With the token, the same client is served.
    let mut req = tonic::Request::new(Cluster {
        cluster_id: cluster.clone(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let leader = admin
        .get_cluster_leader(req)
        .await
        .expect("served with the token");
    assert!(!leader.into_inner().grpc_address.is_empty());
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_stop_a_node_from_starting_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ravel");
    let good = ca.issue("server", &["127.0.0.1"]);
    let other = ca.issue("other", &["127.0.0.1"]);
    let mut sys = TestSystem::start(1, 1).await;
    // A key that belongs to another certificate.
    sys.settings.tls = Some(TlsFiles {
        key: other.key.clone(),
        ..good
    });
    let mut config = sys.nodes[0].config.clone();
    config.data_dir = dir.path().join("never-created");
    config.listen_addr = "127.0.0.1:0".into();
    config.tls = sys.settings.tls.clone();
    let e = ravel_node::Node::start(config, Default::default())
        .await
        .expect_err("started with a key of another certificate");
    let msg = e.to_string();
    assert!(
        msg.contains("tls") && msg.contains("does not match"),
        "{msg}"
    );
    assert!(
        !dir.path().join("never-created").exists(),
        "opened the data dir first"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_https_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (sys, files, _ca) = secure_system(dir.path()).await;
    let token = dir.path().join("token");
    let cli = |extra: &[&str], with_token: bool| {
        let mut args = vec![
            "--admin".to_string(),
            sys.http_addr().to_string(),
            "--ca".to_string(),
            files.ca.display().to_string(),
        ];
        if with_token {
            args.extend(["--token-file".to_string(), token.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        ravel_cli(args, Duration::from_secs(30))
    };
    let put = cli(&["put", "colour", r#"{"is":"blue"}"#], true).await;
    assert!(put.status.success(), "{put:?}");
    let get = cli(&["get", "colour"], true).await;
    assert!(get.status.success(), "{get:?}");
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        r#"{"is":"blue"}"#
    );
    let status = cli(&["status"], true).await;
    assert!(status.status.success(), "{status:?}");

    // Without the token the admin refuses, and the CLI says why.
    let refused = cli(&["get", "colour"], false).await;
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("bearer token") && err.contains("401"), "{err}");
    // Without the CA, the admin's certificate is not trusted.
    let untrusted = ravel_cli(
        vec![
            "--admin".into(),
            format!("https://{}", sys.http_addr()),
            "get".into(),
            "colour".into(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(!untrusted.status.success(), "{untrusted:?}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_with_unusable_tls_files_exits_2_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("admin.toml");
    std::fs::write(
        &config,
        format!(
            "http_addr = \"127.0.0.1:0\"\ngrpc_addr = \"127.0.0.1:0\"\ndata_dir = \"{0}/admin\"\n\n[tls]\ncert = \"{0}/absent.pem\"\nkey = \"{0}/absent-key.pem\"\nca = \"{0}/ca.pem\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = run_binary(
        "ravel-test-admin",
        vec!["--config".into(), config.display().to_string()],
        Duration::from_secs(30),
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tls") && err.contains("absent.pem"), "{err}");
}
