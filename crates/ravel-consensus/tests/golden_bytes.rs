//! The on-disk and on-wire bytes of `ravel_consensus::codec`, pinned.
//!
//! Every value openraft hands us to store (log entries, the vote, the
//! committed and applied log ids, memberships, snapshot metadata) is
//! written as a version byte plus bincode 1.x. These tests fail if any of
//! those bytes change: a change makes existing data directories unreadable
//! (or, worse, misread), so it needs a new `CODEC_VERSION` and a decoder for
//! the old one. They also pin the encoding we must keep reading when we
//! leave bincode 1.x (RUSTSEC-2025-0141, unmaintained): see "Leaving
//! bincode" in ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{BasicNode, CommittedLeaderId, EntryPayload, Membership};
use ravel_consensus::codec::{decode, encode};
use ravel_consensus::types::{Entry, LogId, SnapshotMeta, StoredMembership, Vote};
use ravel_consensus::Command;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn membership() -> Membership<u64, BasicNode> {
    Membership::new(
        vec![BTreeSet::from([1, 2])],
        BTreeMap::from([
            (1, BasicNode::new("127.0.0.1:7101")),
            (2, BasicNode::new("127.0.0.1:7102")),
            (3, BasicNode::new("127.0.0.1:7103")),
        ]),
    )
}

/// Encodes `value`, checks the bytes against `expected` (hex), and checks
/// that the pinned bytes decode back to `value`.
fn pin<T>(what: &str, value: &T, expected: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(value).unwrap();
    assert_eq!(hex(&bytes), expected, "{what}: encoding changed");
    let raw: Vec<u8> = (0..expected.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&expected[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(
        &decode::<T>(&raw).unwrap(),
        value,
        "{what}: decoding changed"
    );
}

#[test]
fn log_entries() {
    let set = Entry {
        log_id: log_id(2, 42),
        payload: EntryPayload::Normal(Command::Set {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }),
    };
    pin("set entry", &set, SET_ENTRY);
    let batch = Entry {
        log_id: log_id(3, 43),
        payload: EntryPayload::Normal(Command::Batch(vec![
            Command::Set {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            },
            Command::Delete { key: b"b".to_vec() },
            Command::GetAndDelete { key: b"c".to_vec() },
            Command::SetIfAbsent {
                key: b"d".to_vec(),
                value: b"2".to_vec(),
            },
            Command::DeleteIfEqual {
                key: b"e".to_vec(),
                value: b"3".to_vec(),
            },
        ])),
    };
    pin("batch entry", &batch, BATCH_ENTRY);
    let blank = Entry {
        log_id: log_id(4, 44),
        payload: EntryPayload::Blank,
    };
    pin("blank entry", &blank, BLANK_ENTRY);
    let member = Entry {
        log_id: log_id(5, 45),
        payload: EntryPayload::Membership(membership()),
    };
    pin("membership entry", &member, MEMBERSHIP_ENTRY);
}

#[test]
fn raft_metadata() {
    pin("committed vote", &Vote::new_committed(7, 2), COMMITTED_VOTE);
    pin("uncommitted vote", &Vote::new(8, 3), VOTE);
    pin("log id", &Some(log_id(2, 42)), SOME_LOG_ID);
    pin("no log id", &None::<LogId>, NO_LOG_ID);
}

#[test]
fn state_machine_metadata() {
    let stored = StoredMembership::new(Some(log_id(5, 45)), membership());
    pin("stored membership", &stored, STORED_MEMBERSHIP);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(6, 100)),
        last_membership: stored,
        snapshot_id: "6-100-abc".into(),
    };
    pin("snapshot meta", &meta, SNAPSHOT_META);
}

/// The commands added after the first release of the format (exactly-once
/// sessions and ring fencing), and the results the state machine records
/// for client sessions (`sm_meta`), pinned the same way.
#[test]
fn session_and_fencing_commands_and_recorded_results() {
    use ravel_consensus::types::{CommandResult, RequestId};
    let once = Entry {
        log_id: log_id(6, 46),
        payload: EntryPayload::Normal(Command::Once {
            id: RequestId {
                session: 0x1122_3344_5566_7788,
                seq: 9,
                acked_below: 7,
            },
            at_ms: 1_764_000_000_000,
            cmd: Box::new(Command::Fenced {
                epoch: 5,
                cmd: Box::new(Command::Delete { key: b"f".to_vec() }),
            }),
        }),
    };
    pin("once/fenced entry", &once, ONCE_FENCED_ENTRY);
    let fence = Entry {
        log_id: log_id(6, 47),
        payload: EntryPayload::Normal(Command::Fence { epoch: 6 }),
    };
    pin("fence entry", &fence, FENCE_ENTRY);
    let results = CommandResult::Batch(vec![
        CommandResult::Done,
        CommandResult::Value(Some(b"v".to_vec())),
        CommandResult::Value(None),
        CommandResult::Applied(true),
        CommandResult::Stale,
        CommandResult::Fenced { fence: 6 },
    ]);
    pin("recorded results", &results, RESULTS);
}

