//! What the admin's gRPC service, HTTP API and mover share: one
//! [`AdminState`], built once by `Admin::start` and passed as one `Arc`.

use std::sync::Arc;
use std::time::Duration;

use ravel_runtime::tls::Token;
use ravel_transport::session::ClientSession;
use ravel_transport::{ChannelOptions, ChannelPool};
use tokio::sync::{Notify, RwLock};
use tonic::transport::ClientTlsConfig;

use crate::config::AdminConfig;
use crate::registry::Registry;
use crate::router::Router;

/// Size limits the admin enforces before a request reaches a node.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Deadline of one user request, leader discovery and retries included.
    pub request_timeout: Duration,
    /// Most bytes per second a relocation moves (0: unpaced).
    pub relocation_bytes_per_s: u64,
}

pub struct AdminState {
    /// Clusters, replicas, leaders, ring and relocation progress; every
    /// change persisted before it is acknowledged. Shared with the router,
    /// which routes from its snapshots.
    pub registry: Arc<Registry>,
    /// Key → cluster → leader; owns the hash ring and the channel pool.
    pub router: Router,
    /// The routing gate: every user request holds it for reading while it
    /// is routed and served; a ring change takes it for writing, so no
    /// request routed by the old ring is still in flight once the change
    /// is visible.
    pub gate: RwLock<()>,
    /// Wakes the mover (a cluster became ready or asked to drain).
    pub wake: Notify,
    /// The admin's client session: every write to a node (users' and the
    /// mover's) carries an id of it, the same on every retry, so a retry of
    /// a write whose answer was lost takes effect once.
    pub session: ClientSession,
    pub limits: Limits,
    /// Test hold points of the mover (none armed in production).
    pub holds: crate::holds::Holds,
    /// Served at `/metrics` on the HTTP port.
    pub metrics: Arc<crate::metrics::AdminMetrics>,
    /// The bearer token the HTTP API and the gRPC service require; `None`:
    /// no token asked for.
    pub token: Option<Token>,
}

impl AdminState {
    /// `tls`: how calls to nodes dial (mutual TLS), `None` for plain TCP.
    pub fn new(
        registry: Registry,
        cfg: &AdminConfig,
        tls: Option<ClientTlsConfig>,
        token: Option<Token>,
    ) -> Self {
        let registry = Arc::new(registry);
        let router_metrics = Arc::new(crate::metrics::AdminMetrics::new());
        Self {
            router: Router::new(
                registry.clone(),
                ChannelPool::new(ChannelOptions {
                    source_ip: cfg.source_ip,
                    tls,
                    ..Default::default()
                }),
                cfg.ring,
                router_metrics.clone(),
            ),
            registry,
            gate: RwLock::new(()),
            wake: Notify::new(),
            session: ClientSession::new(),
            limits: Limits {
                max_key_bytes: cfg.max_key_bytes,
                max_value_bytes: cfg.max_value_bytes,
                request_timeout: cfg.request_timeout(),
                relocation_bytes_per_s: cfg.relocation_mib_per_s.saturating_mul(1 << 20),
            },
            holds: Default::default(),
            metrics: router_metrics,
            token,
        }
    }
}
