//! # ravel-proto
//!
//! Generated tonic/prost code for every gRPC service a Ravel process speaks:
//!
//! - [`node`] (`RavelClusterPB`): the compatibility node service, called by
//!   admins and peers. Fixed by the wire-protocol contract.
//! - [`admin`] (`RavelClusterAdminPB`): the compatibility admin service,
//!   called by nodes. Fixed by the wire-protocol contract.
//! - [`raft`] (`ravel.raft.v1`): the internal Raft transport.
//! - [`ext`] (`ravel.node.v1`): Ravel-specific node RPCs.

#![allow(clippy::all, clippy::pedantic)]

/// `RavelClusterPB`: the node service of the compatibility contract.
pub mod node {
    include!(concat!(env!("OUT_DIR"), "/ravel_cluster_pb.rs"));
}

/// `RavelClusterAdminPB`: the admin service of the compatibility contract.
pub mod admin {
    include!(concat!(env!("OUT_DIR"), "/ravel_cluster_admin_pb.rs"));
}

/// `ravel.raft.v1`: Raft RPCs between replicas.
pub mod raft {
    include!(concat!(env!("OUT_DIR"), "/ravel.raft.v1.rs"));
}

/// `ravel.node.v1`: Ravel-specific node RPCs.
pub mod ext {
    include!(concat!(env!("OUT_DIR"), "/ravel.node.v1.rs"));
}

/// The operation names of `RavelClusterPB.Command.operation`.
pub mod ops {
    pub const SET: &str = "set";
    pub const GET: &str = "get";
    pub const DELETE: &str = "delete";
    pub const GET_AND_DELETE: &str = "getAndDelete";
}

/// gRPC metadata keys Ravel processes send next to the fixed messages.
/// Existing peers ignore them.
pub mod metadata {
    /// On responses and errors: the gRPC address of the leader that served
    /// the request, or that the answering node believes leads.
    pub const LEADER: &str = "x-ravel-leader";
    /// On requests: forwarded by a follower; never forwarded again.
    pub const FORWARDED: &str = "x-ravel-forwarded";
    /// On write requests: `session.seq.acked_below` (hex), the request's
    /// identity in its client's session, the same on every attempt, so that
    /// it takes effect once (`ravel_consensus::sessions`).
    pub const REQUEST_ID: &str = "x-ravel-request";
}

/// The status message with which existing nodes recognise a duplicate join
/// (sent with code `UNKNOWN`), per the wire-protocol contract.
pub const NODE_ALREADY_EXISTS: &str = "node already exists";

/// The hash partition of a key: the one function the admin's hash ring and
/// the nodes' partition listing share. FNV-1a over the key, then a
/// splitmix64 finaliser to spread similar keys; stable across versions and
/// platforms (never `std`'s hasher, whose output may change).
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The partition (out of `count`) that owns `key`.
pub fn partition_of(key: &[u8], count: u32) -> u32 {
    (key_hash(key) % u64::from(count.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned() {
        // Changing these values moves every key: existing data would be
        // looked for in the wrong cluster.
        // Expected values computed independently (Python) from the spec.
        assert_eq!(key_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(key_hash(b"user:42"), 0xd68c_b863_fc5e_0c34);
        assert_eq!(key_hash(b"a"), 0x02c0_bdbf_4814_20f8);
        assert_eq!(partition_of(b"", 271), 31);
        assert_eq!(partition_of(b"user:42", 271), 62);
        assert_eq!(partition_of(b"a", 271), 84);
        assert_eq!(partition_of(b"x", 0), 0);
    }
}
