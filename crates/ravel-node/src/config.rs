//! The node's configuration: defaults, then a TOML file, then `RAVEL_*`
//! environment variables, then command-line flags, each overriding the last
//! (the loader is `ravel_runtime::config`, shared with the admin). One
//! validation, and errors that name the field.
//!
//! (Over 400 lines: about a third is the tests of loading and validation,
//! which belong next to the settings they check.)

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ravel_runtime::config::ConfigError;
pub use ravel_runtime::config::RuntimeSettings;
use ravel_runtime::config::{check_addr, check_advertisable, Sources};
use ravel_runtime::logging::LogFormat;
use ravel_runtime::tls::{load_tls_setting, load_token_setting, TlsFiles, TlsPem, Token};
use serde::Deserialize;

/// Everything a replica needs to run.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Data directory: RocksDB, snapshots, identity. (`-s/--storagedir`)
    pub data_dir: PathBuf,
    /// Address the gRPC server binds. (`-g/--grpcaddr` sets it when
    /// `advertise_addr` is not given separately)
    pub listen_addr: String,
    /// Address other nodes and the admin use to reach this node; defaults to
    /// `listen_addr`.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    /// Raft address reported to the admin; Raft shares the gRPC server, so it
    /// defaults to the advertised address. (`-r/--raftaddr`)
    #[serde(default)]
    pub raft_addr: Option<String>,
    /// The cluster admin's gRPC address. (`-a/--adminrpcaddr`)
    pub admin_addr: String,
    /// Found a new cluster on first start instead of joining one. (`-l/--leader`)
    #[serde(default)]
    pub found_cluster: bool,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub snapshot: SnapshotSettings,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub storage: StorageSettings,
    #[serde(default)]
    pub runtime: RuntimeSettings,
    /// `text` or `json` log lines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Outbound connections (Raft, forwarding, the admin) leave from this
    /// local IP; unset, the OS picks. For multi-homed hosts, and for tests
    /// that give every process its own loopback IP.
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    /// Serve Prometheus metrics, `/healthz` and `/readyz` over HTTP on this
    /// address; off unless set.
    #[serde(default)]
    pub metrics_addr: Option<String>,
    /// Mutual TLS on every gRPC connection this node accepts or opens
    /// (Raft, forwarding, the admin); off unless set. The metrics port
    /// stays plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// A file holding the bearer token the admin requires (its
    /// `auth_token_file`); sent on every call to the admin.
    #[serde(default)]
    pub auth_token_file: Option<PathBuf>,
}

/// What a node proves itself with: its TLS identity (on every gRPC
/// connection it opens or accepts) and the admin's token. Loaded once from
/// the config; the default is plain TCP and no token.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub tls: Option<TlsPem>,
    pub admin_token: Option<Token>,
}

