//! Clients that record what they observe: each runs a closed loop of random
//! operations on a few shared keys, through a node's gRPC `Run` (any
//! replica; followers forward), the node's conditional writes (on the
//! replica believed to lead) or the admin's HTTP API, and records every
//! operation in a [`History`].
//!
//! Values are unique per write (`"c<client>-<n>"`, as JSON text, so node
//! and HTTP clients share one encoding), so every read is attributable to
//! one write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ravel_proto::ext::ravel_node_ext_client::RavelNodeExtClient;
use ravel_proto::ext::KeyValue;
use ravel_proto::node::Command;
use ravel_proto::{metadata, ops};
use serde_json::json;
use tonic::Code;

use crate::history::{History, Op, Outcome, Output};
use crate::process::{channel, node_client};

/// Where clients send requests; the node list may change (membership).
#[derive(Debug, Clone)]
pub struct Targets {
    /// Node gRPC addresses.
    pub nodes: Arc<RwLock<Vec<String>>>,
    /// The admin's HTTP address, if HTTP clients should run.
    pub http: Option<String>,
    /// The node believed to lead (from `x-ravel-leader`), for the
    /// leader-only conditional writes.
    pub leader: Arc<RwLock<Option<String>>>,
}

/// The workload's shape.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub clients: usize,
    pub keys: Vec<String>,
    /// Per-request deadline on the client side.
    pub timeout: Duration,
    /// Share of requests sent to the admin's HTTP API (when there is one).
    pub http_share: f64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            clients: 8,
            keys: (0..5).map(|k| format!("key-{k}")).collect(),
            timeout: Duration::from_secs(3),
            http_share: 0.3,
        }
    }
}

/// Running clients; stop them with [`Workload::stop`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    pub fn start(cfg: &WorkloadConfig, seed: u64, targets: Targets, history: Arc<History>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..cfg.clients)
            .map(|c| {
                let client = Client {
                    id: c,
                    rng: StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(c as u64)),
                    keys: cfg.keys.clone(),
                    timeout: cfg.timeout,
                    http_share: cfg.http_share,
                    targets: targets.clone(),
                    history: history.clone(),
                    next: 0,
                    seen: Vec::new(),
                };
                tokio::spawn(client.run(stop.clone()))
            })
            .collect();
        Workload { stop, tasks }
    }

    /// Stops the clients and waits for their last operations.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Client {
    id: usize,
    rng: StdRng,
    keys: Vec<String>,
    timeout: Duration,
    http_share: f64,
    targets: Targets,
    history: Arc<History>,
    next: u64,
    /// Values recently written or read, for conditional deletes.
    seen: Vec<Vec<u8>>,
}

/// A unique value, as JSON text.
fn value(client: usize, n: u64) -> Vec<u8> {
    serde_json::to_vec(&format!("c{client}-{n}")).expect("json")
}

static HTTP_CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();

fn http_client() -> &'static reqwest::Client {
    HTTP_CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .expect("http client")
    })
}

/// Requests the workload made, in all (for rates).
pub static REQUESTS: AtomicU64 = AtomicU64::new(0);

