//! An exclusive, advisory lock on a directory, held by a running process
//! for as long as it lives (`flock` on a lock file). The file names the
//! holder's pid, so a second process can say who holds it, and `ravel-node
//! kill` can stop the right process: a pid file left behind by a crash is
//! recognised as stale because nobody holds its lock (the kernel drops the
//! lock with the process), so a reused pid is never signalled.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path} is locked by another running process{}: only one process may use this directory", holder_text(*.pid))]
    Held { path: PathBuf, pid: Option<i32> },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn holder_text(pid: Option<i32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DirLock {
    file: File,
    path: PathBuf,
}

fn try_flock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a file descriptor we own.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn read_pid(file: &mut File) -> Option<i32> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

impl DirLock {
    /// Takes the lock at `path` (created if missing) and records this
    /// process's pid in it, or says which process holds it.
    pub fn acquire(path: &Path) -> Result<DirLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        if !try_flock(&file).map_err(io)? {
            return Err(LockError::Held {
                path: path.to_path_buf(),
                pid: read_pid(&mut file),
            });
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(DirLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The pid of the live process holding the lock at `path`, if any. A
    /// file nobody holds (left by a crashed process) yields `None`.
    pub fn holder(path: &Path) -> Result<Option<i32>, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = match OpenOptions::new().read(true).write(true).open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(io)?,
        };
        if try_flock(&file).map_err(io)? {
            // Nobody holds it; ours is released when `file` closes.
            return Ok(None);
        }
        Ok(read_pid(&mut file).or(Some(0)).filter(|p| *p != 0))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the file open (and so the lock) until drop.
    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("LOCK");
        assert_eq!(DirLock::holder(&p).unwrap(), None);
        let held = DirLock::acquire(&p).unwrap();
        let me = std::process::id() as i32;
        assert_eq!(DirLock::holder(&p).unwrap(), Some(me));
        let err = DirLock::acquire(&p).unwrap_err();
        assert!(
            matches!(err, LockError::Held { pid: Some(p), .. } if p == me),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("pid {me}")), "{err}");
        drop(held);
        // A stale file (its holder is gone) names nobody.
        assert_eq!(DirLock::holder(&p).unwrap(), None);
        let _again = DirLock::acquire(&p).unwrap();
    }
}
