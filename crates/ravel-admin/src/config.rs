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
