//! Whole Ravel systems as real processes: one `ravel-admin` and any number
//! of `ravel-node` processes (the testkit's `ravel-test-*` binaries: the
//! release binaries' own `main`, with the fault hooks compiled in), each on
//! its own loopback IP (`127.77.<system>.<n>`), so that iptables rules can
//! cut, or drop packets between, chosen processes. Processes can be
//! SIGKILLed, paused (SIGSTOP) and resumed, and restarted on their data.
//!
//! Every process is killed when the system is dropped, so a failing test
//! leaves nothing behind.
//!
//! (Over 400 lines: one type, `ProcSystem`, and the process handling it
//! owns; tests call all of it.)

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ravel_proto::ext::ravel_node_ext_client::RavelNodeExtClient;
use ravel_proto::ext::{StatusRequest, StatusResponse};
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use tonic::transport::Channel;

use crate::wait_for;

/// Where the test binaries are: next to the test executable's `deps/`.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target directory");
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo test -p ravel-testkit` (it is a testkit binary)",
        p.display()
    );
    p
}

/// Runs the `ravel` CLI (the testkit's `ravel-test-cli`) with `args` to its
/// end, at most `timeout`; its exit status, stdout and stderr.
pub async fn ravel_cli(args: Vec<String>, timeout: Duration) -> std::process::Output {
    run_binary("ravel-test-cli", args, timeout).await
}

/// Runs the testkit binary `name` (`ravel-test-node`, `ravel-test-admin`,
/// `ravel-test-cli`) with `args` to its end, at most `timeout`, without the
/// CLI's environment variables.
pub async fn run_binary(name: &str, args: Vec<String>, timeout: Duration) -> std::process::Output {
    let what = format!("{name} {}", args.join(" "));
    let path = bin(name);
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(path)
            .args(&args)
            .env_remove("RAVEL_ADMIN_HTTP")
            .env_remove("RAVEL_CA")
            .env_remove("RAVEL_TOKEN_FILE")
            .output()
            .expect("run a testkit binary")
    });
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| panic!("`{what}` did not end within {timeout:?}"))
        .expect("join")
}

/// A process of the system; SIGKILLed when dropped.
#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    paused: bool,
}

impl Proc {
    fn spawn(
        bin: &Path,
        args: &[&str],
        env: &[(String, String)],
        log: &Path,
    ) -> std::io::Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(bin)
            .args(args)
            .env(
                "RAVEL_LOG",
                std::env::var("RAVEL_PROC_LOG").unwrap_or("info,openraft=warn".into()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()?;
        Ok(Proc {
            child: Some(child),
            paused: false,
        })
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: a signal to our own child process.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// SIGTERM and wait (SIGKILL after `grace`); the exit status.
    fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        if self.paused {
            // SAFETY: our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            self.paused = false;
        }
        // SAFETY: our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + grace;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if std::time::Instant::now() >= deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited on its own (and how).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Node settings for process systems.
#[derive(Debug, Clone)]
pub struct ProcSettings {
    /// Extra TOML appended to every node's config (sections `[raft]`,
    /// `[snapshot]`, `[limits]`).
    pub node_toml: String,
}

impl Default for ProcSettings {
    fn default() -> Self {
        // The default timings; small snapshots so that a replica that was
        // down catches up by snapshot in a short test.
        Self {
            node_toml: "[snapshot]\nlogs_since_last = 300\nkeep_logs = 50\n".into(),
        }
    }
}

/// One `ravel-node` process (or its data, while it is down).
#[derive(Debug)]
pub struct ProcNode {
    pub ip: Ipv4Addr,
    /// `ip:port`: what it listens on and advertises.
    pub addr: String,
    pub dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    proc: Proc,
    /// Raft id, from its identity file once it has registered.
    pub id: u64,
    pub cluster_id: String,
    /// Removed for good (`kill`): never restarted.
    pub removed: bool,
    /// Extra environment for its next start (e.g. `RAVEL_FAILPOINTS`).
    pub env: Vec<(String, String)>,
}

impl ProcNode {
    pub fn is_running(&self) -> bool {
        self.proc.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.proc.paused
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.proc.pid()
    }

    fn identity(&self) -> Option<(u64, String, bool)> {
        let raw = std::fs::read(self.dir.join("identity.json")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
        Some((
            v["node_id"].as_u64()?,
            v["cluster_id"].as_str().unwrap_or_default().to_string(),
            v["joined"].as_bool().unwrap_or(false),
        ))
    }
}

/// Per-process counter, so concurrent systems get distinct subnets.
static SYSTEMS: AtomicU32 = AtomicU32::new(0);

/// An admin plus nodes, as processes.
pub struct ProcSystem {
    /// Deleted on drop, unless the test panicked (then kept for its logs).
    root: Option<tempfile::TempDir>,
    /// The second octet block: every address is `127.77.<net>.<n>`.
    net: u8,
    port: u16,
    pub admin_ip: Ipv4Addr,
    pub admin_grpc: String,
    pub admin_http: String,
    admin: Proc,
    pub nodes: Vec<ProcNode>,
    pub settings: ProcSettings,
}

fn ephemeral_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

impl ProcSystem {
    /// Starts the admin; add nodes with [`ProcSystem::add_node`].
    pub async fn start(settings: ProcSettings) -> ProcSystem {
        crate::init_logging();
        let root = tempfile::tempdir().expect("temp dir");
        let n = SYSTEMS.fetch_add(1, Ordering::Relaxed);
        let net = ((std::process::id() * 7 + n) % 250 + 1) as u8;
        // Every process has its own IP, so they can all use one port.
        let port = ephemeral_port();
        let admin_ip = Ipv4Addr::new(127, 77, net, 1);
        let mut sys = ProcSystem {
            admin_grpc: format!("{admin_ip}:{port}"),
            admin_http: format!("{admin_ip}:{}", port.wrapping_add(1).max(1024)),
            admin_ip,
            root: Some(root),
            net,
            port,
            admin: Proc {
                child: None,
                paused: false,
            },
            nodes: Vec::new(),
            settings,
        };
        sys.start_admin().await;
        sys
    }

    pub fn root(&self) -> &Path {
        self.root.as_ref().expect("root until drop").path()
    }

    fn admin_log(&self) -> PathBuf {
        self.root().join("admin.log")
    }

    /// Starts (or restarts) the admin process on its data.
    pub async fn start_admin(&mut self) {
        let cfg = self.root().join("admin.toml");
        std::fs::write(
            &cfg,
            format!(
                "grpc_addr = \"{}\"\nhttp_addr = \"{}\"\ndata_dir = \"{}\"\nsource_ip = \"{}\"\n",
                self.admin_grpc,
                self.admin_http,
                self.root().join("admin").display(),
                self.admin_ip
            ),
        )
        .expect("admin config");
        self.admin = Proc::spawn(
            &bin("ravel-test-admin"),
            &["--config", cfg.to_str().expect("utf-8 path")],
            &[],
            &self.admin_log(),
        )
        .expect("spawn admin");
        let http = self.admin_http.clone();
        wait_for(Duration::from_secs(20), "the admin to serve HTTP", || {
            let http = http.clone();
            async move {
                crate::http::request(&http, "GET", "/healthz", None, Duration::from_millis(500))
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
            }
        })
        .await;
    }

    /// SIGKILLs the admin.
    pub fn kill_admin(&mut self) {
        self.admin.kill();
    }

    /// Starts a new node that founds a cluster or joins one (the admin
    /// picks which); waits until it has joined. Returns its index.
    pub async fn add_node(&mut self, found: bool) -> usize {
        let i = self.nodes.len();
        let ip = Ipv4Addr::new(127, 77, self.net, 10 + i as u8);
        let dir = self.root().join(format!("node{i}"));
        let config = self.root().join(format!("node{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\nlisten_addr = \"{ip}:{}\"\nadmin_addr = \"{}\"\nfound_cluster = {found}\nsource_ip = \"{ip}\"\n{}\n",
                dir.display(),
                self.port,
                self.admin_grpc,
                self.settings.node_toml
            ),
        )
        .expect("node config");
        self.nodes.push(ProcNode {
            ip,
            addr: format!("{ip}:{}", self.port),
            log: self.root().join(format!("node{i}.log")),
            dir,
            config,
            proc: Proc {
                child: None,
                paused: false,
            },
            id: 0,
            cluster_id: String::new(),
            removed: false,
            env: Vec::new(),
        });
        self.start_node(i).await;
        if found {
            // A founder announces its cluster in the background; tests
            // start from a cluster that may take keys.
            let dir = self.nodes[i].dir.clone();
            wait_for(
                Duration::from_secs(30),
                &format!("node {i}'s cluster to be acknowledged as ready"),
                || {
                    let raw = std::fs::read(dir.join("identity.json")).ok();
                    async move {
                        let v: serde_json::Value = serde_json::from_slice(&raw?).ok()?;
                        (v["announced"].as_bool() == Some(true)).then_some(())
                    }
                },
            )
            .await;
        }
        i
    }

    /// Starts node `i` (again) on its data and waits until it has joined
    /// its cluster and serves.
    pub async fn start_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        assert!(!n.is_running(), "node {i} is running");
        assert!(!n.removed, "node {i} was removed for good");
        n.proc = Proc::spawn(
            &bin("ravel-test-node"),
            &["start", "--config", n.config.to_str().expect("utf-8 path")],
            &n.env,
            &n.log,
        )
        .expect("spawn node");
        let (dir, addr, log) = (n.dir.clone(), n.addr.clone(), n.log.clone());
        let (id, cluster) = wait_for(
            Duration::from_secs(60),
            &format!("node {i} to join and serve (log: {})", log.display()),
            || {
                let (dir, addr) = (dir.clone(), addr.clone());
                async move {
                    let raw = std::fs::read(dir.join("identity.json")).ok()?;
                    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
                    if v["joined"].as_bool() != Some(true) {
                        return None;
                    }
                    status(&addr, Duration::from_millis(500)).await?;
                    Some((
                        v["node_id"].as_u64()?,
                        v["cluster_id"].as_str()?.to_string(),
                    ))
                }
            },
        )
        .await;
        let n = &mut self.nodes[i];
        n.id = id;
        n.cluster_id = cluster;
    }

    /// SIGKILLs node `i`: no leave, no flush beyond what was synced.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].proc.kill();
    }

    /// SIGTERMs node `i` and waits for it to exit; its exit status.
    pub fn stop_node(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.nodes[i].proc.terminate(Duration::from_secs(20))
    }

    /// SIGSTOPs node `i`: it holds its connections but answers nothing.
    pub fn pause_node(&mut self, i: usize) {
        let p = &mut self.nodes[i].proc;
        if p.child.is_some() && !p.paused {
            p.signal(libc::SIGSTOP);
            p.paused = true;
        }
    }

    /// SIGCONTs a paused node.
    pub fn resume_node(&mut self, i: usize) {
        let p = &mut self.nodes[i].proc;
        if p.paused {
            p.signal(libc::SIGCONT);
            p.paused = false;
        }
    }

    /// Whether node `i` exited on its own; its status if so.
    pub fn node_exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.nodes[i].proc.exited()
    }

    /// Removes node `i` for good with `ravel-node kill -s DIR` (the real
    /// CLI: leave through the leader, deregister, stop, delete).
    pub async fn remove_node(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let out = self
            .start_removal(i, timeout)
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if out.is_ok() {
            self.removed(i);
        }
        out
    }

    /// Runs `ravel-node kill -s DIR` for node `i` on its own task, so the
    /// caller can inject faults while it runs; call [`ProcSystem::removed`]
    /// once it succeeded.
    pub fn start_removal(
        &self,
        i: usize,
        timeout: Duration,
    ) -> tokio::task::JoinHandle<Result<(), String>> {
        let dir = self.nodes[i].dir.clone();
        let secs = timeout.as_secs().max(1).to_string();
        tokio::spawn(async move {
            let out = run_command(
                bin("ravel-test-node"),
                vec![
                    "kill".into(),
                    "-s".into(),
                    dir.display().to_string(),
                    "--timeout-secs".into(),
                    secs,
                ],
            )
            .await;
            match out {
                Ok((true, _)) => Ok(()),
                Ok((false, err)) => Err(err),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    /// Records that node `i` was removed by a successful `kill` (which
    /// stopped the process; it is reaped here).
    pub fn removed(&mut self, i: usize) {
        self.nodes[i].proc.kill();
        self.nodes[i].removed = true;
    }

    /// Indexes of the nodes of `cluster_id` that are not removed.
    /// An admin and one cluster of three replicas (a founder, then two
    /// that join); returns the system and the cluster's id.
    pub async fn start_cluster(settings: ProcSettings) -> (ProcSystem, String) {
        let mut sys = ProcSystem::start(settings).await;
        let founder = sys.add_node(true).await;
        let cluster = sys.nodes[founder].cluster_id.clone();
        sys.add_node(false).await;
        sys.add_node(false).await;
        (sys, cluster)
    }

    /// A member of `cluster_id` other than `not`.
    pub fn other_member(&self, cluster_id: &str, not: usize) -> usize {
        self.members(cluster_id)
            .into_iter()
            .find(|&i| i != not)
            .expect("another member")
    }

    /// Workload targets: every node's gRPC address and the admin's HTTP.
    pub fn targets(&self) -> crate::workload::Targets {
        crate::workload::Targets {
            nodes: std::sync::Arc::new(std::sync::RwLock::new(
                self.nodes.iter().map(|n| n.addr.clone()).collect(),
            )),
            http: Some(self.admin_http.clone()),
            leader: std::sync::Arc::default(),
        }
    }

    pub fn members(&self, cluster_id: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].cluster_id == cluster_id && !self.nodes[i].removed)
            .collect()
    }

    /// Node `i`'s own view of its cluster (short deadline).
    pub async fn status(&self, i: usize) -> Option<StatusResponse> {
        status(&self.nodes[i].addr, Duration::from_millis(500)).await
    }

    /// The running, unpaused member of `cluster_id` that says it leads in
    /// the highest term, once one does (panics after `timeout`).
    pub async fn leader(&self, cluster_id: &str, timeout: Duration) -> usize {
        let members = self.members(cluster_id);
        wait_for(timeout, &format!("a leader in {cluster_id}"), || {
            let members = members.clone();
            async move {
                let mut best = None;
                for i in members {
                    let n = &self.nodes[i];
                    if !n.is_running() || n.is_paused() {
                        continue;
                    }
                    if let Some(s) = self.status(i).await {
                        if s.leader_id == n.id.to_string()
                            && best.as_ref().is_none_or(|(t, _)| s.term > *t)
                        {
                            best = Some((s.term, i));
                        }
                    }
                }
                best.map(|(_, i)| i)
            }
        })
        .await
    }

    /// Reads node `i`'s identity file: (id, cluster, joined).
    pub fn identity(&self, i: usize) -> Option<(u64, String, bool)> {
        self.nodes[i].identity()
    }

    /// The last lines of every process's log, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut logs = vec![("admin".to_string(), self.admin_log())];
        for (i, n) in self.nodes.iter().enumerate() {
            logs.push((format!("node{i} ({})", n.addr), n.log.clone()));
        }
        for (name, path) in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name}: {} ---\n", path.display()));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Keeps the data and logs (for a failing seed) instead of deleting
    /// them on drop; returns where they are.
    pub fn keep(mut self) -> PathBuf {
        self.root.take().expect("root until drop").keep()
    }

    /// Ends a seed of a chaos test: checks `ops` key by key (reports of
    /// violations written under the system's root) into `violations`, and
    /// if anything failed keeps the logs and data and says where.
    pub fn conclude(self, ops: &[crate::history::Operation], violations: &mut Vec<String>) {
        violations.extend(crate::linearizability::report(
            ops,
            &self.root().join("violations"),
        ));
        if !violations.is_empty() {
            violations.push(self.log_tails(30));
            let dir = self.keep();
            violations.push(format!("logs, data and reports kept in {}", dir.display()));
        }
    }
}

impl Drop for ProcSystem {
    fn drop(&mut self) {
        // Processes first: their directories go next.
        self.admin.kill();
        for n in &mut self.nodes {
            n.proc.kill();
        }
        if std::thread::panicking() {
            if let Some(root) = self.root.take() {
                eprintln!(
                    "test failed: logs and data kept in {}",
                    root.keep().display()
                );
            }
        }
    }
}

/// A new lazily-connected channel with a short connect timeout.
pub fn new_channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid address")
        .connect_timeout(Duration::from_millis(300))
        .tcp_nodelay(true)
        .connect_lazy()
}

/// The shared channel to `addr`: requests multiplex over one connection
/// (reconnected when it breaks), as real clients do. A connection per
/// request would fill the ephemeral port range with TIME_WAIT sockets at a
/// few thousand requests per second.
pub fn channel(addr: &str) -> Channel {
    static CHANNELS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, Channel>>,
    > = std::sync::OnceLock::new();
    let mut map = CHANNELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(addr.to_string())
        .or_insert_with(|| new_channel(addr))
        .clone()
}

/// A node's `Status`, or `None` if it does not answer within `timeout`.
pub async fn status(addr: &str, timeout: Duration) -> Option<StatusResponse> {
    let mut req = tonic::Request::new(StatusRequest {});
    req.set_timeout(timeout);
    tokio::time::timeout(timeout, RavelNodeExtClient::new(channel(addr)).status(req))
        .await
        .ok()?
        .ok()
        .map(|r| r.into_inner())
}

/// A `RavelClusterPB.RavelNode` client.
pub fn node_client(addr: &str) -> RavelNodeClient<Channel> {
    RavelNodeClient::new(channel(addr))
}

/// Runs a command to completion off the async workers: (success, stderr).
async fn run_command(bin: PathBuf, args: Vec<String>) -> std::io::Result<(bool, String)> {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(bin).args(args).stdin(Stdio::null()).output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    })
    .await
    .map_err(std::io::Error::other)?
}
