//! The `ravel-node` command line: run a replica, or remove one for good.
//! The binary's `main` is [`main`]; the testkit's test binaries call it
//! too, so tests start real processes through exactly this code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ravel_runtime::logging::{self, LogFormat};
use ravel_transport::ChannelPool;

use crate::config::{ConfigError, Credentials, NodeConfig, Overrides, RuntimeSettings};
use crate::kill;
use crate::node::{Node, NodeError, StartOptions};

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
    /// Ask a node (or the admin) for its gRPC health (grpc.health.v1):
    /// exits 0 if SERVING, 1 otherwise. For container health checks and
    /// scripts; the image has no shell or curl.
    Health {
        /// The gRPC address to ask.
        #[arg(long, default_value = "127.0.0.1:7101", value_name = "HOST:PORT")]
        addr: String,
        /// The service to ask about ("" is the whole server).
        #[arg(long, default_value = "")]
        service: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// The node's TOML configuration: with a `[tls]` section, ask over
        /// mutual TLS with the node's own certificate.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
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
        /// The replica's TOML configuration, for its `[tls]` section and
        /// `auth_token_file` when the admin requires them.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// openraft logs routine membership and vote changes at warn.
const DEFAULT_LOG_FILTER: &str = "info,openraft=error";

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A replica's runtime is built from its settings, once they are read.
    let runtime = |settings: &RuntimeSettings| match settings.build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("ravel-node: cannot start the async runtime: {e}");
            None
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
            let Some(rt) = runtime(&cfg.runtime) else {
                return ExitCode::FAILURE;
            };
            logging::init(cfg.log_format, DEFAULT_LOG_FILTER);
            rt.block_on(run(cfg))
        }
        Cmd::Health {
            addr,
            service,
            timeout_ms,
            config,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            let creds = match credentials(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ravel-node health: {e}");
                    return ExitCode::from(2);
                }
            };
            let Some(rt) = runtime(&RuntimeSettings::default()) else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(async {
                tokio::time::timeout(timeout, health(&addr, &service, &creds)).await
            }) {
                Ok(Ok(status)) if status == "Serving" => {
                    println!("{addr}: SERVING");
                    ExitCode::SUCCESS
                }
                Ok(Ok(status)) => {
                    println!("{addr}: {status}");
                    ExitCode::FAILURE
                }
                Ok(Err(e)) => {
                    eprintln!("ravel-node health: {addr}: {e}");
                    ExitCode::FAILURE
                }
                Err(_) => {
                    eprintln!("ravel-node health: {addr}: no answer within {timeout:?}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Kill {
            storage_dir,
            timeout_secs,
            config,
        } => {
            logging::init(LogFormat::Text, DEFAULT_LOG_FILTER);
            let creds = match credentials(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ravel-node kill: {e}");
                    return ExitCode::from(2);
                }
            };
            let timeout = Duration::from_secs(timeout_secs);
            let Some(rt) = runtime(&RuntimeSettings::default()) else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(kill::kill(&storage_dir, &creds, timeout)) {
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
            }
        }
    }
}

/// The TLS identity and token of the node configured in `file`; none
/// without a file.
fn credentials(file: Option<&Path>) -> Result<Credentials, ConfigError> {
    match file {
        None => Ok(Credentials::default()),
        Some(f) => NodeConfig::load(Some(f), &Overrides::default())?.credentials(),
    }
}

/// The serving status `addr` reports for `service` (`Serving`,
/// `NotServing`, ...).
async fn health(addr: &str, service: &str, creds: &Credentials) -> Result<String, String> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let pool = ChannelPool::new(creds.channel_options());
    let channel = pool.channel(addr).map_err(|e| e.to_string())?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(format!("{:?}", answer.into_inner().status()))
}

async fn run(cfg: NodeConfig) -> ExitCode {
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
    tracing::info!(
        node = node.id(),
        cluster = node.cluster_id(),
        addr = node.addr(),
        "serving"
    );
    tokio::select! {
        _ = ravel_runtime::signal::terminated() => {
            tracing::info!("shutting down");
            node.shutdown().await;
            ExitCode::SUCCESS
        }
        reason = node.failed() => {
            // Fail-stop: a replica that cannot persist must not serve.
            tracing::error!(%reason, "raft stopped; exiting");
            eprintln!("ravel-node: raft stopped: {reason}");
            node.shutdown().await;
            ExitCode::from(3)
        }
    }
}
