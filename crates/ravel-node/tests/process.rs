//! The real binaries: one `ravel-admin` and three `ravel-node` processes
//! started from TOML files on loopback. The leader is SIGKILLed; writes keep
//! succeeding; the killed node restarts from its data and rejoins.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ravel_proto::ext::ravel_node_ext_client::RavelNodeExtClient;
use ravel_proto::ext::StatusRequest;
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_proto::node::{Command as PbCommand, Void};

fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ravel-node"))
}

/// `ravel-admin` is built next to `ravel-node` by the same `cargo test`.
fn admin_bin() -> PathBuf {
    let p = node_bin().with_file_name("ravel-admin");
    assert!(
        p.is_file(),
        "{} is missing: run the workspace's tests (`cargo test --workspace`), which build it",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills its process when dropped, so a failing test leaves nothing behind.
struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, bin: &Path, args: &[&str], log: &Path) -> Proc {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .env("RAVEL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Proc {
            name: name.into(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(status)) = c.try_wait() {
                // Its own words on why, before the temporary directory goes.
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!("{} had exited: {status}; the end of its log:", self.name);
                for line in tail.iter().rev() {
                    eprintln!("  {line}");
                }
            }
        }
        self.sigkill();
    }
}

async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .connect_lazy()
}

async fn is_leader(addr: &str) -> bool {
    RavelNodeClient::new(channel(addr))
        .is_leader(Void {})
        .await
        .map(|r| r.get_ref().leader)
        .unwrap_or(false)
}

async fn run(addr: &str, op: &str, key: &str, value: &str) -> Result<Vec<u8>, tonic::Status> {
    RavelNodeClient::new(channel(addr))
        .run(PbCommand {
            operation: op.into(),
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        })
        .await
        .map(|r| r.into_inner().data)
}

async fn status(addr: &str) -> Option<ravel_proto::ext::StatusResponse> {
    RavelNodeExtClient::new(channel(addr))
        .status(StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

fn node_toml(dir: &Path, port: u16, admin_port: u16, found: bool) -> String {
    format!(
        r#"data_dir = "{}"
listen_addr = "127.0.0.1:{port}"
admin_addr = "127.0.0.1:{admin_port}"
found_cluster = {found}

[raft]
heartbeat_interval_ms = 50
election_timeout_min_ms = 300
election_timeout_max_ms = 600
"#,
        dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_processes_survive_leader_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    std::fs::write(
        tmp.path().join("admin.toml"),
        format!(
            "grpc_addr = \"127.0.0.1:{admin_port}\"\nhttp_addr = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n",
            free_port(),
            tmp.path().join("admin").display()
        ),
    )
    .unwrap();
    let _admin = Proc::spawn(
        "admin",
        &admin_bin(),
        &["--config", tmp.path().join("admin.toml").to_str().unwrap()],
        &tmp.path().join("admin.log"),
    );

    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut configs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let cfg = tmp.path().join(format!("node{i}.toml"));
        std::fs::write(
            &cfg,
            node_toml(
                &tmp.path().join(format!("node{i}")),
                *port,
                admin_port,
                i == 0,
            ),
        )
        .unwrap();
        configs.push(cfg);
    }
    let start = |i: usize| {
        Proc::spawn(
            &format!("node{i}"),
            &node_bin(),
            &["start", "--config", configs[i].to_str().unwrap()],
            &tmp.path().join(format!("node{i}.log")),
        )
    };
    let mut nodes = vec![start(0)];
    wait_for(Duration::from_secs(20), "the founder to lead", || async {
        is_leader(&addrs[0]).await.then_some(())
    })
    .await;
    nodes.push(start(1));
    nodes.push(start(2));
    wait_for(Duration::from_secs(30), "three voters", || async {
        status(&addrs[0])
            .await
            .filter(|s| s.voters.len() == 3)
            .map(|_| ())
    })
    .await;

    for k in 0..50 {
        run(&addrs[k % 3], "set", &format!("k{k}"), &format!("v{k}"))
            .await
            .expect("write");
    }

    let leader = wait_for(Duration::from_secs(10), "a leader", || async {
        for (i, a) in addrs.iter().enumerate() {
            if is_leader(a).await {
                return Some(i);
            }
        }
        None
    })
    .await;
    nodes[leader].sigkill();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut n = 0;
    wait_for(
        Duration::from_secs(15),
        "a write after the leader's SIGKILL",
        || {
            n += 1;
            let via = addrs[survivors[n % 2]].clone();
            async move { run(&via, "set", "after-kill", "1").await.ok().map(|_| ()) }
        },
    )
    .await;
    println!(
        "process failover: write accepted {} ms after SIGKILL",
        killed_at.elapsed().as_millis()
    );
    for k in 50..80 {
        run(
            &addrs[survivors[k % 2]],
            "set",
            &format!("k{k}"),
            &format!("v{k}"),
        )
        .await
        .expect("write after failover");
    }

    // Restart from its data: no registration, it rejoins its group.
    nodes[leader] = start(leader);
    let new_leader = wait_for(
        Duration::from_secs(10),
        "a leader among the survivors",
        || async {
            for &i in &survivors {
                if is_leader(&addrs[i]).await {
                    return Some(i);
                }
            }
            None
        },
    )
    .await;
    wait_for(
        Duration::from_secs(20),
        "the restarted node to catch up",
        || {
            let (a, b) = (addrs[leader].clone(), addrs[new_leader].clone());
            async move {
                let mine = status(&a).await?;
                let theirs = status(&b).await?;
                (mine.voters.len() == 3
                    && mine.last_applied_index >= theirs.last_applied_index
                    && mine.last_applied_index > 0)
                    .then_some(())
            }
        },
    )
    .await;
    for k in (0..80).step_by(7) {
        let v = run(&addrs[leader], "get", &format!("k{k}"), "")
            .await
            .expect("read");
        assert_eq!(v, format!("v{k}").into_bytes());
    }
}
