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
        SnapshotData = SnapshotFile,
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

/// A state-machine command, replicated as the payload of one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// key := value.
    Set { key: Vec<u8>, value: Vec<u8> },
    /// Remove key (a no-op if absent).
    Delete { key: Vec<u8> },
    /// Return the value of key and remove it, atomically.
    GetAndDelete { key: Vec<u8> },
    /// Several commands in one log entry, applied in order; each gets its own
    /// result. The write batcher builds these so that concurrent clients
    /// share one fsync.
    Batch(Vec<Command>),
    /// key := value only if the key is absent (relocation copies with it,
    /// so a newer write on the destination is never overwritten).
    SetIfAbsent { key: Vec<u8>, value: Vec<u8> },
    /// Remove key only if it holds exactly `value` (relocation removes the
    /// source copy with it).
    DeleteIfEqual { key: Vec<u8>, value: Vec<u8> },
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
    Value(Option<Vec<u8>>),
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

/// A snapshot on disk: the file plus its path, so a received snapshot can
/// be kept (renamed) once installed. Reads, writes and seeks go to the file.
/// An incoming snapshot ([`SnapshotFile::incoming`]) that is dropped before
/// it was handed to the install (a failed or abandoned transfer) deletes its
/// partial file at once.
#[derive(Debug)]
pub struct SnapshotFile {
    /// `None` only after [`SnapshotFile::into_parts`].
    file: Option<tokio::fs::File>,
    path: PathBuf,
    remove_on_drop: bool,
}

impl SnapshotFile {
    /// A complete snapshot file (kept when dropped).
    pub fn new(file: tokio::fs::File, path: PathBuf) -> Self {
        Self {
            file: Some(file),
            path,
            remove_on_drop: false,
        }
    }

    /// A snapshot being received: removed if dropped before installed.
    pub fn incoming(file: tokio::fs::File, path: PathBuf) -> Self {
        Self {
            file: Some(file),
            path,
            remove_on_drop: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file and its path; the caller now owns the file on disk.
    pub fn into_parts(mut self) -> (tokio::fs::File, PathBuf) {
        self.remove_on_drop = false;
        let file = self.file.take().expect("file until into_parts");
        (file, std::mem::take(&mut self.path))
    }

    fn file(self: Pin<&mut Self>) -> Pin<&mut tokio::fs::File> {
        Pin::new(self.get_mut().file.as_mut().expect("file until into_parts"))
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.remove_on_drop {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "removing an abandoned snapshot transfer");
            }
        }
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.file().poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.file().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.file().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.file().poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        self.file().start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        self.file().poll_complete(cx)
    }
}