impl Credentials {
    /// Channels that dial over mutual TLS when there is a TLS identity.
    pub fn channel_options(&self) -> ravel_transport::ChannelOptions {
        ravel_transport::ChannelOptions {
            tls: self.tls.as_ref().map(ravel_transport::tls::client_config),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Longest a join waits for the new replica to catch up before it is
    /// promoted to voter.
    pub join_timeout_ms: u64,
    /// Most bytes of log entries in one AppendEntries (at least one entry).
    /// openraft 0.9 gives each AppendEntries one heartbeat interval to be
    /// sent, stored and answered: keep this small enough for that.
    pub max_append_bytes: usize,
    /// Serve linearizable reads under a leader lease (`lease.rs`) instead
    /// of confirming leadership with a quorum for every batch of reads.
    pub lease_reads: bool,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            // A dead or cut-off leader is replaced about one election
            // timeout after its last heartbeat (a pre-vote round, then the
            // election; see raft/election.rs): ~0.3-0.6 s. The price: 20
            // heartbeats a second per follower, and a leader whose disk or
            // process stalls for over 250 ms may be deposed.
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            join_timeout_ms: 60_000,
            max_append_bytes: ravel_consensus::DEFAULT_MAX_APPEND_BYTES,
            lease_reads: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSettings {
    /// Build a snapshot after this many log entries since the last one...
    pub logs_since_last: u64,
    /// ...or once this many bytes of entries were appended since then.
    pub log_bytes_since_last: u64,
    /// Entries kept in the log behind the snapshot, so a slightly lagging
    /// follower catches up from the log rather than a snapshot.
    pub keep_logs: u64,
    pub chunk_bytes: usize,
    pub chunk_timeout_ms: u64,
    /// Deadline of a whole snapshot transfer (install included) is this
    /// plus the snapshot's size at `min_transfer_bytes_per_sec`.
    pub transfer_timeout_ms: u64,
    pub min_transfer_bytes_per_sec: u64,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        Self {
            logs_since_last: 10_000,
            log_bytes_since_last: 64 << 20,
            keep_logs: 1_000,
            chunk_bytes: 1 << 20,
            chunk_timeout_ms: 10_000,
            transfer_timeout_ms: 600_000,
            min_transfer_bytes_per_sec: 1 << 20,
        }
    }
}

/// RocksDB's memory: what a replica holds beyond a few MiB of its own
/// (`ravel_storage::MemoryBudget`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// Memtables of all column families together, in MiB.
    pub memtable_mib: usize,
    /// The block cache all column families share (index and filter blocks
    /// included), in MiB.
    pub block_cache_mib: usize,
}

impl Default for StorageSettings {
    fn default() -> Self {
        let d = ravel_consensus::MemoryBudget::default();
        Self {
            memtable_mib: d.memtables >> 20,
            block_cache_mib: d.block_cache >> 20,
        }
    }
}

impl StorageSettings {
    pub fn budget(&self) -> ravel_consensus::MemoryBudget {
        ravel_consensus::MemoryBudget {
            memtables: self.memtable_mib << 20,
            block_cache: self.block_cache_mib << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_key_bytes: usize,
    /// At most 32 MiB. One value is one Raft entry, which must reach a
    /// majority within the election timeout (see `deploy/node.toml`).
    pub max_value_bytes: usize,
    /// Requests served at once by this node's gRPC server.
    pub max_in_flight_requests: usize,
    /// Deadline of one client request, forwarding included.
    pub request_timeout_ms: u64,
    /// Most commands gathered into one Raft entry.
    pub batch_max_commands: usize,
    /// Most key+value bytes gathered into one Raft entry.
    pub batch_max_bytes: usize,
    /// Batches proposed to Raft and not yet answered, at most: more batch
    /// formation overlaps the commit of the previous batches.
    pub max_proposals_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 4 << 10,
            max_value_bytes: 1 << 20,
            max_in_flight_requests: 1024,
            request_timeout_ms: 5_000,
            batch_max_commands: 512,
            // One entry is at most this plus one command; it must
            // replicate within a heartbeat interval (see max_append_bytes).
            batch_max_bytes: 1 << 20,
            max_proposals_in_flight: 1,
        }
    }
}

/// Values given on the command line (the flags of existing deployments);
/// they override file and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub grpc_addr: Option<String>,
    pub raft_addr: Option<String>,
    pub admin_addr: Option<String>,
    pub found_cluster: bool,
}

