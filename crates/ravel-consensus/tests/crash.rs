//! Crash test: a child process drives the real log store and state machine
//! (appends, applies, truncations, purges) and reports each operation once it
//! has returned; the parent SIGKILLs it at a random moment, reopens the data
//! directory and checks that
//!
//! - every entry reported appended is present, with its term (unless a later
//!   reported truncation or purge removed it);
//! - no entry removed by a reported truncation reappears;
//! - the state machine never lost what the purged log can no longer replay,
//!   and after re-applying the committed entries past its last applied index
//!   it holds exactly the expected data.
//!
//! The engine keeps unsynced RocksDB WAL records in process memory
//! (`manual_wal_flush`), so for what RocksDB holds (the vote, the purge
//! marker and the log's start) a SIGKILL loses exactly what a power cut
//! would. The log's own segment files are written and synced in one call,
//! so here a SIGKILL cannot tell a synced append from an unsynced one:
//! `ravel-storage`'s `segments` tests check that every mutation syncs and
//! that a torn tail is cut on open.
//!
//! Replay a run with `RAVEL_CRASH_SEED=<seed>` (the seed is printed).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use rand::{Rng, SeedableRng};
use ravel_consensus::types::{Entry, LogId};
use ravel_consensus::{Command, DataDir, LogStore, StateMachine};

const CHILD_DIR: &str = "RAVEL_CRASH_CHILD_DIR";
const CHILD_SEED: &str = "RAVEL_CRASH_CHILD_SEED";
const CHILD_LOCKSTEP: &str = "RAVEL_CRASH_CHILD_LOCKSTEP";
const ROUNDS: usize = 16;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// The command of the entry at (`index`, `term`): derived from both, so the
/// parent knows every payload without reading the log.
fn command(index: u64, term: u64) -> Command {
    let key = format!("k{}", index % 37).into_bytes();
    if index.is_multiple_of(11) {
        Command::Delete { key }
    } else {
        Command::Set {
            key,
            value: format!("{index}:{term}").into_bytes(),
        }
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(command(index, term)),
    }
}

fn open(dir: &std::path::Path) -> (LogStore, StateMachine) {
    DataDir::new(dir).open(4096).expect("open data dir")
}

/// The child: runs operations until killed.
#[test]
#[ignore = "run by `crash_recovers_acknowledged_state` in a child process"]
fn crash_child() {
    let dir = std::env::var(CHILD_DIR).expect("only run by the crash test");
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // In lockstep the child waits for the parent after each report, so a
        // kill lands exactly between two operations: right after an
        // acknowledgement, before any later write could sync it by accident.
        let lockstep = std::env::var(CHILD_LOCKSTEP).is_ok();
        let report = |line: String| {
            println!("@@ {line}");
            if lockstep {
                let mut go = String::new();
                std::io::stdin().read_line(&mut go).unwrap();
            }
        };
        let (mut log, mut sm) = open(std::path::Path::new(&dir));
        let state = log.get_log_state().await.unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        let mut applied = applied.map(|l| l.index).unwrap_or(0);
        let mut purged = state.last_purged_log_id.map(|l| l.index).unwrap_or(0);
        let last = state.last_log_id;
        let mut next = last.map(|l| l.index + 1).unwrap_or(1);
        let mut term = last.map(|l| l.leader_id.term + 1).unwrap_or(1);
        let mut log_terms: BTreeMap<u64, u64> = log
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect();
        loop {
            let roll = rng.random_range(0..100);
            if roll < 65 || next <= applied + 1 {
                let k = rng.random_range(1..=8);
                let entries: Vec<Entry> = (next..next + k).map(|i| entry(i, term)).collect();
                log.append_entries(entries).await.unwrap();
                for i in next..next + k {
                    log_terms.insert(i, term);
                }
                report(format!("APPENDED {next} {} {term}", next + k - 1));
                next += k;
            } else if roll < 85 {
                let upto = rng.random_range(applied + 1..next);
                let entries: Vec<Entry> = (applied + 1..=upto)
                    .map(|i| entry(i, log_terms[&i]))
                    .collect();
                sm.apply(entries).await.unwrap();
                log.save_committed(Some(log_id(log_terms[&upto], upto)))
                    .await
                    .unwrap();
                report(format!("APPLIED {upto}"));
                applied = upto;
            } else if roll < 95 {
                // Only uncommitted entries may be truncated.
                let t = rng.random_range(applied + 1..next);
                report(format!("TRUNCATING {t}"));
                log.truncate(log_id(log_terms[&t], t)).await.unwrap();
                report(format!("TRUNCATED {t}"));
                log_terms.retain(|i, _| *i < t);
                next = t;
                term += 1;
            } else if applied > purged {
                let p = rng.random_range(purged + 1..=applied);
                report(format!("PURGING {p}"));
                log.purge(log_id(log_terms[&p], p)).await.unwrap();
                report(format!("PURGED {p}"));
                purged = p;
            }
        }
    });
}

