//! The `ravel-admin` command line. The binary's `main` is [`main`]; the
//! testkit's test binaries call it too.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ravel_runtime::logging;

use crate::config::Overrides;
use crate::{Admin, AdminConfig, AdminError};

#[derive(Parser)]
#[command(
    name = "ravel-admin",
    version,
    about = "The Ravel cluster admin: registry, sharding, HTTP API"
)]
struct Cli {
    /// TOML configuration file (see deploy/admin.toml).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// HTTP API address.
    #[arg(long = "http", value_name = "HOST:PORT")]
    http: Option<String>,
    /// gRPC address for nodes.
    #[arg(long = "grpc", value_name = "HOST:PORT")]
    grpc: Option<String>,
    /// Directory for the admin's state.
    #[arg(long = "backupPath", value_name = "DIR")]
    backup_path: Option<PathBuf>,
}

/// Parses the command line and runs the admin until SIGTERM or SIGINT.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        http_addr: cli.http,
        grpc_addr: cli.grpc,
        data_dir: cli.backup_path,
    };
    let cfg = match AdminConfig::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ravel-admin: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(cfg.log_format, "info");
    let rt = match cfg.runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ravel-admin: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let admin = match Admin::start(&cfg, None).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("ravel-admin: {e}");
                // A bad setting (TLS or token files) is not worth a restart.
                return match e {
                    AdminError::Config(_) => ExitCode::from(2),
                    _ => ExitCode::FAILURE,
                };
            }
        };
        ravel_runtime::signal::terminated().await;
        tracing::info!("shutting down");
        admin.shutdown().await;
        ExitCode::SUCCESS
    })
}
