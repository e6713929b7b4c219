//! The one error type of the storage engine. Every variant names the data
//! directory, so an operator reading a log line knows which disk to look at.

use std::path::PathBuf;

/// Everything that can go wrong opening or using a node's data directory.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// `open_existing` was asked for a directory that is not there.
    #[error("data directory {path} does not exist")]
    Missing { path: PathBuf },

    /// Another process (or another `Engine` in this process) holds RocksDB's
    /// lock on the directory.
    #[error("data directory {path} is locked by another process (is another ravel-node using it?): {detail}")]
    Locked { path: PathBuf, detail: String },

    /// RocksDB or our own checks found damaged files.
    #[error("data directory {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },

    /// The directory holds something that is not a Ravel data directory.
    #[error("{path} is not a Ravel data directory: {detail}")]
    NotRavel { path: PathBuf, detail: String },

    /// The directory was written by a build with another on-disk format.
    #[error("data directory {path} has on-disk format version {found}; this build reads version {expected}")]
    FormatVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    /// A file-system operation outside RocksDB failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Any other RocksDB failure.
    #[error("RocksDB error in {path}: {source}")]
    Rocks {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },

    /// A snapshot stream that fails its checks; nothing of it was applied.
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
}

impl StorageError {
    /// Classifies a RocksDB error by what an operator has to do about it.
    pub(crate) fn from_rocks(path: &std::path::Path, err: rocksdb::Error) -> Self {
        let path = path.to_path_buf();
        let text = err.to_string();
        match err.kind() {
            rocksdb::ErrorKind::Corruption => StorageError::Corrupt { path, detail: text },
            rocksdb::ErrorKind::IOError if text.to_ascii_lowercase().contains("lock") => {
                StorageError::Locked { path, detail: text }
            }
            _ => StorageError::Rocks { path, source: err },
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
