//! The one configuration loader of Ravel processes.
//!
//! Layers, each overriding the one before: the struct's serde defaults, a
//! TOML file, `PREFIX_*` environment variables (only the settings the
//! process allow-lists, so variables meant for other programs, such as the
//! CLI's `RAVEL_ADMIN_HTTP` or a test's `RAVEL_TEST_SEED`, never stop a
//! process from starting), then command-line flags. Nested keys use `__` in
//! the environment: `RAVEL_LIMITS__MAX_VALUE_BYTES=2097152` sets
//! `limits.max_value_bytes`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration that cannot be used, with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("configuration: {0}")]
    Parse(String),
    #[error("configuration field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Where one process's settings come from.
#[derive(Debug, Clone)]
pub struct Sources<'a> {
    /// The TOML file given with `--config`.
    pub file: Option<&'a Path>,
    /// Environment prefix without the trailing underscore, e.g. `RAVEL`.
    pub env_prefix: &'a str,
    /// What the environment may set: a top-level key (`data_dir`), or a
    /// section name (`limits`) for every key under `[limits]`.
    pub env_keys: &'a [&'a str],
    /// Values from command-line flags, by key; they win over everything.
    pub flags: Vec<(&'a str, config::Value)>,
}

impl<'a> Sources<'a> {
    pub fn new(file: Option<&'a Path>, env_prefix: &'a str, env_keys: &'a [&'a str]) -> Self {
        Self {
            file,
            env_prefix,
            env_keys,
            flags: Vec::new(),
        }
    }

    /// Adds a flag's value when it was given.
    pub fn flag(mut self, key: &'a str, value: Option<impl Into<config::Value>>) -> Self {
        if let Some(v) = value {
            self.flags.push((key, v.into()));
        }
        self
    }

    /// Loads `T` with the process environment.
    pub fn load<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        self.load_with_env(std::env::vars())
    }

    /// Loads `T` with the given environment (tests pass their own instead
    /// of changing the process's, which other tests share).
    pub fn load_with_env<T: DeserializeOwned>(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<T, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(path) = self.file {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    reason: "no such file".into(),
                });
            }
            b = b.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        b = b.add_source(
            config::Environment::with_prefix(self.env_prefix)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(self.allowed_env(env))),
        );
        for (key, value) in &self.flags {
            b = b
                .set_override(*key, value.clone())
                .map_err(|e| ConfigError::Parse(e.to_string()))?;
        }
        let raw = b.build().map_err(|err| match self.file {
            Some(path) => ConfigError::File {
                path: path.to_path_buf(),
                reason: err.to_string(),
            },
            None => ConfigError::Parse(err.to_string()),
        })?;
        raw.try_deserialize()
            .map_err(|err| ConfigError::Parse(err.to_string()))
    }

    /// The `PREFIX_*` variables that name one of our settings.
    fn allowed_env(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> HashMap<String, String> {
        let prefix = format!("{}_", self.env_prefix);
        env.into_iter()
            .filter(|(k, _)| {
                k.strip_prefix(&prefix).is_some_and(|rest| {
                    let rest = rest.to_ascii_lowercase();
                    self.env_keys.iter().any(|allowed| {
                        rest == *allowed
                            || rest
                                .strip_prefix(allowed)
                                .is_some_and(|tail| tail.starts_with("__"))
                    })
                })
            })
            .collect()
    }
}

/// A process's async runtime (tokio's, multi-threaded): the `[runtime]`
/// section of the node's and the admin's files.
#[derive(Debug, Clone, Default, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Worker threads; unset: one per core, or what tokio's
    /// `TOKIO_WORKER_THREADS` says. Processes that share a small host
    /// (a test or benchmark machine) spend less CPU per request with fewer
    /// (docs/operations.md).
    pub worker_threads: Option<usize>,
}

impl RuntimeSettings {
    /// Checks the settings (`runtime.worker_threads`: 1 to 1024).
    pub fn check(&self) -> Result<(), ConfigError> {
        match self.worker_threads {
            Some(n) if !(1..=1024).contains(&n) => Err(ConfigError::invalid(
                "runtime.worker_threads",
                "must be between 1 and 1024",
            )),
            _ => Ok(()),
        }
    }

    /// The runtime these settings describe.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.enable_all();
        if let Some(n) = self.worker_threads {
            b.worker_threads(n);
        }
        b.build()
    }
}

/// Checks that `addr` is `HOST:PORT` (an IP or a name).
pub fn check_addr(field: &str, addr: &str) -> Result<(), ConfigError> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(ConfigError::invalid(
            field,
            format!("{addr:?} is not HOST:PORT"),
        )),
    }
}

/// Checks that other processes can reach `addr`: `HOST:PORT` whose host is
/// not a wildcard such as `0.0.0.0`.
pub fn check_advertisable(field: &str, addr: &str) -> Result<(), ConfigError> {
    check_addr(field, addr)?;
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        if sa.ip().is_unspecified() {
            return Err(ConfigError::invalid(
                field,
                format!(
                    "{addr:?} is a wildcard address other processes cannot connect to; \
                     advertise the host's name or IP (set advertise_addr)"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        name: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        size: u64,
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_override_in_order_and_foreign_variables_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.toml");
        std::fs::write(&file, "name = \"file\"\nport = 1\n[inner]\nsize = 5\n").unwrap();
        let keys = ["name", "port", "inner"];
        let src = Sources::new(Some(&file), "RAVEL_T", &keys);
        let cfg: Cfg = src
            .load_with_env(env(&[
                ("RAVEL_T_PORT", "2"),
                ("RAVEL_T_INNER__SIZE", "7"),
                // Not ours: another program's variable, and one that only
                // shares a prefix with an allowed key.
                ("RAVEL_T_HTTP", "x"),
                ("RAVEL_T_PORTS", "9"),
                ("RAVEL_SEED", "1"),
            ]))
            .unwrap();
        assert_eq!(
            cfg,
            Cfg {
                name: "file".into(),
                port: 2,
                inner: Inner { size: 7 }
            }
        );
        let cfg: Cfg = src
            .clone()
            .flag("port", Some(3))
            .flag("name", None::<String>)
            .load_with_env(env(&[("RAVEL_T_PORT", "2")]))
            .unwrap();
        assert_eq!((cfg.name.as_str(), cfg.port), ("file", 3));
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.toml");
        std::fs::write(&file, "name = \"a\"\nbogus = 1\n").unwrap();
        let err = Sources::new(Some(&file), "RAVEL_T", &[])
            .load_with_env::<Cfg>(env(&[]))
            .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Sources::new(Some(&dir.path().join("none.toml")), "RAVEL_T", &[])
            .load_with_env::<Cfg>(env(&[]))
            .unwrap_err();
        assert!(err.to_string().contains("none.toml"), "{err}");
        let err = Sources::new(None, "RAVEL_T", &["name", "port"])
            .load_with_env::<Cfg>(env(&[("RAVEL_T_NAME", "n"), ("RAVEL_T_PORT", "x")]))
            .unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn addresses() {
        check_addr("a", "127.0.0.1:1").unwrap();
        check_addr("a", "node-1.example:7000").unwrap();
        assert!(check_addr("a", "nowhere").is_err());
        assert!(check_addr("a", ":80").is_err());
        check_advertisable("a", "10.0.0.1:7000").unwrap();
        let err = check_advertisable("advertise_addr", "0.0.0.0:7000").unwrap_err();
        assert!(err.to_string().contains("advertise_addr"), "{err}");
        assert!(check_advertisable("a", "[::]:7000").is_err());
    }
}
