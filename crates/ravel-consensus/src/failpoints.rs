//! Injected storage failures, for tests of fail-stop (feature `failpoints`;
//! without it every check is a no-op that compiles away).
//!
//! A failpoint is a named persistence point (`append`, `vote`, `truncate`,
//! `purge`, `apply`, `snapshot_install`, `snapshot_build`) of one data
//! directory, armed to pass `after` times and then fail every time, as a
//! disk that has gone bad would. In-process tests arm points with [`arm`];
//! real processes read `RAVEL_FAILPOINTS=point=after,point=after` (for every
//! data directory of the process) on first use.
//!
//! A point can also be held ([`hold`]): the thread that reaches it waits
//! there until the hold is released, as behind a disk that has stalled. The
//! log's writer thread passes `log_write` before each write and sync.

use std::path::Path;

/// Every persistence point that can be made to fail.
pub const POINTS: [&str; 7] = [
    "append",
    "vote",
    "truncate",
    "purge",
    "apply",
    "snapshot_install",
    "snapshot_build",
];

#[cfg(feature = "failpoints")]
mod imp {
    use std::path::{Path, PathBuf};
    use std::sync::{Condvar, Mutex, OnceLock};

    struct Armed {
        point: String,
        /// `None`: every data directory.
        dir: Option<PathBuf>,
        /// Passes left before the point starts failing.
        passes: u64,
    }

    fn armed() -> &'static Mutex<Vec<Armed>> {
        static ARMED: OnceLock<Mutex<Vec<Armed>>> = OnceLock::new();
        ARMED.get_or_init(|| {
            let mut v = Vec::new();
            if let Ok(spec) = std::env::var("RAVEL_FAILPOINTS") {
                for item in spec.split(',').filter(|s| !s.is_empty()) {
                    let (point, after) = item.split_once('=').unwrap_or((item, "0"));
                    v.push(Armed {
                        point: point.trim().to_string(),
                        dir: None,
                        passes: after.trim().parse().unwrap_or(0),
                    });
                }
            }
            Mutex::new(v)
        })
    }

    pub fn arm(point: &str, dir: Option<&Path>, after: u64) {
        armed()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Armed {
                point: point.to_string(),
                dir: dir.map(Path::to_path_buf),
                passes: after,
            });
    }

    pub fn disarm_all() {
        armed().lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Held points, each with its data directory, and the waiters' wake-up.
    type Holds = (Mutex<Vec<(String, PathBuf)>>, Condvar);

    fn held() -> &'static Holds {
        static HELD: OnceLock<Holds> = OnceLock::new();
        HELD.get_or_init(|| (Mutex::new(Vec::new()), Condvar::new()))
    }

    pub fn hold(point: &str, dir: &Path) {
        let (held, _) = held();
        held.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((point.to_string(), dir.to_path_buf()));
    }

    pub fn release(point: &str, dir: &Path) {
        let (held, wake) = held();
        held.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(p, d)| !(p == point && d == dir));
        wake.notify_all();
    }

    pub fn wait(point: &str, dir: &Path) {
        let (held, wake) = held();
        let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
        while h.iter().any(|(p, d)| p == point && dir.starts_with(d)) {
            h = wake.wait(h).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn hit(point: &str, dir: &Path) -> std::io::Result<()> {
        let mut armed = armed().lock().unwrap_or_else(|p| p.into_inner());
        for a in armed.iter_mut() {
            if a.point == point && a.dir.as_deref().is_none_or(|d| dir.starts_with(d)) {
                if a.passes == 0 {
                    return Err(std::io::Error::other(format!(
                        "injected failure at failpoint {point}"
                    )));
                }
                a.passes -= 1;
            }
        }
        Ok(())
    }
}

/// Arms `point` for the data directory `dir` (or every one): it passes
/// `after` times, then fails.
#[cfg(feature = "failpoints")]
pub fn arm(point: &str, dir: Option<&Path>, after: u64) {
    imp::arm(point, dir, after)
}

/// Disarms every failpoint.
#[cfg(feature = "failpoints")]
pub fn disarm_all() {
    imp::disarm_all()
}

/// Whether persistence point `point` of `dir` may proceed.
#[inline]
pub(crate) fn hit(point: &'static str, dir: &Path) -> std::io::Result<()> {
    #[cfg(feature = "failpoints")]
    {
        imp::hit(point, dir)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = (point, dir);
        Ok(())
    }
}

/// Holds `point` of the data directory `dir`: a thread reaching it waits
/// until the returned guard is dropped (also when a test panics).
#[cfg(feature = "failpoints")]
pub fn hold(point: &str, dir: &Path) -> Held {
    imp::hold(point, dir);
    Held {
        point: point.to_string(),
        dir: dir.to_path_buf(),
    }
}

/// A [`hold`] in force; dropping it releases the point.
#[cfg(feature = "failpoints")]
#[must_use = "the point is released when this is dropped"]
pub struct Held {
    point: String,
    dir: std::path::PathBuf,
}

#[cfg(feature = "failpoints")]
impl Drop for Held {
    fn drop(&mut self) {
        imp::release(&self.point, &self.dir)
    }
}

/// Waits while `point` of `dir` is held (a blocking wait: called on the
/// log's writer thread only).
#[inline]
pub(crate) fn wait_if_held(point: &'static str, dir: &Path) {
    #[cfg(feature = "failpoints")]
    {
        imp::wait(point, dir)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = (point, dir);
    }
}
