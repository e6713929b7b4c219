//! The Raft type configuration and the replicated command.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Replica identity inside a Raft group. The admin protocol carries it as a
/// decimal string.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Ravel's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub type RaftStorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, BasicNode>;
/// Raft's server state alone (leader, term, membership): its watch wakes
/// only when one of them changes, not with every write.
pub type RaftServerMetrics = openraft::metrics::RaftServerMetrics<NodeId, BasicNode>;

/// A state-machine command, replicated as the payload of one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// key := value.
    Set {
        #[serde(with = "crate::codec::bytes")]
        key: Vec<u8>,
        #[serde(with = "crate::codec::bytes")]
        value: Vec<u8>,
    },
    /// Remove key (a no-op if absent).
    Delete {
        #[serde(with = "crate::codec::bytes")]
        key: Vec<u8>,
    },
    /// Return the value of key and remove it, atomically.
    GetAndDelete {
        #[serde(with = "crate::codec::bytes")]
        key: Vec<u8>,
    },
    /// Several commands in one log entry, applied in order; each gets its own
    /// result. The write batcher builds these so that concurrent clients
    /// share one fsync.
    Batch(Vec<Command>),
    /// key := value only if the key is absent (relocation copies with it,
    /// so a newer write on the destination is never overwritten).
    SetIfAbsent {
        #[serde(with = "crate::codec::bytes")]
        key: Vec<u8>,
        #[serde(with = "crate::codec::bytes")]
        value: Vec<u8>,
    },
    /// Remove key only if it holds exactly `value`. Written by earlier
    /// versions (a relocation's source deletes); still applied when read
    /// from a log or a peer. New deletes are [`Command::DeleteIfDigest`].
    DeleteIfEqual {
        #[serde(with = "crate::codec::bytes")]
        key: Vec<u8>,
        #[serde(with = "crate::codec::bytes")]
        value: Vec<u8>,
    },
    /// `cmd` as request `id` of a client session, proposed at `at_ms` (the
    /// leader's clock, milliseconds since the Unix epoch): applied at most
    /// once however often it reaches the log (`crate::sessions`).
    Once {
        id: RequestId,
        at_ms: u64,
        cmd: Box<Command>,
    },
    /// `cmd`, routed by the admin's ring generation `epoch`: applied unless
    /// the cluster is fenced at a newer generation, then refused without
    /// effect ([`CommandResult::Fenced`]): the ring it was routed by no
    /// longer holds (the key's partition has moved away, or is moving).
    Fenced { epoch: u64, cmd: Box<Command> },
    /// Raise the cluster's fence to `epoch` (never lowers it): from this
    /// point of the log on, writes routed by an older ring are refused.
    Fence { epoch: u64 },
    /// Remove key only if its value's [`value_digest`] is `digest`: what a
    /// relocation removes the source copy with, so that the source's log
    /// carries 32 bytes per key rather than the value
    /// ([`Command::delete_if_equal`] builds it). Appended after every other
    /// variant: bincode encodes the variant's index.
    DeleteIfDigest {
        #[serde(with = "crate::codec::bytes")]
        key: Vec<u8>,
        digest: ValueDigest,
    },
    /// Remove every key of the given partitions of a `count`-partition
    /// ring (`ravel_proto::partition_of`): what a relocation removes a
    /// moved partition from its fenced old owner with, once all of it is
    /// copied. One range delete per partition when `count` is the stored
    /// layout's (`ravel_storage::LAYOUT_PARTITIONS`). Appended last (see
    /// above).
    DeletePartitions { count: u32, partitions: Vec<u32> },
}

/// SHA-256 of a value. A collision would let a relocation delete a value
/// written after the copy it compared, so the hash must resist chosen
/// collisions: a client picks its values.
pub type ValueDigest = [u8; 32];

/// The [`ValueDigest`] of `value`.
pub fn value_digest(value: &[u8]) -> ValueDigest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, value).as_ref());
    out
}

impl Command {
    /// Remove `key` only if it holds exactly `value`, replicated as its
    /// digest ([`Command::DeleteIfDigest`]).
    pub fn delete_if_equal(key: Vec<u8>, value: &[u8]) -> Command {
        Command::DeleteIfDigest {
            key,
            digest: value_digest(value),
        }
    }
}

