//! `ravel-bench`: the same closed-loop clients against Ravel and etcd, in
//! one run, alternating targets pass by pass, so that the ratios compare
//! systems under the same machine state.
//!
//! Targets:
//! - `ravel`: a node's `RavelClusterPB.RavelNode/Run` (`set`, `get`), as the
//!   admin and peers call it (give the leader's address to measure the
//!   leader; a follower forwards);
//! - `ravel-http`: the admin's `/put` and `/get`, what most users call;
//! - `etcd`: etcd's v3 `KV/Put` and `KV/Range` (linearizable, not
//!   serializable), on the member given.
//!
//! Each pass runs one workload (put or get) with N clients for a fixed
//! time: every client sends one request, waits for its answer, sends the
//! next. Keys are drawn uniformly from a key space that is loaded before
//! the get passes. Output: a table of ops/s, latency percentiles, CPU
//! seconds per 1k operations and RSS of each target's server processes
//! (from /proc, given their pids), and the ratio to etcd; medians over the
//! rounds.

mod client;
mod procstat;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use client::{Target, Workload};

#[derive(Parser, Debug)]
#[command(name = "ravel-bench", about = "Ravel vs etcd, side by side")]
struct Args {
    /// A Ravel node's gRPC address (host:port); the leader's for a fair
    /// comparison with etcd's leader.
    #[arg(long)]
    ravel: Option<String>,
    /// The Ravel admin's HTTP address (host:port).
    #[arg(long)]
    ravel_http: Option<String>,
    /// An etcd member's client address (host:port).
    #[arg(long)]
    etcd: Option<String>,
    /// Pids of Ravel's server processes (nodes and admin), comma-separated,
    /// for CPU and RSS.
    #[arg(long, value_delimiter = ',')]
    ravel_pids: Vec<u32>,
    /// Pids of etcd's members, comma-separated.
    #[arg(long, value_delimiter = ',')]
    etcd_pids: Vec<u32>,
    /// Workloads and client counts: `put:1,put:16,get:64`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "put:1,put:16,put:64,get:16,get:64"
    )]
    points: Vec<String>,
    /// Seconds per pass.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Rounds per point (each round runs every target once); the median
    /// is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    #[arg(long, default_value_t = 20_000)]
    keys: usize,
    /// Load each key with its own random alphanumeric value instead of one
    /// repeated byte (which compresses to nothing): for measuring space.
    #[arg(long)]
    random_values: bool,
    /// Do not load the keys before get passes: an earlier run with the
    /// same `--keys` loaded them.
    #[arg(long)]
    no_load: bool,
    /// gRPC connections per target (clients share them round-robin).
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

/// One pass's result.
#[derive(Debug, Clone)]
struct Pass {
    ops: u64,
    errors: u64,
    secs: f64,
    latency: hdrhistogram::Histogram<u64>,
    cpu_secs: Option<f64>,
    /// CPU seconds of this benchmark process (the clients) over the pass.
    client_cpu_secs: Option<f64>,
    /// The whole machine's busy share over the pass, in percent: near
    /// 100, the pass was bound by CPU, not by waiting.
    busy_percent: Option<f64>,
    rss_mib: Option<f64>,
}

