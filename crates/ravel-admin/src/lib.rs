//! # ravel-admin
//!
//! The cluster admin:
//!
//! - [`registry`]: clusters, replicas, leaders, ring and relocation state,
//!   persisted before anything is acknowledged, and the registration policy;
//! - `service`: the `RavelClusterAdmin` gRPC service nodes call;
//! - [`ring`]: consistent hashing with bounded loads;
//! - `router`: key → cluster → leader, with leader discovery;
//! - `kv`: user operations that stay correct while keys move;
//! - `relocation`: planning ring changes and moving keys;
//! - `http`: the user-facing HTTP API;
//! - [`backup`]: the backup file format, backup streams and restores;
//! - `state`: the one [`AdminState`](state::AdminState) they all share.
//!
//! The `ravel-admin` binary is [`cli`]; the `ravel` command-line client is
//! [`user_cli`].

pub mod backup;
mod backup_cli;
pub mod cli;
pub mod config;
pub mod departure;
pub mod holds;
mod http;
mod kv;
pub mod metrics;
pub mod registration;
pub mod registry;
mod relocation;
pub mod ring;
mod router;
mod service;
mod state;
pub mod user_cli;

use std::sync::Arc;

use ravel_proto::admin::ravel_cluster_admin_server::RavelClusterAdminServer;
use ravel_runtime::config::ConfigError;
use ravel_runtime::tls::{load_tls_setting, load_token_setting, Token};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::AdminConfig;
pub use kv::TOMBSTONE;
use registry::{Registry, RegistryError};
pub use relocation::PAGE as RELOCATION_PAGE;
use service::AdminService;
use state::AdminState;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Config(#[from] ravel_runtime::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running admin.
pub struct Admin {
    grpc_addr: String,
    http_addr: String,
    /// The registry (shared with the admin's services), for inspection.
    registry: Arc<Registry>,
    /// Cancelled on shutdown: stops both servers.
    shutdown: CancellationToken,
    /// The gRPC and HTTP servers.
    tasks: Vec<JoinHandle<()>>,
    /// The relocation mover; aborted on shutdown.
    mover: JoinHandle<()>,
    /// The admin's state, for [`Admin::holds`].
    state: Arc<AdminState>,
}

impl Admin {
    /// Opens the registry under `cfg.data_dir`, serves gRPC (on
    /// `grpc_listener` if given, else on `cfg.grpc_addr`) and HTTP, and
    /// resumes any relocation in progress.
    pub async fn start(
        cfg: &AdminConfig,
        grpc_listener: Option<TcpListener>,
    ) -> Result<Admin, AdminError> {
        // Unusable TLS or token files fail the start before anything opens.
        let tls = load_tls_setting(cfg.tls.as_ref())?;
        let token = load_token_setting("auth_token_file", cfg.auth_token_file.as_deref())?;
        let server_tls = (tls.as_ref())
            .map(ravel_transport::tls::server_config)
            .transpose()
            .map_err(|e| ConfigError::invalid("tls", e.to_string()))?;
        let registry = Registry::open(&cfg.data_dir)?;
        registry.adopt_ring(cfg.ring).await?;
        let client_tls = tls.as_ref().map(ravel_transport::tls::client_config);
        let admin = Arc::new(AdminState::new(registry, cfg, client_tls, token.clone()));
        let (http_listener, http_addr) = bind(&cfg.http_addr, None).await?;
        let (grpc_listener, grpc_addr) = bind(&cfg.grpc_addr, grpc_listener).await?;
        // Before any server task starts, so a failure leaves none running.
        let http_listener = match (&cfg.tls, &tls) {
            (Some(files), Some(pem)) => HttpListener::Tls(
                ravel_runtime::tls::https_listener(http_listener, files, pem)
                    .map_err(|e| ConfigError::invalid("tls", e.to_string()))?,
            ),
            _ => HttpListener::Plain(http_listener),
        };
        let shutdown = CancellationToken::new();

        // The standard health service: the admin serves as soon as it is up.
        let (reporter, health) = tonic_health::server::health_reporter();
        for service in ["", "RavelClusterAdminPB.RavelClusterAdmin"] {
            reporter
                .set_service_status(service, tonic_health::ServingStatus::Serving)
                .await;
        }
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = server_tls {
            server = server
                .tls_config(tls)
                .map_err(|e| ConfigError::invalid("tls", e.to_string()))?;
        }
        // Health and reflection stay open: probes carry no token.
        let server = server
            .timeout(std::time::Duration::from_secs(30))
            .add_service(health)
            .add_service(ravel_proto::reflection_service())
            .add_service(RavelClusterAdminServer::with_interceptor(
                AdminService::new(admin.clone()),
                move |req: tonic::Request<()>| check_token(token.as_ref(), req),
            ));
        // Accepted sockets need TCP_NODELAY set here: small answers must
        // not wait on delayed ACKs.
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        let stop = shutdown.clone().cancelled_owned();
        let grpc_task = tokio::spawn(async move {
            if let Err(e) = server.serve_with_incoming_shutdown(incoming, stop).await {
                tracing::error!(error = %e, "admin gRPC server failed");
            }
        });

        let app = http::router(admin.clone());
        let stop = shutdown.clone().cancelled_owned();
        let http_task = match http_listener {
            HttpListener::Tls(https) => tokio::spawn(serve_http(https, app, stop)),
            HttpListener::Plain(http_listener) => {
                let http_listener = axum::serve::ListenerExt::tap_io(http_listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                tokio::spawn(serve_http(http_listener, app, stop))
            }
        };
        let mover = tokio::spawn(relocation::run_mover(admin.clone()));
        tracing::info!(grpc = %grpc_addr, http = %http_addr, data = %cfg.data_dir.display(), "admin serving");
        Ok(Admin {
            grpc_addr,
            http_addr,
            registry: admin.registry.clone(),
            shutdown,
            tasks: vec![grpc_task, http_task],
            mover,
            state: admin,
        })
    }

    pub fn grpc_addr(&self) -> &str {
        &self.grpc_addr
    }

    pub fn http_addr(&self) -> &str {
        &self.http_addr
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The mover's hold points (tests stop it at an exact step with them).
    pub fn holds(&self) -> &holds::Holds {
        &self.state.holds
    }

    /// Stops serving. The mover is aborted wherever it is: every step of a
    /// relocation is persisted and idempotent, so the next start resumes it.
    pub async fn shutdown(self) {
        self.mover.abort();
        let _ = self.mover.await;
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The HTTP API's listener.
enum HttpListener {
    Plain(TcpListener),
    Tls(ravel_runtime::tls::HttpsListener),
}

/// Serves the HTTP API on `listener` (plain or TLS) until `stop`.
async fn serve_http<L>(
    listener: L,
    app: axum::Router,
    stop: tokio_util::sync::WaitForCancellationFutureOwned,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "admin HTTP server failed");
    }
}

/// The admin gRPC service's gate: with a token configured, a call without
/// `authorization: Bearer <token>` is refused (UNAUTHENTICATED) before it
/// reaches the service.
fn check_token(
    token: Option<&Token>,
    req: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    match token {
        None => Ok(req),
        Some(t) if t.admits(req.metadata().get("authorization").map(|v| v.as_bytes())) => Ok(req),
        Some(_) => Err(tonic::Status::unauthenticated(
            "missing or wrong bearer token (the admin's auth_token_file)",
        )),
    }
}

/// Binds `addr` (or takes `listener`) and returns it with its actual address.
async fn bind(
    addr: &str,
    listener: Option<TcpListener>,
) -> Result<(TcpListener, String), AdminError> {
    let err = |source| AdminError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(addr).await.map_err(err)?,
    };
    let local = listener.local_addr().map_err(err)?.to_string();
    Ok((listener, local))
}
