//! # ravel-testkit
//!
//! Whole Ravel systems inside one test process: an admin plus clusters of
//! replicas on 127.0.0.1 ephemeral ports with temporary data directories,
//! started through the same code paths as the binaries
//! ([`ravel_node::Node::start`], [`ravel_admin::Admin::start`]). Nodes can be
//! crashed (stopped without leaving), restarted on their data, partitioned
//! and healed. Every wait has a timeout.
//!
//! (Over 400 lines: `TestSystem` is one type whose operations tests call;
//! splitting it would scatter one API over files.)

pub mod certs;
pub mod history;
pub mod http;
pub mod linearizability;
pub mod nemesis;
pub mod netfault;
pub mod process;
pub mod prom;
pub mod workload;

use std::future::Future;
use std::time::Duration;

use openraft::ServerState;
use ravel_admin::{Admin, AdminConfig};
use ravel_node::config::{Limits, RaftSettings, SnapshotSettings};
use ravel_node::{Node, NodeConfig, StartOptions};
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_proto::node::Command as PbCommand;
use ravel_runtime::tls::TlsFiles;
pub use ravel_transport::Faults;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Installs a test log subscriber once (`RAVEL_TEST_LOG=debug` to see more).
/// Rewrites the JSON file at `path` (an identity, the admin's registry)
/// with `edit`, as a crash or an older version would have left it.
pub fn edit_json(path: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut v: serde_json::Value =
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec(&v).expect("json")).expect("write json");
}