/// The relocation's delete by digest (added after the session and fencing
/// commands): the key, then the 32 bytes of SHA-256 of the value, no length.
#[test]
fn delete_if_digest_command() {
    let entry = Entry {
        log_id: log_id(7, 48),
        payload: EntryPayload::Normal(Command::delete_if_equal(b"e".to_vec(), b"3")),
    };
    pin("delete-if-digest entry", &entry, DELETE_IF_DIGEST_ENTRY);
}

/// The relocation's removal of whole partitions (added after the delete
/// by digest): the count, then the partitions as a u64 length and u32s.
#[test]
fn delete_partitions_command() {
    let entry = Entry {
        log_id: log_id(7, 49),
        payload: EntryPayload::Normal(Command::DeletePartitions {
            count: 271,
            partitions: vec![3, 260],
        }),
    };
    pin("delete-partitions entry", &entry, DELETE_PARTITIONS_ENTRY);
}

// Written by hand from the layout above: variant 10, count 271 (0x10f),
// two partitions, 3 and 260 (0x104).
const DELETE_PARTITIONS_ENTRY: &str =
    "01070000000000000001000000000000003100000000000000010000000a0000000f01000002000000000000000300000004010000";
// SHA-256("3") = 4e07408562bedb8b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce.
const DELETE_IF_DIGEST_ENTRY: &str =
    "0107000000000000000100000000000000300000000000000001000000090000000100000000000000654e07408562bedb8b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce";
const ONCE_FENCED_ENTRY: &str =
    "01060000000000000001000000000000002e00000000000000010000000600000088776655443322110900000000000000070000000000000000e897b69a01000007000000050000000000000001000000010000000000000066";
const FENCE_ENTRY: &str =
    "01060000000000000001000000000000002f0000000000000001000000080000000600000000000000";
const RESULTS: &str =
    "010200000006000000000000000000000001000000010100000000000000760100000000030000000104000000050000000600000000000000";

// Captured from the encoder of CODEC_VERSION 1 (bincode 1.3, fixed-width
// little-endian integers, u64 lengths); never regenerate them to make a
// failing test pass.
const SET_ENTRY: &str =
    "01020000000000000001000000000000002a00000000000000010000000000000001000000000000006b010000000000000076";
const BATCH_ENTRY: &str =
    "01030000000000000001000000000000002b00000000000000010000000300000005000000000000000000000001000000000000006101000000000000003101000000010000000000000062020000000100000000000000630400000001000000000000006401000000000000003205000000010000000000000065010000000000000033";
const BLANK_ENTRY: &str = "01040000000000000001000000000000002c0000000000000000000000";
const MEMBERSHIP_ENTRY: &str =
    "01050000000000000001000000000000002d00000000000000020000000100000000000000020000000000000001000000000000000200000000000000030000000000000001000000000000000e000000000000003132372e302e302e313a3731303102000000000000000e000000000000003132372e302e302e313a3731303203000000000000000e000000000000003132372e302e302e313a37313033";
const COMMITTED_VOTE: &str = "010700000000000000020000000000000001";
const VOTE: &str = "010800000000000000030000000000000000";
const SOME_LOG_ID: &str = "0101020000000000000001000000000000002a00000000000000";
const NO_LOG_ID: &str = "0100";
const STORED_MEMBERSHIP: &str =
    "0101050000000000000001000000000000002d000000000000000100000000000000020000000000000001000000000000000200000000000000030000000000000001000000000000000e000000000000003132372e302e302e313a3731303102000000000000000e000000000000003132372e302e302e313a3731303203000000000000000e000000000000003132372e302e302e313a37313033";
const SNAPSHOT_META: &str =
    "010106000000000000000100000000000000640000000000000001050000000000000001000000000000002d000000000000000100000000000000020000000000000001000000000000000200000000000000030000000000000001000000000000000e000000000000003132372e302e302e313a3731303102000000000000000e000000000000003132372e302e302e313a3731303203000000000000000e000000000000003132372e302e302e313a373130330900000000000000362d3130302d616263";