impl Pass {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("ravel-bench: {e}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut targets: Vec<(Target, Vec<u32>)> = Vec::new();
    if let Some(a) = &args.etcd {
        targets.push((
            Target::etcd(a, args.connections).await?,
            args.etcd_pids.clone(),
        ));
    }
    if let Some(a) = &args.ravel {
        targets.push((
            Target::ravel(a, args.connections).await?,
            args.ravel_pids.clone(),
        ));
    }
    if let Some(a) = &args.ravel_http {
        targets.push((Target::ravel_http(a)?, args.ravel_pids.clone()));
    }
    if targets.is_empty() {
        return Err("no target: give --ravel, --ravel-http and/or --etcd".into());
    }
    let points: Vec<(Workload, usize)> = args
        .points
        .iter()
        .map(|p| parse_point(p))
        .collect::<Result<_, _>>()?;
    let value = vec![b'v'; args.value_bytes];
    if !args.no_load && points.iter().any(|(w, _)| *w == Workload::Get) {
        for (t, _) in &targets {
            eprintln!("loading {} keys into {}", args.keys, t.name());
            t.load(args.keys, &value, 64, args.random_values).await?;
        }
    }
    println!(
        "ravel-bench: {} s per pass, {} round(s), {}-byte values, {} keys, {} connection(s) per target",
        args.seconds, args.rounds, args.value_bytes, args.keys, args.connections
    );
    let mut results: BTreeMap<(usize, String), Vec<Pass>> = BTreeMap::new();
    for (i, (workload, clients)) in points.iter().enumerate() {
        for round in 0..args.rounds {
            for (t, pids) in &targets {
                let before = procstat::cpu_secs(pids);
                let me = [std::process::id()];
                let client_before = procstat::cpu_secs(&me);
                let machine_before = procstat::machine_ticks();
                let mut pass = client::run_pass(
                    t,
                    *workload,
                    *clients,
                    Duration::from_secs(args.seconds),
                    args.keys,
                    &value,
                )
                .await;
                pass.cpu_secs = before.zip(procstat::cpu_secs(pids)).map(|(a, b)| b - a);
                pass.client_cpu_secs = client_before
                    .zip(procstat::cpu_secs(&me))
                    .map(|(a, b)| b - a);
                pass.busy_percent = machine_before
                    .zip(procstat::machine_ticks())
                    .and_then(|(a, b)| procstat::busy_percent(a, b));
                pass.rss_mib = procstat::rss_mib(pids);
                eprintln!(
                    "{} {}x{} round {}: {:.0} ops/s, p50 {} µs, {} errors",
                    t.name(),
                    workload.name(),
                    clients,
                    round + 1,
                    pass.rate(),
                    pass.latency.value_at_quantile(0.5),
                    pass.errors
                );
                results.entry((i, t.name())).or_default().push(pass);
            }
        }
    }
    print_table(&points, &targets, &results);
    Ok(())
}

fn parse_point(p: &str) -> Result<(Workload, usize), String> {
    let (w, n) = p
        .split_once(':')
        .ok_or_else(|| format!("point {p:?}: expected WORKLOAD:CLIENTS"))?;
    let w = match w {
        "put" => Workload::Put,
        "get" => Workload::Get,
        other => return Err(format!("unknown workload {other:?} (put or get)")),
    };
    let n: usize = n
        .parse()
        .map_err(|_| format!("point {p:?}: clients must be a number"))?;
    if n == 0 {
        return Err(format!("point {p:?}: at least one client"));
    }
    Ok((w, n))
}

/// The pass with the median rate.
fn median(passes: &[Pass]) -> &Pass {
    let mut idx: Vec<usize> = (0..passes.len()).collect();
    idx.sort_by(|&a, &b| passes[a].rate().total_cmp(&passes[b].rate()));
    &passes[idx[idx.len() / 2]]
}

fn print_table(
    points: &[(Workload, usize)],
    targets: &[(Target, Vec<u32>)],
    results: &BTreeMap<(usize, String), Vec<Pass>>,
) {
    println!();
    println!("| workload | clients | target | ops/s (rounds) | p50 ms | p99 ms | p999 ms | errors | CPU s / 1k ops | client CPU s / 1k | machine busy % | RSS MiB | ÷ etcd |");
    println!("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, (w, clients)) in points.iter().enumerate() {
        let etcd = results
            .get(&(i, "etcd".to_string()))
            .map(|p| median(p).rate());
        for (t, _) in targets {
            let Some(passes) = results.get(&(i, t.name())) else {
                continue;
            };
            let m = median(passes);
            let rounds: Vec<String> = passes.iter().map(|p| format!("{:.0}", p.rate())).collect();
            let ms = |q: f64| m.latency.value_at_quantile(q) as f64 / 1000.0;
            let per_1k = |c: Option<f64>| {
                c.map_or("-".into(), |c| {
                    format!("{:.3}", c / (m.ops.max(1) as f64 / 1000.0))
                })
            };
            println!(
                "| {} | {} | {} | {:.0} ({}) | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
                w.name(),
                clients,
                t.name(),
                m.rate(),
                rounds.join(", "),
                ms(0.5),
                ms(0.99),
                ms(0.999),
                m.errors,
                per_1k(m.cpu_secs),
                per_1k(m.client_cpu_secs),
                m.busy_percent.map_or("-".into(), |b| format!("{b:.0}")),
                m.rss_mib.map_or("-".into(), |r| format!("{r:.0}")),
                etcd.map_or("-".into(), |e| format!("{:.2}", m.rate() / e)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_point("put:64").unwrap(), (Workload::Put, 64));
        assert_eq!(parse_point("get:1").unwrap(), (Workload::Get, 1));
        assert!(parse_point("scan:4").is_err());
        assert!(parse_point("put").is_err());
        assert!(parse_point("put:0").is_err());
    }

    #[test]
    fn the_median_pass_is_the_middle_rate() {
        let pass = |ops| Pass {
            ops,
            errors: 0,
            secs: 1.0,
            latency: hdrhistogram::Histogram::new(3).unwrap(),
            cpu_secs: None,
            client_cpu_secs: None,
            busy_percent: None,
            rss_mib: None,
        };
        let passes = [pass(30), pass(10), pass(20)];
        assert_eq!(median(&passes).ops, 20);
    }
}