pub fn init_logging() {
    let filter = std::env::var("RAVEL_TEST_LOG").unwrap_or_else(|_| "warn,openraft=off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming
/// `what`. The synchronisation primitive of every test: wait on conditions,
/// never on fixed sleeps.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Node settings for tests: fast elections, small snapshots on request.
#[derive(Debug, Clone)]
pub struct TestSettings {
    pub raft: RaftSettings,
    pub snapshot: SnapshotSettings,
    pub limits: Limits,
    /// TLS files of the admin and every node (one certificate for all:
    /// it names 127.0.0.1); `None`: plain TCP.
    pub tls: Option<TlsFiles>,
    /// The token file the admin requires and the nodes present.
    pub auth_token_file: Option<std::path::PathBuf>,
    /// The admin's `relocation_mib_per_s` (0: unpaced).
    pub relocation_mib_per_s: u64,
}

impl Default for TestSettings {
    fn default() -> Self {
        Self {
            raft: RaftSettings {
                heartbeat_interval_ms: 50,
                election_timeout_min_ms: 300,
                election_timeout_max_ms: 600,
                join_timeout_ms: 30_000,
                ..RaftSettings::default()
            },
            snapshot: SnapshotSettings::default(),
            limits: Limits {
                request_timeout_ms: 3_000,
                ..Limits::default()
            },
            tls: None,
            auth_token_file: None,
            relocation_mib_per_s: 0,
        }
    }
}

/// One replica of a test system.
pub struct TestNode {
    pub config: NodeConfig,
    pub id: u64,
    pub cluster_id: String,
    pub addr: String,
    node: Option<Node>,
}

impl TestNode {
    pub fn is_running(&self) -> bool {
        self.node.is_some()
    }

    /// The running node; panics if it is down.
    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node is running")
    }
}

/// An admin plus clusters of replicas, all in this process.
pub struct TestSystem {
    root: tempfile::TempDir,
    admin: Option<Admin>,
    admin_config: AdminConfig,
    admin_addr: String,
    pub faults: Faults,
    pub settings: TestSettings,
    pub nodes: Vec<TestNode>,
    next_dir: usize,
}

impl TestSystem {
    /// `clusters` clusters of `replicas` replicas each, default settings.
    pub async fn start(clusters: usize, replicas: usize) -> Self {
        Self::start_with(clusters, replicas, TestSettings::default()).await
    }

    pub async fn start_with(clusters: usize, replicas: usize, settings: TestSettings) -> Self {
        init_logging();
        let root = tempfile::tempdir().expect("temp dir");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin_addr = listener.local_addr().expect("addr").to_string();
        let mut admin_config = AdminConfig::new(
            root.path().join("admin"),
            admin_addr.clone(),
            "127.0.0.1:0".into(),
        );
        // The admin accepts what the nodes accept.
        admin_config.max_key_bytes = settings.limits.max_key_bytes;
        admin_config.max_value_bytes = settings.limits.max_value_bytes;
        admin_config.tls = settings.tls.clone();
        admin_config.auth_token_file = settings.auth_token_file.clone();
        admin_config.relocation_mib_per_s = settings.relocation_mib_per_s;
        let admin = Admin::start(&admin_config, Some(listener))
            .await
            .expect("start admin");
        // Restarts come back on the same HTTP port.
        admin_config.http_addr = admin.http_addr().to_string();
        let mut sys = TestSystem {
            root,
            admin: Some(admin),
            admin_config,
            admin_addr,
            faults: Faults::default(),
            settings,
            nodes: Vec::new(),
            next_dir: 0,
        };
        for _ in 0..clusters {
            let founder = sys.add_node(true).await;
            let cluster = sys.nodes[founder].cluster_id.clone();
            for _ in 1..replicas {
                let i = sys.add_node(false).await;
                assert_eq!(
                    sys.nodes[i].cluster_id, cluster,
                    "replica joined another cluster"
                );
            }
        }
        sys
    }

    pub fn admin_addr(&self) -> &str {
        &self.admin_addr
    }

    /// The admin's HTTP API address.
    pub fn http_addr(&self) -> &str {
        &self.admin_config.http_addr
    }

    /// A JSON request to the admin's HTTP API.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> http::JsonResponse {
        let bytes = body.map(|b| serde_json::to_vec(&b).expect("json"));
        http::request(
            self.http_addr(),
            method,
            path,
            bytes.as_deref(),
            Duration::from_secs(15),
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn admin(&self) -> &Admin {
        self.admin.as_ref().expect("admin is running")
    }

    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }

    /// Starts a new replica that founds a cluster or joins one (the admin
    /// picks which); returns its index in [`TestSystem::nodes`].
    pub async fn add_node(&mut self, found: bool) -> usize {
        self.next_dir += 1;
        let config = NodeConfig {
            data_dir: self.root.path().join(format!("node-{}", self.next_dir)),
            listen_addr: "127.0.0.1:0".into(),
            advertise_addr: None,
            raft_addr: None,
            admin_addr: self.admin_addr.clone(),
            found_cluster: found,
            raft: self.settings.raft.clone(),
            snapshot: self.settings.snapshot.clone(),
            limits: self.settings.limits.clone(),
            storage: Default::default(),
            runtime: Default::default(),
            log_format: Default::default(),
            source_ip: None,
            // Every test node serves metrics (on a port of its own).
            metrics_addr: Some("127.0.0.1:0".into()),
            tls: self.settings.tls.clone(),
            auth_token_file: self.settings.auth_token_file.clone(),
        };
        config.validate().expect("valid test config");
        let node = Node::start(
            config.clone(),
            StartOptions {
                listener: None,
                faults: self.faults.clone(),
                setup_timeout: Some(Duration::from_secs(30)),
            },
        )
        .await
        .expect("start node");
        // Later restarts must come back on the same address: it is in the
        // Raft membership.
        let mut config = config;
        config.listen_addr = node.addr().to_string();
        if found {
            // A founder announces its cluster in the background once it
            // leads; tests start from a cluster that may take keys.
            let cluster = node.cluster_id().to_string();
            wait_for(
                Duration::from_secs(30),
                &format!("the admin to know {cluster} is ready"),
                || {
                    let ready = self
                        .admin
                        .as_ref()
                        .and_then(|a| {
                            a.registry()
                                .snapshot()
                                .clusters
                                .get(&cluster)
                                .map(|c| c.ready)
                        })
                        .unwrap_or(false);
                    async move { ready.then_some(()) }
                },
            )
            .await;
        }
        self.nodes.push(TestNode {
            id: node.id(),
            cluster_id: node.cluster_id().to_string(),
            addr: node.addr().to_string(),
            config,
            node: Some(node),
        });
        self.nodes.len() - 1
    }

    /// Indexes of the nodes of `cluster_id` (running or not).
    pub fn members(&self, cluster_id: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].cluster_id == cluster_id)
            .collect()
    }

    /// A member of `cluster_id` other than `not` (e.g. a follower).
    pub fn other_member(&self, cluster_id: &str, not: usize) -> usize {
        self.members(cluster_id)
            .into_iter()
            .find(|&i| i != not)
            .expect("the cluster has another member")
    }

    /// Whether node `i` holds, locally, every `(key, value)` of `expected`.
    pub fn holds_all<'a>(
        &self,
        i: usize,
        mut expected: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> bool {
        let n = self.nodes[i].node();
        expected.all(|(k, v)| n.local_get(k).ok().flatten().as_deref() == Some(v))
    }

    /// Cluster ids in founding order.
    pub fn cluster_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in &self.nodes {
            if !out.contains(&n.cluster_id) {
                out.push(n.cluster_id.clone());
            }
        }
        out
    }

    /// The running node that leads `cluster_id` in the highest term, once
    /// one does (panics after `timeout`).
    pub async fn leader(&self, cluster_id: &str, timeout: Duration) -> usize {
        let members = self.members(cluster_id);
        wait_for(timeout, &format!("a leader in {cluster_id}"), || {
            let best = members
                .iter()
                .filter_map(|&i| {
                    let n = self.nodes[i].node.as_ref()?;
                    let m = n.raft().metrics().borrow().clone();
                    (m.state == ServerState::Leader && m.current_leader == Some(m.id))
                        .then_some((m.current_term, i))
                })
                .max();
            async move { best.map(|(_, i)| i) }
        })
        .await
    }

    /// Stops a node abruptly: no leave, no deregistration; its data stays.
    pub async fn crash(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].node.take() {
            node.shutdown().await;
        }
    }

    /// Starts a crashed node again on its data directory and address.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].node.is_none(), "node {i} is running");
        let config = self.nodes[i].config.clone();
        // The old listener's port may take a moment to be free again.
        let listener = wait_for(
            Duration::from_secs(10),
            "the node's port to be free",
            || {
                let addr = config.listen_addr.clone();
                async move { TcpListener::bind(&addr).await.ok() }
            },
        )
        .await;
        let node = Node::start(
            config,
            StartOptions {
                listener: Some(listener),
                faults: self.faults.clone(),
                setup_timeout: Some(Duration::from_secs(30)),
            },
        )
        .await
        .expect("restart node");
        assert_eq!(node.id(), self.nodes[i].id, "restart changed the node id");
        self.nodes[i].node = Some(node);
    }

    /// Cuts `group` off from every other node (both ways).
    pub fn partition(&self, group: &[usize]) {
        for &a in group {
            for (b, n) in self.nodes.iter().enumerate() {
                if !group.contains(&b) {
                    self.faults.cut(self.nodes[a].id, n.id);
                }
            }
        }
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.faults.heal();
    }

    /// A `RavelClusterPB.RavelNode` client for node `i`.
    pub async fn client(&self, i: usize) -> RavelNodeClient<tonic::transport::Channel> {
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", self.nodes[i].addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(1));
        RavelNodeClient::new(ep.connect_lazy())
            .max_decoding_message_size(ravel_proto::limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(ravel_proto::limits::MAX_MESSAGE_BYTES)
    }

    /// `Run` on node `i` with a deadline.
    pub async fn run(
        &self,
        i: usize,
        operation: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<tonic::Response<ravel_proto::node::Response>, tonic::Status> {
        let mut req = tonic::Request::new(PbCommand {
            operation: operation.into(),
            key: key.to_vec(),
            value: value.to_vec(),
        });
        req.set_timeout(Duration::from_secs(5));
        self.client(i).await.run(req).await
    }

    /// Stops the admin (its state stays on disk).
    pub async fn stop_admin(&mut self) {
        if let Some(a) = self.admin.take() {
            a.shutdown().await;
        }
    }

    /// Starts the admin again on the same address and data.
    pub async fn restart_admin(&mut self) {
        let addr = self.admin_addr.clone();
        let listener = wait_for(Duration::from_secs(10), "the admin port to be free", || {
            let addr = addr.clone();
            async move { TcpListener::bind(&addr).await.ok() }
        })
        .await;
        self.admin = Some(
            Admin::start(&self.admin_config, Some(listener))
                .await
                .expect("restart admin"),
        );
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.crash(i).await;
        }
        self.stop_admin().await;
    }
}
