//! The three targets behind one interface, and the closed-loop pass.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rand::Rng;
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_proto::node::Command;
use ravel_transport::retry::Attempts;
use tonic::transport::{Channel, Endpoint};

use crate::Pass;

pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

use etcd::kv_client::KvClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Put,
    Get,
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
        }
    }
}

/// A system under test and its connections (clients share them).
pub enum Target {
    Ravel(Vec<RavelNodeClient<Channel>>),
    RavelHttp {
        base: String,
        client: reqwest::Client,
    },
    Etcd(Vec<KvClient<Channel>>),
}

async fn channels(addr: &str, n: usize) -> Result<Vec<Channel>, String> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("{addr}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        out.push(ch);
    }
    Ok(out)
}

impl Target {
    pub async fn ravel(addr: &str, connections: usize) -> Result<Self, String> {
        let chans = channels(addr, connections).await?;
        Ok(Target::Ravel(
            chans
                .into_iter()
                .map(|c| RavelNodeClient::new(c).max_decoding_message_size(64 << 20))
                .collect(),
        ))
    }

    pub async fn etcd(addr: &str, connections: usize) -> Result<Self, String> {
        let chans = channels(addr, connections).await?;
        Ok(Target::Etcd(chans.into_iter().map(KvClient::new).collect()))
    }

    pub fn ravel_http(addr: &str) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Target::RavelHttp {
            base: format!("http://{addr}"),
            client,
        })
    }

    pub fn name(&self) -> String {
        match self {
            Target::Ravel(_) => "ravel",
            Target::RavelHttp { .. } => "ravel-http",
            Target::Etcd(_) => "etcd",
        }
        .to_string()
    }

    /// One operation by client number `c`.
    async fn op(&self, c: usize, w: Workload, key: &[u8], value: &[u8]) -> Result<(), String> {
        match self {
            Target::Ravel(clients) => {
                let mut cl = clients[c % clients.len()].clone();
                let (operation, value) = match w {
                    Workload::Put => ("set", value.to_vec()),
                    Workload::Get => ("get", Vec::new()),
                };
                match cl
                    .run(Command {
                        operation: operation.into(),
                        key: key.to_vec(),
                        value,
                    })
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                    Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                }
            }
            Target::Etcd(clients) => {
                let mut cl = clients[c % clients.len()].clone();
                let r = match w {
                    Workload::Put => cl
                        .put(etcd::PutRequest {
                            key: key.to_vec(),
                            value: value.to_vec(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                    Workload::Get => cl
                        .range(etcd::RangeRequest {
                            key: key.to_vec(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                };
                r.map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
            Target::RavelHttp { base, client } => {
                // Keys are ASCII and values a JSON string of the same size.
                let key = String::from_utf8_lossy(key);
                let (path, body) = match w {
                    Workload::Put => (
                        "/put",
                        serde_json::json!({"key": key, "val": String::from_utf8_lossy(value)}),
                    ),
                    Workload::Get => ("/get", serde_json::json!({"key": key})),
                };
                let r = client
                    .post(format!("{base}{path}"))
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                if status == 200 || (w == Workload::Get && status == 404) {
                    Ok(())
                } else {
                    Err(format!("HTTP {status}"))
                }
            }
        }
    }

    /// Writes keys `0..n` with `parallel` concurrent writers: `value`, or
    /// with `random`, a distinct random alphanumeric value of its length per
    /// key (which neither RocksDB's LZ4 nor anything else compresses much:
    /// for measuring space).
    pub async fn load(
        &self,
        n: usize,
        value: &[u8],
        parallel: usize,
        random: bool,
    ) -> Result<(), String> {
        let next = AtomicUsize::new(0);
        let worker = |c: usize| {
            let next = &next;
            async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<(), String>(());
                    }
                    let v: Vec<u8> = if random {
                        rand::rng()
                            .sample_iter(rand::distr::Alphanumeric)
                            .take(value.len())
                            .collect()
                    } else {
                        value.to_vec()
                    };
                    // Setting a key to the same value again has the same
                    // effect, so a put whose outcome is unknown (a leader
                    // overloaded by the load itself) is retried rather
                    // than failing a load of a million keys.
                    let mut attempts = Attempts::until(tokio::time::Instant::now() + LOAD_RETRY);
                    while let Err(e) = self.op(c, Workload::Put, &key(i), &v).await {
                        eprintln!("loading key {i}: {e}; retrying");
                        if !attempts.pause().await {
                            return Err(e);
                        }
                    }
                }
            }
        };
        let results = join_all((0..parallel.max(1)).map(worker)).await;
        results.into_iter().collect()
    }
}

/// How long the loader retries one key before it gives up.
const LOAD_RETRY: Duration = Duration::from_secs(30);

pub fn key(i: usize) -> Vec<u8> {
    format!("bench-{i:08}").into_bytes()
}

/// Runs `clients` closed-loop clients for `secs`; returns ops, errors and
/// the latency histogram (µs) of the successful operations.
pub async fn run_pass(
    target: &Target,
    w: Workload,
    clients: usize,
    secs: Duration,
    keys: usize,
    value: &[u8],
) -> Pass {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let client = |c: usize| {
        let stop = stop.clone();
        async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("histogram bounds");
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = key(rand::rng().random_range(0..keys.max(1)));
                let t = Instant::now();
                match target.op(c, w, &k, value).await {
                    Ok(()) => {
                        let _ = hist.record(t.elapsed().as_micros() as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (hist, errors)
        }
    };
    let timer = {
        let stop = stop.clone();
        async move {
            tokio::time::sleep(secs).await;
            stop.store(true, Ordering::Relaxed);
        }
    };
    // All clients on this task: they only wait on I/O, and the machine's
    // cores are left to the servers.
    let (_, per_client) = tokio::join!(timer, join_all((0..clients).map(client)));
    let elapsed = started.elapsed().as_secs_f64();
    let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .expect("histogram bounds");
    let mut errors = 0;
    for (h, e) in per_client {
        latency.add(&h).expect("same bounds");
        errors += e;
    }
    Pass {
        ops: latency.len(),
        errors,
        secs: elapsed,
        latency,
        cpu_secs: None,
        client_cpu_secs: None,
        busy_percent: None,
        rss_mib: None,
    }
}
