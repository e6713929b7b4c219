//! Small JSON state files (a node's identity, the admin's registry) written
//! so that a crash at any point leaves either the old or the new content:
//! write a temp file, fsync it, rename it over the old one, fsync the
//! directory. Returns only once the new content is durable.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl FileError {
    pub fn path(&self) -> &Path {
        match self {
            FileError::Io { path, .. } | FileError::Corrupt { path, .. } => path,
        }
    }
}

/// Writes `value` as pretty JSON to `path`, durably and atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), FileError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| FileError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("cannot encode: {e}"),
    })?;
    write_bytes(path, &bytes)
}

/// Writes `bytes` to `path`, durably and atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let io = |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    sync_dir(dir).map_err(io)
}

/// Makes a directory's entries (a create, a rename) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Reads the JSON file at `path`; `None` if it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, FileError> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::Io {
            path: path.to_path_buf(),
            source,
        }),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| FileError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_replace_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), None);
        write_json(&p, &vec![1u32, 2]).unwrap();
        write_json(&p, &vec![3u32]).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), Some(vec![3]));
        assert!(!dir.path().join("state.json.tmp").exists());
        std::fs::write(&p, b"[1,").unwrap();
        let err = read_json::<Vec<u32>>(&p).unwrap_err();
        assert!(err.to_string().contains("state.json"), "{err}");
        assert!(matches!(err, FileError::Corrupt { .. }));
    }
}
