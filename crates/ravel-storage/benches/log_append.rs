//! Raft log append throughput against the raw synced-write rate of the same
//! disk, measured in one run.
//!
//! ```text
//! cargo bench -p ravel-storage --bench log_append [-- --seconds 2 --dir PATH]
//! ```
//!
//! Each append is one synced append to the Raft log's segment files
//! (`Engine::append_log`), as the consensus layer issues it. The baseline is one thread writing 4 KiB and calling
//! fdatasync in a loop: the ceiling for anything that syncs per write.
//! Ratios compare the two within this run, so they hold across machines
//! better than absolute numbers do.

use std::io::Write;
use std::time::{Duration, Instant};

use ravel_storage::Engine;

const ENTRY_BYTES: usize = 256;

struct Args {
    seconds: f64,
    dir: std::path::PathBuf,
}

fn args() -> Args {
    let mut seconds = 2.0;
    let mut dir = std::env::current_dir().expect("current dir");
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = it.next().and_then(|s| s.parse().ok()).expect("--seconds N"),
            "--dir" => dir = it.next().expect("--dir PATH").into(),
            _ => {} // cargo bench passes --bench
        }
    }
    Args { seconds, dir }
}

/// Synced 4 KiB writes per second on one thread. `preallocated`: the
/// writes overwrite an already-written file, so fdatasync has no file size
/// to update (as with RocksDB's recycled, preallocated WAL); otherwise each
/// write appends and grows the file.
fn raw_fdatasync_rate(dir: &std::path::Path, budget: Duration, preallocated: bool) -> f64 {
    use std::io::{Seek, SeekFrom};
    let path = dir.join("fdatasync.bin");
    let mut f = std::fs::File::create(&path).expect("create bench file");
    let block = vec![0xABu8; 4096];
    const SPAN: u64 = 64 << 20;
    if preallocated {
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..(SPAN >> 20) {
            f.write_all(&chunk).expect("prefill");
        }
        f.sync_all().expect("sync prefill");
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        if preallocated {
            f.seek(SeekFrom::Start((n * 4096) % SPAN)).expect("seek");
        }
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync"); // fdatasync(2) on Linux
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(path);
    rate
}

struct AppendResult {
    batches_per_s: f64,
    entries_per_s: f64,
    mb_per_s: f64,
}

fn append_rate(dir: &std::path::Path, batch: usize, budget: Duration) -> AppendResult {
    let db = dir.join(format!("bench-db-{batch}"));
    let _ = std::fs::remove_dir_all(&db);
    let engine = Engine::open(&db).expect("open engine");
    let payload = vec![0x5Au8; ENTRY_BYTES];
    let mut next = 1u64;
    let start = Instant::now();
    let mut batches = 0u64;
    while start.elapsed() < budget {
        engine
            .append_log((next..next + batch as u64).map(|i| (i, &payload)))
            .expect("append");
        next += batch as u64;
        batches += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(engine);
    let _ = std::fs::remove_dir_all(&db);
    let entries = (next - 1) as f64;
    AppendResult {
        batches_per_s: batches as f64 / secs,
        entries_per_s: entries / secs,
        mb_per_s: entries * ENTRY_BYTES as f64 / secs / 1e6,
    }
}

fn main() {
    let args = args();
    let work = tempdir_in(&args.dir);
    let budget = Duration::from_secs_f64(args.seconds);
    println!(
        "bench dir: {} ({}s per measurement)",
        work.display(),
        args.seconds
    );

    // Rounds interleave every measurement, so a disk whose speed drifts
    // during the run affects all of them alike; the median is reported.
    const ROUNDS: usize = 3;
    let batches = [1usize, 16, 256];
    let mut raw_grow = Vec::new();
    let mut raw_pre = Vec::new();
    let mut appends: Vec<Vec<AppendResult>> = batches.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        raw_grow.push(raw_fdatasync_rate(&work, budget, false));
        raw_pre.push(raw_fdatasync_rate(&work, budget, true));
        for (i, b) in batches.iter().enumerate() {
            appends[i].push(append_rate(&work, *b, budget));
        }
    }
    let _ = std::fs::remove_dir_all(&work);

    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let grow = median(raw_grow.clone());
    let pre = median(raw_pre.clone());
    println!();
    println!("raw 4 KiB write + fdatasync, growing file:      median {grow:.0}/s (rounds: {raw_grow:.0?})");
    println!(
        "raw 4 KiB write + fdatasync, preallocated file: median {pre:.0}/s (rounds: {raw_pre:.0?})"
    );
    println!();
    println!("| entries per append | appends/s | entries/s | MB/s | appends/s ÷ raw (growing) | appends/s ÷ raw (preallocated) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (b, rounds) in batches.iter().zip(appends) {
        let mut rounds = rounds;
        rounds.sort_by(|x, y| x.batches_per_s.total_cmp(&y.batches_per_s));
        let r = &rounds[rounds.len() / 2];
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
            b,
            r.batches_per_s,
            r.entries_per_s,
            r.mb_per_s,
            r.batches_per_s / grow,
            r.batches_per_s / pre
        );
    }
}

fn tempdir_in(base: &std::path::Path) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = base.join(format!("ravel-bench-{nanos:x}"));
    std::fs::create_dir_all(&dir).expect("create bench dir");
    dir
}
