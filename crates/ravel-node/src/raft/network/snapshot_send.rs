//! Sending a snapshot: its pinned view of the state machine is exported as
//! a stream while it is sent, in checksummed chunks, with a deadline per
//! chunk and one for the whole transfer that grows with the snapshot's
//! size and with the bytes sent (openraft's per-RPC snapshot timeout is
//! sized for one small chunk and would wedge large snapshots). No copy of
//! the data is made first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{Fatal, NetworkError, RemoteError, StreamingError, Timeout, Unreachable};
use openraft::network::RPCTypes;
use openraft::raft::SnapshotResponse;
use openraft::Snapshot;
use ravel_consensus::types::{NodeId, TypeConfig, Vote};
use ravel_proto::raft::SnapshotChunk;
use ravel_transport::TransportError;

use super::{classify, decode, encode, CallError, RaftPeer};
use crate::config::SnapshotSettings;

/// How snapshots travel.
#[derive(Debug, Clone)]
pub struct SnapshotTransfer {
    /// Bytes per chunk.
    pub chunk_bytes: usize,
    /// Longest wait for one chunk to be accepted.
    pub chunk_timeout: Duration,
    /// Time allowed for any snapshot, including its install...
    pub base_timeout: Duration,
    /// ...plus its size at this rate.
    pub min_bytes_per_sec: u64,
}

impl SnapshotTransfer {
    pub fn from_settings(s: &SnapshotSettings) -> Self {
        Self {
            chunk_bytes: s.chunk_bytes,
            chunk_timeout: Duration::from_millis(s.chunk_timeout_ms),
            base_timeout: Duration::from_millis(s.transfer_timeout_ms),
            min_bytes_per_sec: s.min_transfer_bytes_per_sec.max(1),
        }
    }

    /// Deadline of a whole transfer of `bytes`: a large snapshot is not cut
    /// off by a deadline sized for a small one (stalls are caught by the
    /// per-chunk deadline).
    pub fn deadline(&self, bytes: u64) -> Duration {
        self.base_timeout + Duration::from_secs_f64(bytes as f64 / self.min_bytes_per_sec as f64)
    }

    /// Time allowed so far for a transfer of about `estimate` bytes that
    /// has sent `sent`: the estimate's deadline, extended while the bytes
    /// sent outgrow it (a view's size is RocksDB's estimate of its
    /// compressed data; the stream may be larger).
    pub fn allowance(&self, estimate: u64, sent: u64) -> Duration {
        self.deadline(estimate.max(sent))
    }

    /// Resolves, with the time allowed, once a transfer of about
    /// `estimate` bytes that started at `start` has run past its
    /// allowance; `sent` counts the bytes accepted so far.
    pub async fn overdue(
        &self,
        start: tokio::time::Instant,
        estimate: u64,
        sent: &AtomicU64,
    ) -> Duration {
        loop {
            let allowed = self.allowance(estimate, sent.load(Ordering::Relaxed));
            let elapsed = start.elapsed();
            if elapsed >= allowed {
                return allowed;
            }
            tokio::time::sleep(allowed - elapsed).await;
        }
    }
}

impl RaftPeer {
    pub(super) async fn stream_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        sent: Arc<AtomicU64>,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let fail = |e: TransportError| -> StreamingError<TypeConfig, Fatal<NodeId>> {
            match classify(e) {
                CallError::Unreachable(e) => StreamingError::Unreachable(Unreachable::new(&e)),
                CallError::Network(e) => StreamingError::Network(NetworkError::new(&e)),
                CallError::Timeout(after) => StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.from,
                    target: self.target,
                    timeout: after,
                }),
            }
        };
        self.faults
            .check(self.from, self.target)
            .await
            .map_err(fail)?;
        let header = encode(&(vote, snapshot.meta.clone())).map_err(fail)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(2);
        let sink = ChunkSink {
            tx,
            runtime: tokio::runtime::Handle::current(),
            chunk_bytes: self.snapshot.chunk_bytes.max(1),
            chunk_timeout: self.snapshot.chunk_timeout,
            faults: self.faults.clone(),
            from: self.from,
            target: self.target,
            header: Some(header),
            offset: 0,
            sent,
            buf: Vec::new(),
        };
        let data = snapshot.snapshot;
        // Exports the view into the stream (on the view's own thread);
        // stops when the receiver is gone or a chunk waits longer than its
        // deadline.
        let producer = tokio::task::spawn_blocking(move || {
            let (sink, _) = data.export(sink)?;
            sink.finish()
        });

        let mut client = self.client().map_err(fail)?;
        let result = client
            .install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        let produced = producer
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        let reply = match result {
            Ok(r) => r.into_inner(),
            Err(status) => {
                // A producer failure explains a broken stream better than the
                // status does.
                if let Err(e) = produced {
                    return Err(StreamingError::Network(NetworkError::new(&e)));
                }
                return Err(fail(TransportError::from_status(&self.addr, status)));
            }
        };
        let res: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            decode(&self.addr, &reply).map_err(fail)?;
        res.map_err(|fatal| StreamingError::RemoteError(RemoteError::new(self.target, fatal)))
    }
}

