//! The admin's configuration: defaults ← TOML file ← `RAVEL_ADMIN_*`
//! environment (allow-listed: the CLI's `RAVEL_ADMIN_HTTP` or a node's
//! `RAVEL_ADMIN_ADDR` in the same environment are not admin settings) ←
//! flags (`--http`, `--grpc`, `--backupPath`). The loader is
//! `ravel_runtime::config`, shared with the node.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ravel_runtime::config::ConfigError;
use ravel_runtime::config::{check_addr, RuntimeSettings, Sources};
use ravel_runtime::logging::LogFormat;
use ravel_runtime::tls::TlsFiles;
use serde::Deserialize;

use crate::ring::HashRing;

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
    pub ring: HashRing,
    /// Largest key and value (as JSON text) accepted over HTTP; keep them
    /// within the nodes' limits.
    #[serde(default = "default_max_key")]
    pub max_key_bytes: usize,
    #[serde(default = "default_max_value")]
    pub max_value_bytes: usize,
    /// Deadline of one user request, leader discovery and retries included.
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
    /// `text` or `json` log lines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Outbound connections to nodes leave from this local IP; unset, the
    /// OS picks.
    #[serde(default)]
    pub source_ip: Option<std::net::IpAddr>,
    /// TLS: the HTTP API over HTTPS, and mutual TLS on the gRPC service
    /// and on every call to nodes. Off unless set.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// A file holding the bearer token every HTTP API request (but
    /// `/healthz`, `/readyz`, `/metrics`) and every admin gRPC call must
    /// carry; no token is asked for unless set.
    #[serde(default)]
    pub auth_token_file: Option<PathBuf>,
    /// Most MiB per second of keys and values a relocation moves (0: as
    /// fast as the clusters take them). Moving competes with user requests
    /// for the nodes' CPU and disk; this caps what it takes.
    #[serde(default)]
    pub relocation_mib_per_s: u64,
    #[serde(default)]
    pub runtime: RuntimeSettings,
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

/// The settings `RAVEL_ADMIN_*` variables may set.
const ENV_KEYS: &[&str] = &[
    "http_addr",
    "grpc_addr",
    "data_dir",
    "ring",
    "max_key_bytes",
    "max_value_bytes",
    "request_timeout_ms",
    "log_format",
    "source_ip",
    "tls",
    "auth_token_file",
    "relocation_mib_per_s",
    "runtime",
];

/// Values given on the command line (the flags of existing deployments).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub http_addr: Option<String>,
    pub grpc_addr: Option<String>,
    pub data_dir: Option<PathBuf>,
}

impl AdminConfig {
    /// A configuration with defaults for everything but the addresses and
    /// the data directory.
    pub fn new(data_dir: PathBuf, grpc_addr: String, http_addr: String) -> Self {
        Self {
            http_addr,
            grpc_addr,
            data_dir,
            ring: HashRing::default(),
            max_key_bytes: default_max_key(),
            max_value_bytes: default_max_value(),
            request_timeout_ms: default_timeout(),
            log_format: LogFormat::default(),
            source_ip: None,
            tls: None,
            auth_token_file: None,
            relocation_mib_per_s: 0,
            runtime: RuntimeSettings::default(),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn load(file: Option<&Path>, o: &Overrides) -> Result<Self, ConfigError> {
        Self::load_with_env(file, o, std::env::vars())
    }

    /// [`AdminConfig::load`] with the given environment instead of the
    /// process's.
    pub fn load_with_env(
        file: Option<&Path>,
        o: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let cfg: AdminConfig = Sources::new(file, "RAVEL_ADMIN", ENV_KEYS)
            .flag("http_addr", o.http_addr.clone())
            .flag("grpc_addr", o.grpc_addr.clone())
            .flag(
                "data_dir",
                o.data_dir.as_ref().map(|p| p.display().to_string()),
            )
            .load_with_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data_dir", "must not be empty"));
        }
        if self.ring.partitions == 0 {
            return Err(ConfigError::invalid("ring.partitions", "must be > 0"));
        }
        if self.ring.load.is_nan() || self.ring.load < 1.0 {
            return Err(ConfigError::invalid("ring.load", "must be >= 1.0"));
        }
        if self.ring.vnodes == 0 {
            return Err(ConfigError::invalid("ring.vnodes", "must be > 0"));
        }
        check_addr("http_addr", &self.http_addr)?;
        check_addr("grpc_addr", &self.grpc_addr)?;
        self.runtime.check()?;
        if self.max_key_bytes == 0 || self.max_value_bytes == 0 {
            return Err(ConfigError::invalid(
                "max_value_bytes",
                "key and value limits must be > 0",
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError::invalid("request_timeout_ms", "must be > 0"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn other_programs_variables_do_not_stop_the_admin() {
        let o = Overrides {
            data_dir: Some("/tmp/a".into()),
            ..Default::default()
        };
        let cfg = AdminConfig::load_with_env(
            None,
            &o,
            env(&[
                // The CLI's and the node's variables, in the same shell.
                ("RAVEL_ADMIN_HTTP", "127.0.0.1:1"),
                ("RAVEL_ADMIN_ADDR", "127.0.0.1:2"),
                ("RAVEL_ADMIN_REQUEST_TIMEOUT_MS", "750"),
                ("RAVEL_ADMIN_RING__LOAD", "1.5"),
                ("RAVEL_ADMIN_RELOCATION_MIB_PER_S", "16"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.request_timeout_ms, 750);
        assert_eq!(cfg.relocation_mib_per_s, 16);
        assert_eq!(cfg.ring.load, 1.5);
        assert_eq!(cfg.http_addr, default_http());
    }

    #[test]
    fn deploy_example_loads_and_errors_name_the_field() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/admin.toml");
        AdminConfig::load_with_env(Some(&deploy), &Overrides::default(), env(&[])).unwrap();
        let o = Overrides {
            data_dir: Some("/tmp/a".into()),
            ..Default::default()
        };
        let err = AdminConfig::load_with_env(None, &o, env(&[("RAVEL_ADMIN_RING__LOAD", "0.5")]))
            .unwrap_err();
        assert!(err.to_string().contains("ring.load"), "{err}");
        let err = AdminConfig::load_with_env(None, &Overrides::default(), env(&[])).unwrap_err();
        assert!(err.to_string().contains("data_dir"), "{err}");
        let cfg = AdminConfig::load_with_env(
            None,
            &o,
            env(&[("RAVEL_ADMIN_RUNTIME__WORKER_THREADS", "2")]),
        )
        .unwrap();
        assert_eq!(cfg.runtime.worker_threads, Some(2));
        let err = AdminConfig::load_with_env(
            None,
            &o,
            env(&[("RAVEL_ADMIN_RUNTIME__WORKER_THREADS", "0")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("runtime.worker_threads"), "{err}");
    }
}
