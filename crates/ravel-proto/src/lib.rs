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

/// Every service's descriptors (an encoded `FileDescriptorSet`), served by
/// gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ravel_descriptor.bin"));

/// The gRPC reflection service over [`FILE_DESCRIPTOR_SET`]: `grpcurl`
/// lists and calls every service without the `.proto` files.
pub fn reflection_service() -> tonic_reflection::server::v1::ServerReflectionServer<
    impl tonic_reflection::server::v1::ServerReflection,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor set compiled into this binary is valid")
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
    /// On `UpdateClusterLeader`: the Raft term (decimal) in which the
    /// reporting node leads, so the admin keeps the newest report however
    /// late an old one arrives. Reports without it (existing nodes) are
    /// taken as they come.
    pub const TERM: &str = "x-ravel-term";
    /// On writes from the admin: the generation of the ring the request
    /// was routed by (decimal). A cluster fenced at a newer generation (the
    /// admin fences a cluster before moving partitions out of it) refuses
    /// the write with `FAILED_PRECONDITION`, not applied: it was routed by
    /// a ring that no longer holds. Writes without it (existing admins,
    /// users' clients) are not fenced.
    pub const RING_EPOCH: &str = "x-ravel-ring-epoch";

    /// The ring generation a request carries ([`RING_EPOCH`]), if any.
    pub fn ring_epoch(map: &tonic::metadata::MetadataMap) -> Result<Option<u64>, String> {
        let Some(v) = map.get(RING_EPOCH) else {
            return Ok(None);
        };
        v.to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{RING_EPOCH} must be a decimal generation, got {v:?}"))
    }

    /// Marks a request as routed by ring generation `epoch`.
    pub fn insert_ring_epoch(map: &mut tonic::metadata::MetadataMap, epoch: u64) {
        map.insert(RING_EPOCH, tonic::metadata::MetadataValue::from(epoch));
    }
}

/// The status message with which existing nodes recognise a duplicate join
/// (sent with code `UNKNOWN`), per the wire-protocol contract.
/// Message sizes: the one place every gRPC size limit comes from.
pub mod limits {
    /// The largest value any configuration may allow (`max_value_bytes`).
    pub const MAX_VALUE_BYTES: usize = 32 << 20;
    /// The largest key any configuration may allow (`max_key_bytes`).
    pub const MAX_KEY_BYTES: usize = 64 << 10;
    /// Framing around one key and value in a request or answer.
    pub const ENVELOPE_BYTES: usize = 64 << 10;
    /// What a client (a forwarding node, the admin) accepts from a node:
    /// the largest value any node may be configured for, plus a
    /// `ListPartitions` page (bounded by [`LIST_PAGE_BYTES`] plus one entry).
    pub const MAX_MESSAGE_BYTES: usize =
        MAX_VALUE_BYTES + MAX_KEY_BYTES + LIST_PAGE_BYTES + ENVELOPE_BYTES;
    /// A `ListPartitions` page stops growing once its keys and values
    /// reach this size (it always holds at least one entry).
    pub const LIST_PAGE_BYTES: usize = 4 << 20;
    /// A `SetIfAbsentBatch` / `DeleteIfEqualBatch` holds at most this many
    /// entries ...
    pub const MOVE_BATCH_ENTRIES: usize = 4096;
    /// ... and at most this many bytes of keys and values, unless it holds
    /// a single entry (bounded by the node's key and value limits).
    pub const MOVE_BATCH_BYTES: usize = 1 << 20;

    /// The largest request a node configured for `max_key` and `max_value`
    /// decodes; larger ones are refused with RESOURCE_EXHAUSTED.
    pub const fn max_request_bytes(max_key: usize, max_value: usize) -> usize {
        max_key + max_value + ENVELOPE_BYTES
    }

    /// The largest `RavelNodeExt` request such a node decodes: a single
    /// entry as above, or a move batch (its framing, under 16 bytes per
    /// entry, fits in [`ENVELOPE_BYTES`]).
    pub const fn max_ext_request_bytes(max_key: usize, max_value: usize) -> usize {
        max_request_bytes(max_key, max_value) + MOVE_BATCH_BYTES + ENVELOPE_BYTES
    }
}

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
