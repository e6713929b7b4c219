//! `ravel-node`: run a replica, or remove one for good.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ravel_node::{identity, kill, Node, NodeConfig, NodeError, Overrides, StartOptions};

#[derive(Parser)]
#[command(
    name = "ravel-node",
    version,
    about = "A Ravel replica: one member of a Raft group replicating a RocksDB key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a replica. On first start it registers with the admin and founds
    /// (--leader) or joins a cluster; later starts rejoin from the data dir.
    ///
    /// Settings come from defaults, then --config FILE (TOML), then RAVEL_*
    /// environment variables (RAVEL_DATA_DIR, RAVEL_LIMITS__MAX_VALUE_BYTES,
    /// ...), then these flags.
    Start {
        /// TOML configuration file (see deploy/node.toml).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory: database, snapshots, identity.
        #[arg(short = 's', long = "storagedir", value_name = "DIR")]
        storage_dir: Option<PathBuf>,
        /// This node's gRPC address (bound and advertised).
        #[arg(short = 'g', long = "grpcaddr", value_name = "HOST:PORT")]
        grpc_addr: Option<String>,
        /// Raft address reported to the admin; Raft runs on the gRPC server,
        /// so this defaults to --grpcaddr.
        #[arg(short = 'r', long = "raftaddr", value_name = "HOST:PORT")]
        raft_addr: Option<String>,
        /// The admin's gRPC address.
        #[arg(short = 'a', long = "adminrpcaddr", value_name = "HOST:PORT")]
        admin_addr: Option<String>,
        /// Found a new cluster (first start only); without it, join one.
        #[arg(short = 'l', long = "leader")]
        leader: bool,
    },
    /// Leave the cluster for good and delete the data directory: asks the
    /// admin for the leader, leaves through it, deregisters, stops a node
    /// still running on DIR, deletes DIR.
    Kill {
        /// The data directory of the replica to remove.
        #[arg(short = 's', long = "storagedir", value_name = "DIR")]
        storage_dir: PathBuf,
        /// Give up after this many seconds (the last replica of a cluster
        /// waits while the admin moves the cluster's keys away).
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAVEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ravel-node: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Cmd::Start {
            config,
            storage_dir,
            grpc_addr,
            raft_addr,
            admin_addr,
            leader,
        } => {
            let overrides = Overrides {
                data_dir: storage_dir,
                grpc_addr,
                raft_addr,
                admin_addr,
                found_cluster: leader,
            };
            let cfg = match NodeConfig::load(config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ravel-node: {e}");
                    return ExitCode::from(2);
                }
            };
            rt.block_on(run(cfg))
        }
        Cmd::Kill {
            storage_dir,
            timeout_secs,
        } => match rt.block_on(kill::kill(&storage_dir, Duration::from_secs(timeout_secs))) {
            Ok(()) => {
                println!(
                    "removed the replica in {} from its cluster and deleted its data",
                    storage_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ravel-node kill: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn run(cfg: NodeConfig) -> ExitCode {
    let dir = cfg.data_dir.clone();
    let node = match Node::start(cfg, StartOptions::default()).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("ravel-node: {e}");
            return match e {
                NodeError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            };
        }
    };
    if let Err(e) = identity::write_pid(&dir) {
        tracing::warn!(error = %e, "cannot write the pid file; `ravel-node kill` will not be able to stop this process");
    }
    tracing::info!(
        node = node.id(),
        cluster = node.cluster_id(),
        addr = node.addr(),
        "serving"
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    identity::remove_pid(&dir);
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
