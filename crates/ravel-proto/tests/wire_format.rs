//! Pins the wire format of the compatibility messages and the gRPC paths of
//! the compatibility services. Existing Ravel admins and nodes depend on
//! every byte here: if one of these tests fails, a field was renumbered,
//! retyped or renamed, and the change breaks interoperability.

use prost::Message;
use ravel_proto::{admin, node};

fn roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(msg: M, expected: &[u8]) {
    assert_eq!(msg.encode_to_vec(), expected, "encoding of {msg:?}");
    assert_eq!(M::decode(expected).unwrap(), msg, "decoding into {msg:?}");
}

#[test]
fn node_package_messages() {
    roundtrip(
        node::Node {
            node_id: "7".into(),
            grpc_address: "a:1".into(),
            raft_address: "b:2".into(),
            cluster_id: "c".into(),
        },
        &[
            0x0A, 1, b'7', // 1: node_id, string
            0x12, 3, b'a', b':', b'1', // 2: grpc_address, string
            0x1A, 3, b'b', b':', b'2', // 3: raft_address, string
            0x22, 1, b'c', // 4: cluster_id, string
        ],
    );
    roundtrip(node::Void {}, &[]);
    roundtrip(node::Boolean { leader: true }, &[0x08, 1]); // 1: leader, varint
    roundtrip(
        node::Response {
            msg: "ok".into(),
            data: vec![1, 2],
        },
        &[0x0A, 2, b'o', b'k', 0x12, 2, 1, 2], // 1: msg string, 2: data bytes
    );
    roundtrip(
        node::Command {
            operation: "set".into(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        },
        &[0x0A, 3, b's', b'e', b't', 0x12, 1, b'k', 0x1A, 1, b'v'],
    );
}

#[test]
fn admin_package_messages() {
    roundtrip(
        admin::Cluster {
            cluster_id: "c1".into(),
            leader_grpc_address: "g".into(),
            leader_raft_address: "r".into(),
        },
        &[0x0A, 2, b'c', b'1', 0x12, 1, b'g', 0x1A, 1, b'r'],
    );
    roundtrip(admin::Response { data: "x".into() }, &[0x0A, 1, b'x']);
    roundtrip(
        admin::Node {
            node_id: "9".into(),
            grpc_address: "g".into(),
            raft_address: "r".into(),
            cluster_id: "c".into(),
        },
        &[0x0A, 1, b'9', 0x12, 1, b'g', 0x1A, 1, b'r', 0x22, 1, b'c'],
    );
}

#[test]
fn compatibility_rpc_paths() {
    let node_code = include_str!(concat!(env!("OUT_DIR"), "/ravel_cluster_pb.rs"));
    for method in ["Join", "Leave", "Run", "IsLeader"] {
        let path = format!("\"/RavelClusterPB.RavelNode/{method}\"");
        assert!(node_code.contains(&path), "missing gRPC path {path}");
    }
    let admin_code = include_str!(concat!(env!("OUT_DIR"), "/ravel_cluster_admin_pb.rs"));
    for method in [
        "JoinExistingCluster",
        "JoinAsClusterLeader",
        "UpdateClusterLeader",
        "LeaveCluster",
        "GetClusterLeader",
        "InitiateDataRelocation",
    ] {
        let path = format!("\"/RavelClusterAdminPB.RavelClusterAdmin/{method}\"");
        assert!(admin_code.contains(&path), "missing gRPC path {path}");
    }
}
