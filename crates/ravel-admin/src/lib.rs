//! # ravel-admin
//!
//! The cluster admin:
//!
//! - [`registry`]: clusters, replicas, leaders, ring and relocation state,
//!   persisted before anything is acknowledged;
//! - [`service`]: the `RavelClusterAdmin` gRPC service nodes call;
//! - [`ring`]: consistent hashing with bounded loads;
//! - [`router`]: key → cluster → leader, with leader discovery;
//! - [`kv`]: user operations that stay correct while keys move;
//! - [`relocation`]: planning ring changes and moving keys;
//! - [`http`]: the user-facing HTTP API.

pub mod config;
pub mod http;
pub mod http_client;
pub mod kv;
pub mod registry;
pub mod relocation;
pub mod ring;
pub mod router;
pub mod service;

use std::sync::Arc;

use ravel_proto::admin::ravel_cluster_admin_server::RavelClusterAdminServer;
use ravel_transport::ChannelPool;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, RwLock};
use tokio::task::JoinHandle;

pub use config::AdminConfig;
use registry::{Registry, RegistryError};
use router::Router;
use service::AdminService;

/// What the admin's services and tasks share.
pub struct Shared {
    pub registry: Arc<Registry>,
    pub router: Arc<Router>,
    /// Routing gate: requests read, ring changes write.
    pub gate: Arc<RwLock<()>>,
    /// Wakes the mover.
    pub wake: Arc<Notify>,
}

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
    http_addr: String,
    registry: Arc<Registry>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    mover: JoinHandle<()>,
}

impl Admin {
    /// Opens the registry under `cfg.data_dir`, serves gRPC (on
    /// `grpc_listener` if given, else on `cfg.grpc_addr`) and HTTP, and
    /// resumes any relocation in progress.
    pub async fn start(
        cfg: &AdminConfig,
        grpc_listener: Option<TcpListener>,
    ) -> Result<Admin, AdminError> {
        let registry = Arc::new(Registry::open(&cfg.data_dir)?);
        let router = Arc::new(Router::new(
            registry.clone(),
            ChannelPool::default(),
            cfg.ring,
        ));
        let shared = Arc::new(Shared {
            registry: registry.clone(),
            router: router.clone(),
            gate: Arc::new(RwLock::new(())),
            wake: Arc::new(Notify::new()),
        });
        let http_listener =
            TcpListener::bind(&cfg.http_addr)
                .await
                .map_err(|source| AdminError::Bind {
                    addr: cfg.http_addr.clone(),
                    source,
                })?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| AdminError::Bind {
                addr: cfg.http_addr.clone(),
                source,
            })?
            .to_string();
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
        let mut http_rx = rx.clone();
        let service = AdminService::new(shared.clone());
        let server = tonic::transport::Server::builder()
            .timeout(std::time::Duration::from_secs(30))
            .add_service(RavelClusterAdminServer::new(service));
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(async move {
            let stop = async move {
                // Also ends if the sender is gone.
                let _ = rx.wait_for(|stop| *stop).await;
            };
            if let Err(e) = server.serve_with_incoming_shutdown(incoming, stop).await {
                tracing::error!(error = %e, "admin gRPC server failed");
            }
        });
        let http_state = Arc::new(http::HttpState {
            kv: kv::Kv::new(router.clone(), shared.gate.clone(), cfg.request_timeout()),
            pool: router.pool().clone(),
            registry: registry.clone(),
            ring: cfg.ring,
            limits: http::HttpLimits {
                max_key_bytes: cfg.max_key_bytes,
                max_value_bytes: cfg.max_value_bytes,
            },
        });
        let app = http::router(http_state);
        let http_task = tokio::spawn(async move {
            let stop = async move {
                // Also ends if the sender is gone.
                let _ = http_rx.wait_for(|stop| *stop).await;
            };
            // Small JSON answers must not wait on delayed ACKs.
            let http_listener = axum::serve::ListenerExt::tap_io(http_listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(e) = axum::serve(http_listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "admin HTTP server failed");
            }
        });
        let mover = tokio::spawn(relocation::run_mover(
            registry.clone(),
            router,
            shared.gate.clone(),
            shared.wake.clone(),
        ));
        tracing::info!(grpc = %grpc_addr, http = %http_addr, data = %cfg.data_dir.display(), "admin serving");
        Ok(Admin {
            grpc_addr,
            http_addr,
            registry,
            shutdown,
            tasks: vec![task, http_task],
            mover,
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

    /// Stops serving. The mover is aborted wherever it is: every step of a
    /// relocation is persisted and idempotent, so the next start resumes it.
    pub async fn shutdown(self) {
        self.mover.abort();
        let _ = self.mover.await;
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
