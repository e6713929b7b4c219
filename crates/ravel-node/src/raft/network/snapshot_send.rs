//! Sending a snapshot: streamed from its file in checksummed chunks, with
//! a deadline per chunk and one for the whole transfer that grows with the
//! snapshot's size (openraft's per-RPC snapshot timeout is sized for one
//! small chunk and would wedge large snapshots).

use std::time::Duration;

use openraft::error::{Fatal, NetworkError, RemoteError, StreamingError, Timeout, Unreachable};
use openraft::network::RPCTypes;
use openraft::raft::SnapshotResponse;
use openraft::Snapshot;
use ravel_consensus::types::{NodeId, TypeConfig, Vote};
use ravel_proto::raft::SnapshotChunk;
use ravel_transport::TransportError;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

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
}

impl RaftPeer {
    pub(super) async fn stream_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
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
        let mut file = snapshot.snapshot;
        file.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;

        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(2);
        let chunk_bytes = self.snapshot.chunk_bytes.max(1);
        let chunk_timeout = self.snapshot.chunk_timeout;
        let faults = self.faults.clone();
        let (from, target) = (self.from, self.target);
        // Reads the file and feeds the stream; stops when the receiver is
        // gone or a chunk waits longer than its deadline.
        let producer = tokio::spawn(async move {
            let mut offset = 0u64;
            let mut header = Some(header);
            loop {
                let mut data = vec![0u8; chunk_bytes];
                let mut filled = 0;
                while filled < chunk_bytes {
                    let n = file.read(&mut data[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                data.truncate(filled);
                let done = filled < chunk_bytes;
                if faults.is_cut(from, target) {
                    return Err(std::io::Error::other("traffic cut (fault injection)"));
                }
                let chunk = SnapshotChunk {
                    header: header.take(),
                    offset,
                    crc32: crc32fast::hash(&data),
                    data,
                    done,
                };
                offset += filled as u64;
                match tokio::time::timeout(chunk_timeout, tx.send(chunk)).await {
                    Err(_) => {
                        return Err(std::io::Error::other(format!(
                            "chunk at offset {offset} not taken within {chunk_timeout:?}"
                        )))
                    }
                    Ok(Err(_)) => return Ok(offset), // receiver gone: the call ended
                    Ok(Ok(())) => {}
                }
                if done {
                    return Ok(offset);
                }
            }
        });

        let mut client = self.client().map_err(fail)?;
        let result = client
            .install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        let produced = producer.await;
        let reply = match result {
            Ok(r) => r.into_inner(),
            Err(status) => {
                // A producer failure explains a broken stream better than the
                // status does.
                if let Ok(Err(e)) = produced {
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
    }
}
