//! End-to-end write path of one 3-replica cluster (in-process, loopback
//! gRPC, real RocksDB on disk): one client writing sequentially against 64
//! concurrent clients, next to the disk's raw synced-write rate, all
//! measured in this run.
//!
//! ```text
//! cargo bench -p ravel-testkit --bench write_path --profile dev [-- --seconds 3]
//! ```
//!
//! (`--profile dev` reuses the test build; dependencies, RocksDB included,
//! are optimised at opt-level 2 there.)

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ravel_proto::node::Command;
use ravel_testkit::TestSystem;
use tokio::sync::Mutex;

fn seconds() -> f64 {
    let mut it = std::env::args().skip_while(|a| a != "--seconds");
    it.nth(1).and_then(|s| s.parse().ok()).unwrap_or(3.0)
}

/// 4 KiB write + fdatasync per iteration, preallocated file (as a WAL).
fn raw_fdatasync_rate(dir: &std::path::Path, budget: Duration) -> f64 {
    use std::io::{Seek, SeekFrom};
    let path = dir.join("fdatasync.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&vec![0u8; 16 << 20]).unwrap();
    f.sync_all().unwrap();
    let block = vec![1u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        f.seek(SeekFrom::Start((n * 4096) % (16 << 20))).unwrap();
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct Phase {
    name: String,
    ops: u64,
    secs: f64,
    entries: u64,
    hist: Histogram<u64>,
}

async fn phase(sys: &TestSystem, leader: usize, clients: usize, budget: Duration) -> Phase {
    let raft = sys.nodes[leader].node().raft().clone();
    let before = raft.metrics().borrow().last_log_index.unwrap_or(0);
    let client = sys.client(leader).await;
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (mut client, hist) = (client.clone(), hist.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut local = Histogram::<u64>::new(3).unwrap();
            while start.elapsed() < budget {
                let t = Instant::now();
                client
                    .run(Command {
                        operation: "set".into(),
                        key: format!("bench-{c}-{}", n % 1000).into_bytes(),
                        value: vec![b'v'; 100],
                    })
                    .await
                    .expect("write");
                local.record(t.elapsed().as_micros() as u64).unwrap();
                n += 1;
            }
            hist.lock().await.add(&local).unwrap();
            n
        }));
    }
    let mut ops = 0;
    for t in tasks {
        ops += t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let after = raft.metrics().borrow().last_log_index.unwrap_or(0);
    let hist = Arc::try_unwrap(hist).unwrap().into_inner();
    Phase {
        name: format!("{clients} client(s)"),
        ops,
        secs,
        entries: after - before,
        hist,
    }
}

fn main() {
    let budget = Duration::from_secs_f64(seconds());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sys = TestSystem::start(1, 3).await;
        let cluster = sys.cluster_ids()[0].clone();
        let leader = sys.leader(&cluster, Duration::from_secs(10)).await;
        let raw = raw_fdatasync_rate(sys.root(), budget);
        let single = phase(&sys, leader, 1, budget).await;
        let many = phase(&sys, leader, 64, budget).await;
        println!("raw 4 KiB write + fdatasync (preallocated file, same disk): {raw:.0}/s");
        println!();
        println!("| clients | writes/s | writes per Raft entry | p50 µs | p99 µs | writes/s ÷ raw fdatasync/s |");
        println!("|---|---:|---:|---:|---:|---:|");
        for p in [&single, &many] {
            let rate = p.ops as f64 / p.secs;
            println!(
                "| {} | {:.0} | {:.1} | {} | {} | {:.2} |",
                p.name,
                rate,
                p.ops as f64 / p.entries.max(1) as f64,
                p.hist.value_at_quantile(0.5),
                p.hist.value_at_quantile(0.99),
                rate / raw
            );
        }
        println!();
        println!(
            "64 clients ÷ 1 client throughput: {:.1}×",
            (many.ops as f64 / many.secs) / (single.ops as f64 / single.secs)
        );
        sys.shutdown().await;
    });
}
