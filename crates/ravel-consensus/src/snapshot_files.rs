//! Snapshots as files: where they live, how they are named (the newest
//! sorts last), building one from a consistent view of the database, and
//! keeping a complete one under its final name.

use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ravel_storage::Engine;

use crate::codec;
use crate::state_machine::{invalid, LAST_APPLIED, MEMBERSHIP};
use crate::types::{LogId, SnapshotMeta, StoredMembership};

const SNAPSHOT_SUFFIX: &str = ".snap";

/// Where snapshot files live and how they are chunked.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotDir {
    pub(crate) dir: PathBuf,
    pub(crate) chunk_bytes: usize,
}

pub(crate) fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}")
}

impl SnapshotDir {
    fn final_path(&self, meta: &SnapshotMeta) -> PathBuf {
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        // Zero-padded index first: lexical order is snapshot age.
        self.dir.join(format!(
            "snapshot-{index:020}-{}{SNAPSHOT_SUFFIX}",
            meta.snapshot_id
        ))
    }

    /// Exports a consistent snapshot into a new file, durably.
    pub(crate) fn build(&self, engine: &Engine) -> std::io::Result<(SnapshotMeta, PathBuf)> {
        let tmp = self.dir.join(format!("building-{}.part", unique()));
        let file = std::fs::File::create(&tmp)?;
        let mut meta_out = None;
        let mut writer = BufWriter::new(file);
        engine
            .export_snapshot(&mut writer, self.chunk_bytes, |sm_meta| {
                let meta = snapshot_meta(sm_meta);
                let header = match &meta {
                    Ok(m) => codec::encode(m).unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                meta_out = Some(meta);
                header
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let meta = meta_out.expect("export calls the header function")?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        self.keep(&tmp, &meta)?;
        Ok((meta.clone(), self.final_path(&meta)))
    }

    /// Moves a complete snapshot file to its final name, durably, and removes
    /// older snapshots.
    pub(crate) fn keep(&self, from: &Path, meta: &SnapshotMeta) -> std::io::Result<()> {
        let to = self.final_path(meta);
        std::fs::rename(from, &to)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path != to && path.extension().and_then(|e| e.to_str()) == Some("snap") && path < to
            {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// The newest complete snapshot file and its metadata.
    pub(crate) fn newest(&self) -> std::io::Result<Option<(SnapshotMeta, PathBuf)>> {
        let mut snaps: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("snap"))
            .collect();
        snaps.sort();
        let Some(path) = snaps.pop() else {
            return Ok(None);
        };
        let file = std::fs::File::open(&path)?;
        let header = ravel_storage::read_snapshot_header(BufReader::new(file))
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        let meta =
            codec::decode(&header).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        Ok(Some((meta, path)))
    }
}

/// The snapshot metadata for a state machine whose metadata column family
/// holds `sm_meta`.
fn snapshot_meta(sm_meta: &[(String, Vec<u8>)]) -> std::io::Result<SnapshotMeta> {
    let mut last_log_id = None;
    let mut last_membership = StoredMembership::default();
    for (k, v) in sm_meta {
        match k.as_str() {
            LAST_APPLIED => {
                last_log_id =
                    codec::decode::<Option<LogId>>(v).map_err(|e| invalid(e.to_string()))?
            }
            MEMBERSHIP => last_membership = codec::decode(v).map_err(|e| invalid(e.to_string()))?,
            _ => {}
        }
    }
    let snapshot_id = match last_log_id {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, unique()),
        None => format!("0-0-{}", unique()),
    };
    Ok(SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id,
    })
}
