//! One lazily-connected gRPC channel per peer address, shared by every client
//! of this process.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::TransportError;

/// Connection settings of the pool.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    /// How long to wait for a TCP connection before failing a call.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive pings notice a vanished peer on an idle connection.
    pub keep_alive_interval: Duration,
    pub keep_alive_timeout: Duration,
    /// Outbound connections leave from this local IP (multi-homed hosts;
    /// tests give each process its own loopback IP). `None`: the OS picks.
    pub source_ip: Option<IpAddr>,
    /// Mutual TLS to every peer (see [`crate::tls`]); `None`: plain TCP.
    pub tls: Option<ClientTlsConfig>,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(500),
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(5),
            source_ip: None,
            tls: None,
        }
    }
}

/// Cheap to clone; clones share the channels.
#[derive(Debug, Clone, Default)]
pub struct ChannelPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    options: ChannelOptions,
}

impl ChannelPool {
    pub fn new(options: ChannelOptions) -> Self {
        Self {
            channels: Arc::default(),
            options,
        }
    }

    /// The channel to `addr` (`host:port`, or a URI with a scheme; a
    /// `host:port` is dialled over TLS when the pool has TLS settings).
    /// Nothing connects until the first call; a broken connection is
    /// re-established by the channel itself on the next call.
    pub fn channel(&self, addr: &str) -> Result<Channel, TransportError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let invalid = |e: tonic::transport::Error| TransportError::InvalidAddress {
            addr: addr.to_string(),
            reason: e.to_string(),
        };
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("{scheme}://{addr}")
        };
        let mut endpoint = Endpoint::from_shared(uri).map_err(invalid)?;
        if let Some(tls) = &self.options.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(invalid)?;
        }
        let channel = endpoint
            .connect_timeout(self.options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.options.keep_alive_interval)
            .keep_alive_timeout(self.options.keep_alive_timeout)
            .keep_alive_while_idle(true)
            .local_address(self.options.source_ip)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