impl NodeConfig {
    /// Loads defaults ← `file` ← `RAVEL_*` environment ← `overrides`, then
    /// validates. Environment keys use `__` between levels, e.g.
    /// `RAVEL_LIMITS__MAX_VALUE_BYTES=2097152`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_with_env(file, overrides, std::env::vars())
    }

    /// [`NodeConfig::load`] with the given environment instead of the
    /// process's.
    pub fn load_with_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let cfg: NodeConfig = Sources::new(file, "RAVEL", ENV_KEYS)
            .flag(
                "data_dir",
                overrides.data_dir.as_ref().map(|p| p.display().to_string()),
            )
            .flag("listen_addr", overrides.grpc_addr.clone())
            .flag("raft_addr", overrides.raft_addr.clone())
            .flag("admin_addr", overrides.admin_addr.clone())
            .flag("found_cluster", overrides.found_cluster.then_some(true))
            .load_with_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: &str| Err(ConfigError::invalid(field, reason));
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        check_addr("listen_addr", &self.listen_addr)?;
        match &self.advertise_addr {
            Some(a) => check_advertisable("advertise_addr", a)?,
            // Listening on a wildcard needs an address others can dial.
            None => check_advertisable("listen_addr", &self.listen_addr)?,
        }
        if let Some(a) = &self.raft_addr {
            check_advertisable("raft_addr", a)?;
        }
        check_addr("admin_addr", &self.admin_addr)?;
        if let Some(a) = &self.metrics_addr {
            check_addr("metrics_addr", a)?;
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return invalid("raft.heartbeat_interval_ms", "must be > 0");
        }
        if r.election_timeout_min_ms < 3 * r.heartbeat_interval_ms {
            return invalid(
                "raft.election_timeout_min_ms",
                "must be at least 3 x raft.heartbeat_interval_ms, or followers stand for election after a lost heartbeat or two",
            );
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return invalid(
                "raft.election_timeout_max_ms",
                "must be greater than raft.election_timeout_min_ms",
            );
        }
        if self.snapshot.logs_since_last == 0 {
            return invalid("snapshot.logs_since_last", "must be > 0");
        }
        if self.snapshot.log_bytes_since_last == 0 {
            return invalid("snapshot.log_bytes_since_last", "must be > 0");
        }
        if self.snapshot.min_transfer_bytes_per_sec == 0 {
            return invalid("snapshot.min_transfer_bytes_per_sec", "must be > 0");
        }
        if self.snapshot.chunk_bytes == 0 || self.snapshot.chunk_bytes > 16 << 20 {
            return invalid("snapshot.chunk_bytes", "must be between 1 byte and 16 MiB");
        }
        let st = &self.storage;
        if !(4..=65_536).contains(&st.memtable_mib) {
            return invalid(
                "storage.memtable_mib",
                "must be between 4 and 65536 (MiB): a replica's log entries pass through it",
            );
        }
        if !(1..=1_048_576).contains(&st.block_cache_mib) {
            return invalid(
                "storage.block_cache_mib",
                "must be between 1 and 1048576 (MiB)",
            );
        }
        self.runtime.check()?;
        let l = &self.limits;
        if l.max_key_bytes == 0 || l.max_key_bytes > ravel_proto::limits::MAX_KEY_BYTES {
            return invalid("limits.max_key_bytes", "must be between 1 byte and 64 KiB");
        }
        if l.max_value_bytes == 0 || l.max_value_bytes > ravel_proto::limits::MAX_VALUE_BYTES {
            return invalid(
                "limits.max_value_bytes",
                "must be between 1 byte and 32 MiB",
            );
        }
        if l.max_in_flight_requests == 0 {
            return invalid("limits.max_in_flight_requests", "must be > 0");
        }
        if l.request_timeout_ms == 0 {
            return invalid("limits.request_timeout_ms", "must be > 0");
        }
        if l.batch_max_commands == 0 || l.batch_max_bytes == 0 {
            return invalid("limits.batch_max_commands", "batch limits must be > 0");
        }
        if l.max_proposals_in_flight == 0 {
            return invalid("limits.max_proposals_in_flight", "must be > 0");
        }
        // The largest entry (a batch plus the command that crossed the
        // limit: one write, or one of the admin's move batches) must fit
        // in one Raft message.
        let largest_command = (l.max_value_bytes + l.max_key_bytes)
            .max(ravel_proto::limits::MOVE_BATCH_BYTES + ravel_proto::limits::ENVELOPE_BYTES);
        let largest_entry = l.batch_max_bytes + largest_command + (64 << 10);
        if largest_entry > MAX_RAFT_MESSAGE_BYTES {
            return invalid(
                "limits.batch_max_bytes",
                &format!(
                    "batch_max_bytes + max_value_bytes + max_key_bytes must stay under the Raft message limit of {MAX_RAFT_MESSAGE_BYTES} bytes"
                ),
            );
        }
        if self.raft.max_append_bytes == 0
            || self.raft.max_append_bytes > MAX_RAFT_MESSAGE_BYTES / 2
        {
            return invalid(
                "raft.max_append_bytes",
                "must be between 1 byte and half the Raft message limit (32 MiB)",
            );
        }
        Ok(())
    }

    /// Reads the TLS files and the token file, checking each.
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        Ok(Credentials {
            tls: load_tls_setting(self.tls.as_ref())?,
            admin_token: load_token_setting("auth_token_file", self.auth_token_file.as_deref())?,
        })
    }

    /// How this node's outbound gRPC channels connect.
    pub fn channel_options(&self, creds: &Credentials) -> ravel_transport::ChannelOptions {
        ravel_transport::ChannelOptions {
            source_ip: self.source_ip,
            ..creds.channel_options()
        }
    }

    /// The address this node is known by.
    pub fn advertised(&self) -> &str {
        self.advertise_addr.as_deref().unwrap_or(&self.listen_addr)
    }

    pub fn raft_advertised(&self) -> &str {
        self.raft_addr
            .as_deref()
            .unwrap_or_else(|| self.advertised())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.request_timeout_ms)
    }

    /// openraft's configuration from ours.
    pub fn openraft(&self) -> Result<openraft::Config, ConfigError> {
        let c = openraft::Config {
            cluster_name: "ravel".into(),
            heartbeat_interval: self.raft.heartbeat_interval_ms,
            // Ravel runs elections itself, with a pre-vote round
            // (`raft/election.rs`). openraft's election timeout then only
            // sets its leader lease (its `election_timeout_max`), during
            // which voters refuse votes: `election_timeout_min`, the
            // shortest time after which any of our voters stands.
            enable_elect: false,
            election_timeout_min: self.raft.election_timeout_min_ms
                - self.raft.heartbeat_interval_ms,
            election_timeout_max: self.raft.election_timeout_min_ms,
            // Our transport applies its own per-chunk and total deadlines.
            install_snapshot_timeout: self.snapshot.chunk_timeout_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot.logs_since_last),
            max_in_snapshot_log_to_keep: self.snapshot.keep_logs,
            snapshot_max_chunk_size: self.snapshot.chunk_bytes as u64,
            ..Default::default()
        };
        c.validate()
            .map_err(|e| ConfigError::invalid("raft", e.to_string()))
    }
}

