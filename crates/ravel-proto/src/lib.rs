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

/// The status message with which existing nodes recognise a duplicate join
/// (sent with code `UNKNOWN`), per the wire-protocol contract.
pub const NODE_ALREADY_EXISTS: &str = "node already exists";