/// What the parent knows to be durable.
#[derive(Default, Debug)]
struct Model {
    log: BTreeMap<u64, u64>,
    applied: u64,
    purged: u64,
    /// An operation the child started but did not report finished.
    in_flight_truncate: Option<u64>,
    in_flight_purge: Option<u64>,
    /// Highest term the child used: in-flight appends carry it.
    term: u64,
}

impl Model {
    fn observe(&mut self, line: &str) {
        let parts: Vec<u64> = line
            .split(' ')
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        match line.split(' ').next().unwrap() {
            "APPENDED" => {
                for i in parts[0]..=parts[1] {
                    self.log.insert(i, parts[2]);
                }
                self.term = parts[2];
            }
            "APPLIED" => self.applied = parts[0],
            "TRUNCATING" => self.in_flight_truncate = Some(parts[0]),
            "TRUNCATED" => {
                self.log.retain(|i, _| *i < parts[0]);
                self.in_flight_truncate = None;
                self.term += 1;
            }
            "PURGING" => self.in_flight_purge = Some(parts[0]),
            "PURGED" => {
                self.log.retain(|i, _| *i > parts[0]);
                self.purged = parts[0];
                self.in_flight_purge = None;
            }
            other => panic!("unexpected child output {other:?}"),
        }
    }

    /// Expected user data after applying entries 1..=upto. Entry terms come
    /// from `terms`, which covers every index ever applied.
    fn expected_data(terms: &BTreeMap<u64, u64>, upto: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut data = BTreeMap::new();
        for i in 1..=upto {
            match command(i, terms[&i]) {
                Command::Set { key, value } => {
                    data.insert(key, value);
                }
                Command::Delete { key } => {
                    data.remove(&key);
                }
                other => unreachable!("{other:?}"),
            }
        }
        data
    }
}

