//! Peak memory of installing a snapshot, against its size, in one run.
//!
//! ```text
//! cargo bench -p ravel-storage --bench snapshot_import [-- --mib 600 --dir PATH]
//! ```
//!
//! Fills a database with `--mib` MiB of 1 KiB values, exports a snapshot
//! file, then imports it into a second database the way a follower
//! installs one (8 MiB batches), and again as one write batch (how Ravel
//! installed snapshots before), printing the process's peak RSS during each
//! import (`VmHWM`, reset just before it through `/proc/self/clear_refs`).

use std::time::Instant;

use ravel_storage::Engine;

fn args() -> (u64, std::path::PathBuf) {
    let mut mib = 600;
    let mut dir = std::env::temp_dir();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--mib" => mib = it.next().and_then(|s| s.parse().ok()).expect("--mib N"),
            "--dir" => dir = it.next().expect("--dir PATH").into(),
            _ => {} // cargo bench passes --bench
        }
    }
    (mib, dir)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let (mib, dir) = args();
    let root = tempfile::tempdir_in(&dir).expect("temp dir");
    let src = Engine::open(root.path().join("src")).expect("open src");
    let value = vec![b'v'; 1024];
    let keys = mib * 1024;
    let t = Instant::now();
    for chunk in 0..keys.div_ceil(10_000) {
        let mut b = src.apply_batch();
        for k in chunk * 10_000..((chunk + 1) * 10_000).min(keys) {
            b.put(format!("key{k:012}").as_bytes(), &value);
        }
        b.put_meta("last_applied", &chunk.to_be_bytes());
        b.commit().expect("fill");
    }
    src.sync().expect("sync");
    println!(
        "filled {keys} keys ({mib} MiB of values) in {:?}",
        t.elapsed()
    );

    let file = root.path().join("snapshot");
    let t = Instant::now();
    let stats = {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).expect("create"));
        src.export_snapshot(&mut out, 1 << 20, |_| b"bench".to_vec())
            .expect("export")
    };
    drop(src);
    let size = std::fs::metadata(&file).expect("size").len();
    println!(
        "exported {} entries, {} MiB file, in {:?}",
        stats.entries,
        size >> 20,
        t.elapsed()
    );

    // The install as a follower does it (8 MiB batches), then as one
    // batch (how Ravel installed snapshots before), for comparison.
    for (name, batch) in [("batched (8 MiB)", 8usize << 20), ("one batch", usize::MAX)] {
        let dst = Engine::open(root.path().join(format!("dst-{}", batch.count_ones())))
            .expect("open dst");
        let before = status_kib("VmRSS:");
        // Reset the peak, so VmHWM measures this import alone.
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let t = Instant::now();
        let (_, istats) = dst
            .import_snapshot_file(&file, batch, |_| Ok(()))
            .expect("import");
        let took = t.elapsed();
        let peak = status_kib("VmHWM:");
        println!(
            "{name}: {} entries in {} batches (largest {} MiB) in {took:?}, {:.0} MiB/s; \
             RSS before {} MiB, peak {} MiB{}; snapshot {} MiB, peak growth / snapshot {:.2}",
            istats.entries,
            istats.batches,
            istats.max_batch_bytes >> 20,
            size as f64 / (1 << 20) as f64 / took.as_secs_f64(),
            before >> 10,
            peak >> 10,
            if reset { "" } else { " (peak not reset)" },
            size >> 20,
            (peak.saturating_sub(before) as f64 * 1024.0) / size as f64
        );
    }
}