impl Client {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            self.one().await;
        }
    }

    fn pick_node(&mut self) -> Option<String> {
        let nodes = self.targets.nodes.read().unwrap_or_else(|p| p.into_inner());
        if nodes.is_empty() {
            return None;
        }
        Some(nodes[self.rng.random_range(0..nodes.len())].clone())
    }

    async fn one(&mut self) {
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        let key = self.keys[self.rng.random_range(0..self.keys.len())].clone();
        let use_http = self.targets.http.is_some() && self.rng.random_bool(self.http_share);
        let roll: f64 = self.rng.random();
        self.next += 1;
        let v = value(self.id, self.next);
        let op = if use_http {
            match roll {
                r if r < 0.45 => Op::Set(v),
                r if r < 0.9 => Op::Get,
                _ => Op::Delete,
            }
        } else {
            match roll {
                r if r < 0.35 => Op::Set(v),
                r if r < 0.70 => Op::Get,
                r if r < 0.76 => Op::Delete,
                r if r < 0.81 => Op::GetAndDelete,
                r if r < 0.91 => Op::SetIfAbsent(v),
                _ => match self.seen.last() {
                    Some(old) => Op::DeleteIfEqual(old.clone()),
                    None => Op::Get,
                },
            }
        };
        let pending = self.history.invoke(self.id, &key, op.clone());
        let (outcome, via) = if use_http {
            let via = self.targets.http.clone().unwrap_or_default();
            (self.http(&key, &op).await, via)
        } else {
            self.grpc(&key, &op).await
        };
        self.history.sent_to(&pending, &via);
        if let Outcome::Ok(Output::Value(Some(v))) = &outcome {
            self.remember(v.clone());
        }
        if let (Op::Set(v) | Op::SetIfAbsent(v), Outcome::Ok(_)) = (&op, &outcome) {
            self.remember(v.clone());
        }
        self.history.complete(pending, outcome);
    }

    fn remember(&mut self, v: Vec<u8>) {
        self.seen.push(v);
        if self.seen.len() > 8 {
            self.seen.remove(0);
        }
    }

    /// The outcome, and where the request went.
    async fn grpc(&mut self, key: &str, op: &Op) -> (Outcome, String) {
        let (operation, value) = match op {
            Op::Set(v) => (ops::SET, v.clone()),
            Op::Get => (ops::GET, Vec::new()),
            Op::Delete => (ops::DELETE, Vec::new()),
            Op::GetAndDelete => (ops::GET_AND_DELETE, Vec::new()),
            Op::SetIfAbsent(v) | Op::DeleteIfEqual(v) => return self.conditional(key, op, v).await,
        };
        let Some(addr) = self.pick_node() else {
            return (Outcome::Fail, String::new());
        };
        let outcome = self.run_at(&addr, key, op, operation, value).await;
        (outcome, addr)
    }

    async fn run_at(
        &mut self,
        addr: &str,
        key: &str,
        op: &Op,
        operation: &str,
        value: Vec<u8>,
    ) -> Outcome {
        let mut req = tonic::Request::new(Command {
            operation: operation.into(),
            key: key.as_bytes().to_vec(),
            value,
        });
        req.set_timeout(self.timeout);
        let mut client = node_client(addr);
        match tokio::time::timeout(self.timeout, client.run(req)).await {
            Err(_) => Outcome::Unknown,
            Ok(Ok(resp)) => {
                self.note_leader(resp.metadata());
                let data = resp.into_inner().data;
                match op {
                    Op::Get | Op::GetAndDelete => Outcome::Ok(Output::Value(Some(data))),
                    _ => Outcome::Ok(Output::Done),
                }
            }
            Ok(Err(s)) => {
                self.note_leader(s.metadata());
                match s.code() {
                    Code::NotFound => Outcome::Ok(Output::Value(None)),
                    Code::InvalidArgument => Outcome::Fail,
                    _ => Outcome::Unknown,
                }
            }
        }
    }

    fn note_leader(&self, md: &tonic::metadata::MetadataMap) {
        if let Some(l) = md.get(metadata::LEADER).and_then(|v| v.to_str().ok()) {
            *self
                .targets
                .leader
                .write()
                .unwrap_or_else(|p| p.into_inner()) = Some(l.to_string());
        }
    }

    async fn conditional(&mut self, key: &str, op: &Op, v: &[u8]) -> (Outcome, String) {
        let leader = self
            .targets
            .leader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(addr) = leader.or_else(|| self.pick_node()) else {
            return (Outcome::Fail, String::new());
        };
        let outcome = self.conditional_at(&addr, key, op, v).await;
        (outcome, addr)
    }

    async fn conditional_at(&mut self, addr: &str, key: &str, op: &Op, v: &[u8]) -> Outcome {
        let mut req = tonic::Request::new(KeyValue {
            key: key.as_bytes().to_vec(),
            value: v.to_vec(),
        });
        req.set_timeout(self.timeout);
        let mut c = RavelNodeExtClient::new(channel(addr));
        let call = async {
            if matches!(op, Op::SetIfAbsent(_)) {
                c.set_if_absent(req).await
            } else {
                c.delete_if_equal(req).await
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Outcome::Unknown,
            Ok(Ok(r)) => Outcome::Ok(Output::Applied(r.into_inner().applied)),
            Ok(Err(s)) => {
                self.note_leader(s.metadata());
                match s.code() {
                    Code::InvalidArgument => Outcome::Fail,
                    _ => Outcome::Unknown,
                }
            }
        }
    }

    async fn http(&mut self, key: &str, op: &Op) -> Outcome {
        let Some(base) = self.targets.http.clone() else {
            return Outcome::Fail;
        };
        http_call(&base, key, op, self.timeout).await
    }
}

