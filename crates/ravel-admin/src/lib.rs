//! # ravel-admin
//!
//! The cluster admin: [`registry`] (clusters, replicas, leaders; persisted),
//! [`service`] (the `RavelClusterAdmin` gRPC service nodes call), and
//! [`Admin`] to run them. Sharding, relocation and the HTTP API build on the
//! registry.

pub mod config;
pub mod registry;
pub mod service;

use std::sync::Arc;

use ravel_proto::admin::ravel_cluster_admin_server::RavelClusterAdminServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::AdminConfig;
use registry::{Registry, RegistryError};
use service::AdminService;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
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
    registry: Arc<Registry>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Admin {
    /// Opens the registry under `cfg.data_dir` and serves gRPC (on
    /// `grpc_listener` if given, else on `cfg.grpc_addr`).
    pub async fn start(
        cfg: &AdminConfig,
        grpc_listener: Option<TcpListener>,
    ) -> Result<Admin, AdminError> {
        let registry = Arc::new(Registry::open(&cfg.data_dir)?);
        let listener = match grpc_listener {
            Some(l) => l,
            None => TcpListener::bind(&cfg.grpc_addr)
                .await
                .map_err(|source| AdminError::Bind {
                    addr: cfg.grpc_addr.clone(),
                    source,
                })?,
        };
        let grpc_addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind {
                addr: cfg.grpc_addr.clone(),
                source,
            })?
            .to_string();
        let (shutdown, mut rx) = watch::channel(false);
        let service = AdminService::new(registry.clone());
        let server = tonic::transport::Server::builder()
            .timeout(std::time::Duration::from_secs(30))
            .add_service(RavelClusterAdminServer::new(service));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let stop = async move {
                while !*rx.borrow() {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
            };
            if let Err(e) = server.serve_with_incoming_shutdown(incoming, stop).await {
                tracing::error!(error = %e, "admin gRPC server failed");
            }
        });
        tracing::info!(grpc = %grpc_addr, data = %cfg.data_dir.display(), "admin serving");
        Ok(Admin {
            grpc_addr,
            registry,
            shutdown,
            tasks: vec![task],
        })
    }

    pub fn grpc_addr(&self) -> &str {
        &self.grpc_addr
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