/// One request of a client session (see `crate::sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    /// Random per client process.
    pub session: u64,
    /// Increases with every request of the session.
    pub seq: u64,
    /// Every lower `seq` of the session has been answered or abandoned.
    pub acked_below: u64,
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied; nothing to return (also the result of blank and membership
    /// entries).
    Done,
    /// The value removed by `GetAndDelete`, `None` if the key was absent.
    Value(#[serde(with = "crate::codec::option_bytes")] Option<Vec<u8>>),
    /// One result per command of a `Batch`, in order.
    Batch(Vec<CommandResult>),
    /// Whether a conditional command took effect.
    Applied(bool),
    /// Not applied: the request's session had already moved past it (its
    /// client had given up on it), or holds too many unanswered requests.
    Stale,
    /// Not applied: routed by a ring generation older than the cluster's
    /// fence (`fence`).
    Fenced { fence: u64 },
}

/// What openraft carries as a snapshot's data. Either:
///
/// - a **view**: a consistent, pinned view of this replica's state machine
///   ([`ravel_storage::PinnedView`]), exported as a snapshot stream only
///   when a peer needs it. Taking a snapshot copies nothing; or
/// - an **incoming** file: a snapshot being received from a peer (or a view
///   written out to be installed), removed if dropped before it was handed
///   to the install (a failed or abandoned transfer).
///
/// Reads, writes and seeks (openraft's chunked transfer, which Ravel does
/// not use) work on incoming files only.
#[derive(Debug)]
pub struct SnapshotData {
    inner: DataInner,
}

#[derive(Debug)]
enum DataInner {
    View {
        /// `None` only after [`SnapshotData::export`] took it.
        view: Option<ravel_storage::PinnedView>,
        /// The stream's header: the encoded [`SnapshotMeta`].
        header: Vec<u8>,
        chunk_bytes: usize,
        observer: crate::observe::StorageObserver,
    },
    Incoming {
        /// `None` only after [`SnapshotData::into_incoming`].
        file: Option<tokio::fs::File>,
        path: PathBuf,
    },
}

impl SnapshotData {
    /// A pinned view whose stream header is `header`.
    pub(crate) fn view(
        view: ravel_storage::PinnedView,
        header: Vec<u8>,
        chunk_bytes: usize,
        observer: crate::observe::StorageObserver,
    ) -> Self {
        Self {
            inner: DataInner::View {
                view: Some(view),
                header,
                chunk_bytes,
                observer,
            },
        }
    }

    /// A snapshot being received into `path`: removed if dropped before
    /// installed.
    pub fn incoming(file: tokio::fs::File, path: PathBuf) -> Self {
        Self {
            inner: DataInner::Incoming {
                file: Some(file),
                path,
            },
        }
    }

    /// The file being received, if this is one.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner {
            DataInner::Incoming { path, .. } => Some(path),
            DataInner::View { .. } => None,
        }
    }

    /// Roughly how many bytes an export writes (RocksDB's estimate of the
    /// stored data, which is compressed), for deadlines; 0 for a file.
    pub fn estimated_bytes(&self) -> u64 {
        match &self.inner {
            DataInner::View { view, .. } => view.as_ref().map_or(0, |v| v.estimated_bytes()),
            DataInner::Incoming { .. } => 0,
        }
    }

    /// Writes a view as a snapshot stream into `out`, blocking (run it off
    /// the async workers); gives `out` back with the bytes written.
    pub fn export<W: std::io::Write + Send + 'static>(
        mut self,
        out: W,
    ) -> std::io::Result<(W, u64)> {
        let DataInner::View {
            view,
            header,
            chunk_bytes,
            observer,
        } = &mut self.inner
        else {
            return Err(std::io::Error::other(
                "a received snapshot file is installed, not sent on",
            ));
        };
        let view = view
            .take()
            .ok_or_else(|| std::io::Error::other("the snapshot view was already exported"))?;
        let started = std::time::Instant::now();
        let (out, stats) = view
            .export(out, *chunk_bytes, std::mem::take(header))
            .map_err(std::io::Error::other)?;
        observer.report(|e| e.snapshot_sent(stats.bytes, started.elapsed()));
        Ok((out, stats.bytes))
    }

    /// The incoming file and its path (the caller now owns the file on
    /// disk), or the view back.
    pub(crate) fn into_incoming(mut self) -> Result<(tokio::fs::File, PathBuf), Self> {
        match &mut self.inner {
            DataInner::Incoming { file, path } => {
                let file = file.take().expect("file until into_incoming");
                let path = std::mem::take(path);
                Ok((file, path))
            }
            DataInner::View { .. } => Err(self),
        }
    }

    fn file(self: Pin<&mut Self>) -> std::io::Result<Pin<&mut tokio::fs::File>> {
        match &mut self.get_mut().inner {
            DataInner::Incoming {
                file: Some(file), ..
            } => Ok(Pin::new(file)),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a snapshot view is exported as a stream, not read as a file",
            )),
        }
    }
}

impl Drop for SnapshotData {
    fn drop(&mut self) {
        if let DataInner::Incoming {
            file: Some(_),
            path,
        } = &self.inner
        {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "removing an abandoned snapshot transfer");
            }
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.file() {
            Ok(f) => f.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.file() {
            Ok(f) => f.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.file() {
            Ok(f) => f.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.file() {
            Ok(f) => f.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        self.file()?.start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        match self.file() {
            Ok(f) => f.poll_complete(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 180-2's test vector: the digest is SHA-256, nothing weaker.
    #[test]
    fn the_value_digest_is_sha256() {
        let hex: String = value_digest(b"abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