/// One operation through the admin's HTTP API at `base`.
async fn http_call(base: &str, key: &str, op: &Op, timeout: Duration) -> Outcome {
    let (path, body) = match op {
        Op::Set(v) => {
            let val: serde_json::Value = serde_json::from_slice(v).expect("json value");
            ("/put", json!({"key": key, "val": val}))
        }
        Op::Get => ("/get", json!({"key": key})),
        Op::Delete => ("/delete", json!({"key": key})),
        _ => return Outcome::Fail,
    };
    let call = http_client()
        .post(format!("http://{base}{path}"))
        .timeout(timeout)
        .json(&body)
        .send();
    let resp = match call.await {
        // Nothing was sent (the admin is down): no effect. Pause a little
        // rather than spin on a closed port.
        Err(e) if e.is_connect() => {
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Outcome::Fail;
        }
        Err(_) => return Outcome::Unknown,
        Ok(r) => r,
    };
    let status = resp.status().as_u16();
    let body: serde_json::Value = match resp.json().await {
        Ok(b) => b,
        Err(_) => return Outcome::Unknown,
    };
    match (status, op) {
        (200, Op::Get) => Outcome::Ok(Output::Value(Some(
            serde_json::to_vec(&body["val"]).expect("json"),
        ))),
        (200, _) => Outcome::Ok(Output::Done),
        (404, Op::Get) => Outcome::Ok(Output::Value(None)),
        (400 | 413, _) => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

/// Where final reads go.
#[derive(Debug, Clone, Copy)]
pub enum ReadVia<'a> {
    /// A node's gRPC `Run` (the leader: a follower would forward).
    Node(&'a str),
    /// The admin's HTTP API (keys of several clusters).
    Http(&'a str),
}

/// Reads every key after the faults are healed, as final observations in
/// the history (retrying until a read answers).
pub async fn final_reads(
    history: &History,
    via: ReadVia<'_>,
    keys: &[String],
    client: usize,
    deadline: Duration,
) -> Result<(), String> {
    for key in keys {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let pending = history.invoke(client, key, Op::Get);
            let outcome = match via {
                ReadVia::Http(base) => http_call(base, key, &Op::Get, Duration::from_secs(3)).await,
                ReadVia::Node(addr) => {
                    let mut req = tonic::Request::new(Command {
                        operation: ops::GET.into(),
                        key: key.as_bytes().to_vec(),
                        value: Vec::new(),
                    });
                    req.set_timeout(Duration::from_secs(3));
                    match node_client(addr).run(req).await {
                        Ok(r) => Outcome::Ok(Output::Value(Some(r.into_inner().data))),
                        Err(s) if s.code() == Code::NotFound => Outcome::Ok(Output::Value(None)),
                        Err(_) => Outcome::Unknown,
                    }
                }
            };
            let done = matches!(outcome, Outcome::Ok(_));
            history.complete(pending, outcome);
            if done {
                break;
            }
            if tokio::time::Instant::now() >= until {
                return Err(format!(
                    "no final read of {key} succeeded within {deadline:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
