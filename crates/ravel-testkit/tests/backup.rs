//! `ravel backup` and `ravel restore`, through the real CLI: a backup
//! taken under write load holds every write acknowledged before it began;
//! restored into a fresh system of another shape, every key reads back
//! with its value; a damaged backup is refused before anything is written.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ravel_admin::backup::{Frame, Reader};
use ravel_testkit::process::ravel_cli;
use ravel_testkit::TestSystem;
use serde_json::json;

/// The entries of a backup file, checked end to end.
fn read_backup(path: &std::path::Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let file = std::fs::File::open(path).expect("open backup");
    let mut reader = Reader::new(std::io::BufReader::new(file)).expect("a backup");
    let mut out = BTreeMap::new();
    while let Some((frame, _)) = reader.next_frame().expect("an intact backup") {
        if let Frame::Entries { entries, .. } = frame {
            for (k, v) in entries {
                assert!(out.insert(k.clone(), v).is_none(), "key {k:?} twice");
            }
        }
    }
    out
}

fn cli_args(admin: &str, rest: &[&str]) -> Vec<String> {
    let mut args = vec!["--admin".to_string(), admin.to_string()];
    args.extend(rest.iter().map(|s| s.to_string()));
    args
}

/// `ravel backup --out file` against the admin at `admin`, which must
/// succeed.
async fn backup_to(admin: &str, file: &std::path::Path) {
    let out = ravel_cli(
        cli_args(admin, &["backup", "--out", file.to_str().unwrap()]),
        Duration::from_secs(60),
    )
    .await;
    assert!(out.status.success(), "backup failed: {out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("written to"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_into_a_fresh_system() {
    let dir = tempfile::tempdir().unwrap();
    let source = TestSystem::start(2, 3).await;
    for i in 0..200 {
        let r = source
            .http(
                "PUT",
                &format!("/v1/kv/before-{i}"),
                Some(json!({ "n": i })),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }

    // Writers keep going through the backup: each key written once, its
    // number recorded once acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let addr = source.http_addr().to_string();
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let body = serde_json::to_vec(&json!(n)).unwrap();
                let r = ravel_testkit::http::request(
                    &addr,
                    "PUT",
                    &format!("/v1/kv/load-{n}"),
                    Some(&body),
                    Duration::from_secs(10),
                )
                .await
                .expect("put under load");
                assert_eq!(r.status, 200, "{:?}", r.body);
                acked.store(n + 1, Ordering::SeqCst);
                n += 1;
            }
            n
        })
    };
    ravel_testkit::wait_for(Duration::from_secs(10), "load writes", || {
        let n = acked.load(Ordering::SeqCst);
        async move { (n >= 20).then_some(()) }
    })
    .await;

    let file = dir.path().join("ravel.backup");
    let acked_before = acked.load(Ordering::SeqCst);
    backup_to(source.http_addr(), &file).await;
    stop.store(true, Ordering::SeqCst);
    let written = writer.await.unwrap();
    assert!(!dir.path().join("ravel.backup.part").exists());

    let backup = read_backup(&file);
    eprintln!(
        "{} entries backed up; {acked_before} load writes acknowledged before the backup, {written} in all",
        backup.len()
    );
    for i in 0..200 {
        let k = format!("before-{i}");
        assert_eq!(
            backup.get(k.as_bytes()).map(|v| v.as_slice()),
            Some(serde_json::to_vec(&json!({ "n": i })).unwrap().as_slice()),
            "{k}"
        );
    }
    // Every write acknowledged before the backup began is in it; nothing
    // is in it that was never written.
    for n in 0..acked_before {
        assert!(
            backup.contains_key(format!("load-{n}").as_bytes()),
            "load-{n} lost"
        );
    }
    for k in backup.keys() {
        let k = String::from_utf8_lossy(k);
        if let Some(n) = k.strip_prefix("load-") {
            assert!(n.parse::<u64>().unwrap() < written, "{k} was never written");
        }
    }

    // A fresh system of another shape: one cluster.
    let target = TestSystem::start(1, 1).await;
    // A damaged copy is refused before any write.
    let mut damaged = std::fs::read(&file).unwrap();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x40;
    let bad = dir.path().join("damaged.backup");
    std::fs::write(&bad, damaged).unwrap();
    let out = ravel_cli(
        cli_args(target.http_addr(), &["restore", bad.to_str().unwrap()]),
        Duration::from_secs(60),
    )
    .await;
    assert!(!out.status.success(), "restored a damaged backup: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("damaged"),
        "{out:?}"
    );
    let r = target.http("GET", "/v1/kv/before-0", None).await;
    assert_eq!(r.status, 404, "a damaged backup wrote {:?}", r.body);

    let out = ravel_cli(
        cli_args(target.http_addr(), &["restore", file.to_str().unwrap()]),
        Duration::from_secs(120),
    )
    .await;
    assert!(out.status.success(), "restore failed: {out:?}");
    for (k, v) in &backup {
        let key = String::from_utf8(k.clone()).unwrap();
        let r = target.http("GET", &format!("/v1/kv/{key}"), None).await;
        assert_eq!(r.status, 200, "{key}: {:?}", r.body);
        let want: serde_json::Value = serde_json::from_slice(v).unwrap();
        assert_eq!(r.body["val"], want, "{key}");
    }
    // And nothing else: a backup of the target holds exactly the same.
    let again = dir.path().join("target.backup");
    backup_to(target.http_addr(), &again).await;
    assert!(
        read_backup(&again) == backup,
        "the restored system holds other keys"
    );
    source.shutdown().await;
    target.shutdown().await;
}