#[test]
fn crash_recovers_acknowledged_state() {
    let seed: u64 = std::env::var("RAVEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed: {seed} (replay with RAVEL_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let mut model = Model::default();
    // Every term ever applied, by index, so expected data can be recomputed
    // after the log is purged.
    let mut applied_terms: BTreeMap<u64, u64> = BTreeMap::new();
    let mut total_lines = 0;
    for round in 0..ROUNDS {
        let kill_after = rng.random_range(20..400);
        // Alternate: kills between operations (lockstep) and in the middle
        // of them (free-running).
        let lockstep = round % 2 == 0;
        let mut cmd = Process::new(&exe);
        if lockstep {
            cmd.env(CHILD_LOCKSTEP, "1");
        }
        let mut child = cmd
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_SEED, rng.random::<u64>().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut go = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        let mut killed = false;
        for line in lines {
            let line = line.unwrap();
            // Reports are marked: libtest prints its own text on the same stream.
            let Some((_, line)) = line.split_once("@@ ") else {
                continue;
            };
            if line.starts_with("APPLIED") {
                // Record terms of applied entries before the log may be purged.
                let upto: u64 = line[8..].parse().unwrap();
                for i in model.applied + 1..=upto {
                    applied_terms.insert(i, model.log[&i]);
                }
            }
            model.observe(line);
            seen += 1;
            if !killed && (seen >= kill_after || Instant::now() > deadline) {
                // SIGKILL: no destructor, no flush. Lines already in the pipe
                // were reported before the kill, so they still count.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                killed = true;
            } else if lockstep && !killed {
                go.write_all(b"\n").unwrap();
            }
        }
        child.wait().unwrap();
        assert!(
            killed,
            "round {round}: child exited by itself after {seen} lines"
        );
        total_lines += seen;

        rt.block_on(verify(dir.path(), &mut model, &mut applied_terms, round));
    }
    println!("crash test: {ROUNDS} kills, {total_lines} reported operations verified");
}

async fn verify(
    dir: &std::path::Path,
    model: &mut Model,
    applied_terms: &mut BTreeMap<u64, u64>,
    round: usize,
) {
    let (mut log, mut sm) = open(dir);
    let state = log.get_log_state().await.unwrap();
    let actual: BTreeMap<u64, u64> = log
        .try_get_log_entries(..)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.log_id.index, e.log_id.leader_id.term))
        .collect();
    let actual_purged = state.last_purged_log_id.map(|l| l.index).unwrap_or(0);
    assert!(
        actual_purged >= model.purged,
        "round {round}: reported purge up to {} undone (log says {actual_purged})",
        model.purged
    );
    if let Some(p) = model.in_flight_purge {
        assert!(actual_purged == model.purged || actual_purged == p);
    } else {
        assert_eq!(
            actual_purged, model.purged,
            "round {round}: unexpected purge"
        );
    }

    let model_last = model
        .log
        .keys()
        .next_back()
        .copied()
        .unwrap_or(model.purged);
    for (&i, &term) in &model.log {
        let may_be_gone = i <= actual_purged || model.in_flight_truncate.is_some_and(|t| i >= t);
        match actual.get(&i) {
            Some(&t) if t == term => {}
            Some(&t) if may_be_gone => {
                assert!(t > term, "round {round}: entry {i} has term {t}, older than reported {term}")
            }
            None if may_be_gone => {}
            other => panic!(
                "round {round}: entry {i} (term {term}) was reported durable but is {other:?} after the crash"
            ),
        }
    }
    for (&i, &t) in &actual {
        if model.log.get(&i) == Some(&t) {
            continue;
        }
        // Only an append that was in flight at the kill may add entries, and
        // it carries the newest term.
        let in_flight_ok =
            (i > model_last || model.in_flight_truncate.is_some_and(|x| i >= x)) && t >= model.term;
        assert!(
            in_flight_ok,
            "round {round}: entry {i} term {t} is on disk but was never reported (truncated entry reappeared?)"
        );
    }

    // The state machine: whatever it lost must still be in the log.
    let (sm_applied, _) = sm.applied_state().await.unwrap();
    let sm_applied = sm_applied.map(|l| l.index).unwrap_or(0);
    assert!(
        sm_applied >= actual_purged,
        "round {round}: state machine at {sm_applied} but the log is purged up to {actual_purged}: applied data lost"
    );
    let target = model.applied.max(sm_applied);
    if target > sm_applied {
        let replay = log
            .try_get_log_entries(sm_applied + 1..=target)
            .await
            .unwrap();
        assert_eq!(
            replay.len() as u64,
            target - sm_applied,
            "round {round}: committed entries missing for re-application"
        );
        sm.apply(replay).await.unwrap();
    }
    for i in model.applied + 1..=target {
        applied_terms.insert(i, actual[&i]);
    }
    let expected = Model::expected_data(applied_terms, target);
    let got: BTreeMap<Vec<u8>, Vec<u8>> = sm
        .engine()
        .scan(b"", usize::MAX)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        got, expected,
        "round {round}: state machine differs after re-applying up to {target}"
    );

    // The next round starts from what is on disk now.
    model.log = actual;
    model.applied = target;
    model.purged = actual_purged;
    model.in_flight_purge = None;
    model.in_flight_truncate = None;
    model.term = state
        .last_log_id
        .map(|l| l.leader_id.term)
        .unwrap_or(model.term);
}
