//! `ravel backup` and `ravel restore`: the CLI's side of backups (the
//! format and the admin's side are in [`crate::backup`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use tokio::time::Instant;

use crate::backup::{Frame, Reader};
use crate::user_cli::{again_while_unavailable, answer, read_answer, Admin};

/// Longest the admin may go quiet in the middle of a backup stream.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one restore request may take (about 1 MiB of entries).
const RESTORE_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Progress lines at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// `ravel backup --out FILE`: streams the admin's backup to `FILE.part`,
/// checks it end to end, then renames it to FILE. A failed backup leaves
/// no file behind.
pub(crate) async fn backup(admin: &Admin, out: &Path) -> Result<(), String> {
    let part = PathBuf::from(format!("{}.part", out.display()));
    let result = download(admin, &part).await.and_then(|bytes| {
        let summary = verify(&part)?;
        finish(&part, out)?;
        Ok((bytes, summary))
    });
    match result {
        Ok((bytes, summary)) => {
            println!(
                "backup of {} entries from {} clusters written to {} ({:.1} MiB)",
                summary.entries,
                summary.clusters.len(),
                out.display(),
                mib(bytes)
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

async fn download(admin: &Admin, part: &Path) -> Result<u64, String> {
    let mut resp = admin
        .request(Method::GET, "/v1/backup")
        // The whole stream may take long; stalls are bounded below.
        .timeout(Duration::from_secs(7 * 24 * 3600))
        .send()
        .await
        .map_err(|e| format!("cannot reach the admin at {}: {e}", admin.base))?;
    if !resp.status().is_success() {
        // A refusal is JSON; only a success streams the file.
        let why = read_answer(resp).await.map_or_else(|e| e, |r| r.error());
        return Err(format!("the admin refused the backup: {why}"));
    }
    let mut file = std::fs::File::create(part)
        .map_err(|e| format!("cannot create {}: {e}", part.display()))?;
    let (started, mut shown) = (Instant::now(), Instant::now());
    let mut bytes = 0u64;
    loop {
        let chunk = tokio::time::timeout(STALL_TIMEOUT, resp.chunk())
            .await
            .map_err(|_| format!("the admin sent nothing for {STALL_TIMEOUT:?}"))?
            .map_err(|e| format!("the backup stream broke: {e}"))?;
        let Some(chunk) = chunk else { break };
        file.write_all(&chunk)
            .map_err(|e| format!("writing {}: {e}", part.display()))?;
        bytes += chunk.len() as u64;
        if shown.elapsed() >= PROGRESS_EVERY {
            shown = Instant::now();
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            eprintln!(
                "received {:.1} MiB ({:.1} MiB/s)",
                mib(bytes),
                mib(bytes) / secs
            );
        }
    }
    file.sync_all()
        .map_err(|e| format!("syncing {}: {e}", part.display()))?;
    Ok(bytes)
}

/// Moves the checked file to its name, durably.
fn finish(part: &Path, out: &Path) -> Result<(), String> {
    std::fs::rename(part, out).map_err(|e| format!("renaming to {}: {e}", out.display()))?;
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing {}: {e}", dir.display()))
}

/// What a checked backup holds.
pub(crate) struct Summary {
    pub entries: u64,
    /// Entries per cluster, in file order.
    pub clusters: Vec<(String, u64)>,
}

fn open(path: &Path) -> Result<Reader<std::io::BufReader<std::fs::File>>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Reader::new(std::io::BufReader::new(file)).map_err(|e| format!("{}: {e}", path.display()))
}

/// The next frame of `reader`, errors naming `path`.
fn next(
    reader: &mut Reader<std::io::BufReader<std::fs::File>>,
    path: &Path,
) -> Result<Option<(Frame, Vec<u8>)>, String> {
    reader
        .next_frame()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads the whole file, checking every frame and the trailer.
fn verify(path: &Path) -> Result<Summary, String> {
    let mut reader = open(path)?;
    let mut summary = Summary {
        entries: 0,
        clusters: Vec::new(),
    };
    while let Some((frame, _)) = next(&mut reader, path)? {
        if let Frame::Entries { cluster, entries } = frame {
            let n = entries.len() as u64;
            summary.entries += n;
            match summary.clusters.last_mut() {
                Some((c, count)) if *c == cluster => *count += n,
                _ => summary.clusters.push((cluster, n)),
            }
        }
    }
    Ok(summary)
}

/// `ravel restore FILE`: checks the whole file first (nothing is written
/// from a damaged or incomplete backup), then writes its entries through
/// the admin, frame by frame. Every write sets a key to its backed-up
/// value, so a restore that stopped may be run again.
pub(crate) async fn restore(admin: &Admin, path: &Path) -> Result<(), String> {
    let summary = verify(path)?;
    for (cluster, n) in &summary.clusters {
        eprintln!("{}: {n} entries from cluster {cluster}", path.display());
    }
    eprintln!(
        "checked {}: {} entries; restoring",
        path.display(),
        summary.entries
    );
    // The file is read again, frame by frame, each sent as it is read.
    let mut reader = open(path)?;
    let (started, mut shown, mut done) = (Instant::now(), Instant::now(), 0u64);
    while let Some((frame, raw)) = next(&mut reader, path)? {
        let Frame::Entries { entries, .. } = frame else {
            continue;
        };
        restore_frame(admin, &raw).await?;
        done += entries.len() as u64;
        if shown.elapsed() >= PROGRESS_EVERY || done == summary.entries {
            shown = Instant::now();
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            eprintln!(
                "restored {done}/{} entries ({:.0}/s)",
                summary.entries,
                done as f64 / secs
            );
        }
    }
    println!(
        "restored {} entries from {}",
        summary.entries,
        path.display()
    );
    Ok(())
}

/// One entries frame to `POST /v1/restore`, again while the admin answers
/// 503 (no leader for a moment) for up to a minute: the frame's writes are
/// plain sets, so sending it twice leaves the same state.
async fn restore_frame(admin: &Admin, raw: &[u8]) -> Result<(), String> {
    let r = again_while_unavailable(Duration::from_secs(60), || {
        let req = admin
            .request(Method::POST, "/v1/restore")
            .timeout(RESTORE_CALL_TIMEOUT)
            .header("content-type", "application/octet-stream")
            .body(raw.to_vec());
        answer(admin, req)
    })
    .await?;
    if r.status != 200 {
        return Err(format!("the admin refused a restore: {}", r.error()));
    }
    Ok(())
}