/// Largest gRPC message on the Raft service (an AppendEntries with its
/// entries, a snapshot chunk).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 << 20;

/// The settings `RAVEL_*` variables may set. Other `RAVEL_*` variables
/// (test seeds, the CLI's `RAVEL_ADMIN_HTTP`, the admin's settings) are not
/// ours to reject.
const ENV_KEYS: &[&str] = &[
    "data_dir",
    "listen_addr",
    "advertise_addr",
    "raft_addr",
    "admin_addr",
    "found_cluster",
    "log_format",
    "source_ip",
    "metrics_addr",
    "tls",
    "auth_token_file",
    "raft",
    "snapshot",
    "limits",
    "storage",
    "runtime",
];

impl Limits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, body: &str) -> PathBuf {
        let p = dir.path().join("node.toml");
        std::fs::write(&p, body).unwrap();
        p
    }

    const MINIMAL: &str = r#"
data_dir = "/tmp/x"
listen_addr = "127.0.0.1:7001"
admin_addr = "127.0.0.1:7000"
"#;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            &format!("{MINIMAL}\n[limits]\nmax_value_bytes = 1000\n"),
        );
        let cfg = NodeConfig::load(Some(&p), &Overrides::default()).unwrap();
        assert_eq!(cfg.limits.max_value_bytes, 1000);
        assert_eq!(cfg.advertised(), "127.0.0.1:7001");
        assert!(!cfg.found_cluster);
        let o = Overrides {
            grpc_addr: Some("127.0.0.1:9999".into()),
            found_cluster: true,
            ..Default::default()
        };
        let cfg = NodeConfig::load(Some(&p), &o).unwrap();
        assert_eq!(cfg.listen_addr, "127.0.0.1:9999");
        assert!(cfg.found_cluster);
    }

    #[test]
    fn storage_budget_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            &format!("{MINIMAL}\n[storage]\nmemtable_mib = 16\nblock_cache_mib = 8\n"),
        );
        let cfg = NodeConfig::load(Some(&p), &Overrides::default()).unwrap();
        assert_eq!(
            cfg.storage.budget(),
            ravel_consensus::MemoryBudget {
                memtables: 16 << 20,
                block_cache: 8 << 20
            }
        );
        let p = write(&dir, &format!("{MINIMAL}\n[storage]\nmemtable_mib = 0\n"));
        let e = NodeConfig::load(Some(&p), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("storage.memtable_mib"), "{e}");
        let p = write(
            &dir,
            &format!("{MINIMAL}\n[storage]\nblock_cache_mib = 0\n"),
        );
        let e = NodeConfig::load(Some(&p), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("storage.block_cache_mib"), "{e}");
    }

    /// The runtime's worker count: unset by default, read from the file
    /// or the environment, checked, and what the built runtime runs.
    #[test]
    fn runtime_worker_threads_are_read_checked_and_used() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, MINIMAL);
        let cfg = NodeConfig::load_with_env(Some(&p), &Overrides::default(), []).unwrap();
        assert_eq!(cfg.runtime.worker_threads, None);
        let p = write(&dir, &format!("{MINIMAL}\n[runtime]\nworker_threads = 3\n"));
        let cfg = NodeConfig::load_with_env(Some(&p), &Overrides::default(), []).unwrap();
        assert_eq!(cfg.runtime.worker_threads, Some(3));
        let rt = cfg.runtime.build().unwrap();
        assert_eq!(rt.metrics().num_workers(), 3);
        let env = [("RAVEL_RUNTIME__WORKER_THREADS".to_string(), "1".to_string())];
        let cfg = NodeConfig::load_with_env(Some(&p), &Overrides::default(), env).unwrap();
        assert_eq!(cfg.runtime.build().unwrap().metrics().num_workers(), 1);
        let p = write(&dir, &format!("{MINIMAL}\n[runtime]\nworker_threads = 0\n"));
        let e = NodeConfig::load_with_env(Some(&p), &Overrides::default(), []).unwrap_err();
        assert!(e.to_string().contains("runtime.worker_threads"), "{e}");
    }

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            &format!("{MINIMAL}\n[snapshot]\nchunk_timeout_ms = 1\n"),
        );
        let env = [
            ("RAVEL_SNAPSHOT__CHUNK_TIMEOUT_MS", "4321"),
            ("RAVEL_ADMIN_ADDR", "127.0.0.1:7777"),
            ("RAVEL_CRASH_SEED", "not a node setting"),
            // The CLI's variable in the same environment.
            ("RAVEL_ADMIN_HTTP", "127.0.0.1:8080"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let o = Overrides {
            admin_addr: Some("127.0.0.1:8888".into()),
            ..Default::default()
        };
        let cfg = NodeConfig::load_with_env(Some(&p), &o, env.clone()).unwrap();
        assert_eq!(cfg.snapshot.chunk_timeout_ms, 4321);
        assert_eq!(cfg.admin_addr, "127.0.0.1:8888");
        let cfg = NodeConfig::load_with_env(Some(&p), &Overrides::default(), env).unwrap();
        assert_eq!(cfg.admin_addr, "127.0.0.1:7777");
    }

    #[test]
    fn deploy_examples_load() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        for f in ["node.toml", "node-replica.toml"] {
            NodeConfig::load(Some(&deploy.join(f)), &Overrides::default())
                .unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn flags_alone_suffice() {
        let o = Overrides {
            data_dir: Some("/tmp/d".into()),
            grpc_addr: Some("127.0.0.1:1".into()),
            admin_addr: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let cfg = NodeConfig::load(None, &o).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(cfg.raft, RaftSettings::default());
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (format!("{MINIMAL}\n[raft]\nheartbeat_interval_ms = 500\nelection_timeout_min_ms = 400\n"), "raft.election_timeout_min_ms"),
            (MINIMAL.replace("127.0.0.1:7000", "nowhere"), "admin_addr"),
            (format!("{MINIMAL}\n[limits]\nmax_value_bytes = 0\n"), "limits.max_value_bytes"),
            (format!("{MINIMAL}\nbogus = 1\n"), "bogus"),
            (format!("{MINIMAL}\n[snapshot]\nlog_bytes_since_last = 0\n"), "snapshot.log_bytes_since_last"),
            (format!("{MINIMAL}\n[limits]\nmax_key_bytes = \"big\"\n"), "max_key_bytes"),
            (MINIMAL.replace("listen_addr = \"127.0.0.1:7001\"", ""), "listen_addr"),
            (MINIMAL.replace("127.0.0.1:7001", "0.0.0.0:7001"), "advertise_addr"),
        ];
        for (body, field) in cases {
            let p = write(&dir, &body);
            let err = NodeConfig::load(Some(&p), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
        let err =
            NodeConfig::load(Some(Path::new("/no/such.toml")), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("/no/such.toml"), "{err}");
    }
}