/// Cuts an exported snapshot stream into chunks and feeds them to the
/// gRPC call, from a blocking thread.
struct ChunkSink {
    tx: tokio::sync::mpsc::Sender<SnapshotChunk>,
    runtime: tokio::runtime::Handle,
    chunk_bytes: usize,
    chunk_timeout: Duration,
    faults: ravel_transport::Faults,
    from: NodeId,
    target: NodeId,
    /// The transfer's header (vote and snapshot metadata), on the first
    /// chunk.
    header: Option<ravel_proto::raft::RaftMessage>,
    offset: u64,
    /// `offset`, for the whole-transfer deadline.
    sent: Arc<AtomicU64>,
    buf: Vec<u8>,
}

impl ChunkSink {
    fn send(&mut self, data: Vec<u8>, done: bool) -> std::io::Result<()> {
        if self.faults.is_cut(self.from, self.target) {
            return Err(std::io::Error::other("traffic cut (fault injection)"));
        }
        let len = data.len() as u64;
        let chunk = SnapshotChunk {
            header: self.header.take(),
            offset: self.offset,
            crc32: crc32fast::hash(&data),
            data,
            done,
        };
        let (tx, wait) = (&self.tx, self.chunk_timeout);
        // The timer is made inside `block_on`: this thread is not the
        // runtime's.
        let sent = self
            .runtime
            .block_on(async move { tokio::time::timeout(wait, tx.send(chunk)).await });
        match sent {
            Err(_) => Err(std::io::Error::other(format!(
                "chunk at offset {} not taken within {:?}",
                self.offset, self.chunk_timeout
            ))),
            Ok(Err(_)) => Err(std::io::Error::other(
                "the snapshot call ended before the stream did",
            )),
            Ok(Ok(())) => {
                self.offset += len;
                self.sent.store(self.offset, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Sends the rest as the last chunk; the bytes sent.
    fn finish(mut self) -> std::io::Result<u64> {
        let rest = std::mem::take(&mut self.buf);
        self.send(rest, true)?;
        Ok(self.offset)
    }
}

impl std::io::Write for ChunkSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= self.chunk_bytes {
            let rest = self.buf.split_off(self.chunk_bytes);
            let full = std::mem::replace(&mut self.buf, rest);
            self.send(full, false)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_deadline_grows_with_the_snapshot() {
        let t = SnapshotTransfer::from_settings(&SnapshotSettings {
            transfer_timeout_ms: 60_000,
            min_transfer_bytes_per_sec: 1 << 20,
            ..SnapshotSettings::default()
        });
        assert_eq!(t.deadline(0), Duration::from_secs(60));
        // 10 GiB at 1 MiB/s: ten thousand seconds more, not one minute.
        assert_eq!(t.deadline(10 << 30), Duration::from_secs(60 + 10_240));
        // A stream larger than its estimate (data that compresses well) is
        // allowed time for what it sent.
        assert_eq!(t.allowance(1 << 30, 0), Duration::from_secs(60 + 1024));
        assert_eq!(
            t.allowance(1 << 30, 4 << 30),
            Duration::from_secs(60 + 4096)
        );
    }

    #[tokio::test]
    async fn a_transfer_is_overdue_only_once_it_falls_behind_the_minimum_rate() {
        let t = SnapshotTransfer::from_settings(&SnapshotSettings {
            transfer_timeout_ms: 50,
            min_transfer_bytes_per_sec: 1000,
            ..SnapshotSettings::default()
        });
        let sent = AtomicU64::new(0);
        let start = tokio::time::Instant::now();
        // Nothing sent, nothing estimated: overdue after the base time.
        assert_eq!(t.overdue(start, 0, &sent).await, Duration::from_millis(50));
        // 200 bytes sent: 200 ms more, waited for from the same start.
        sent.store(200, Ordering::Relaxed);
        assert_eq!(t.overdue(start, 0, &sent).await, Duration::from_millis(250));
        assert!(start.elapsed() >= Duration::from_millis(250));
    }
}
