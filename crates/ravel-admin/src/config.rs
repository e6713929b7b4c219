//! The admin's configuration: defaults ← TOML file ← `RAVEL_ADMIN_*`
//! environment ← flags (`--http`, `--grpc`, `--backupPath`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// User-facing HTTP API address.
    #[serde(default = "default_http")]
    pub http_addr: String,
    /// gRPC address nodes call.
    #[serde(default = "default_grpc")]
    pub grpc_addr: String,
    /// Where the admin keeps its state (`--backupPath`).
    pub data_dir: PathBuf,
    /// Hash ring: partitions, load factor, points per cluster.
    #[serde(default)]
    pub ring: crate::ring::RingConfig,
    /// Largest key and value (as JSON text) accepted over HTTP; keep them
    /// within the nodes' limits.
    #[serde(default = "default_max_key")]
    pub max_key_bytes: usize,
    #[serde(default = "default_max_value")]
    pub max_value_bytes: usize,
    /// Deadline of one user request, leader discovery and retries included.
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
}

fn default_max_key() -> usize {
    4 << 10
}

fn default_max_value() -> usize {
    1 << 20
}

fn default_timeout() -> u64 {
    5_000
}

fn default_http() -> String {
    "127.0.0.1:8080".into()
}

fn default_grpc() -> String {
    "127.0.0.1:7000".into()
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub http_addr: Option<String>,
    pub grpc_addr: Option<String>,
    pub data_dir: Option<PathBuf>,
}

impl AdminConfig {
    /// A configuration with defaults for everything but the data directory.
    pub fn new(data_dir: PathBuf, grpc_addr: String, http_addr: String) -> Self {
        Self {
            http_addr,
            grpc_addr,
            data_dir,
            ring: crate::ring::RingConfig::default(),
            max_key_bytes: default_max_key(),
            max_value_bytes: default_max_value(),
            request_timeout_ms: default_timeout(),
        }
    }

    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }

    pub fn load(file: Option<&Path>, o: &Overrides) -> Result<Self, ConfigError> {
        let e = |e: config::ConfigError| ConfigError(e.to_string());
        let mut b = config::Config::builder();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {}: no such file",
                    path.display()
                )));
            }
            b = b.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        b = b.add_source(config::Environment::with_prefix("RAVEL_ADMIN").prefix_separator("_"));
        if let Some(v) = &o.http_addr {
            b = b.set_override("http_addr", v.clone()).map_err(e)?;
        }
        if let Some(v) = &o.grpc_addr {
            b = b.set_override("grpc_addr", v.clone()).map_err(e)?;
        }
        if let Some(v) = &o.data_dir {
            b = b
                .set_override("data_dir", v.display().to_string())
                .map_err(e)?;
        }
        let cfg: AdminConfig = b.build().map_err(e)?.try_deserialize().map_err(e)?;
        if cfg.ring.partitions == 0 {
            return Err(ConfigError("field `ring.partitions`: must be > 0".into()));
        }
        if cfg.ring.load.is_nan() || cfg.ring.load < 1.0 {
            return Err(ConfigError("field `ring.load`: must be >= 1.0".into()));
        }
        for (field, addr) in [("http_addr", &cfg.http_addr), ("grpc_addr", &cfg.grpc_addr)] {
            if addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(ConfigError(format!(
                    "field `{field}`: {addr:?} is not HOST:PORT"
                )));
            }
        }
        Ok(cfg)
    }
}
