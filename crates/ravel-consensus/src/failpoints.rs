//! Injected storage failures, for tests of fail-stop (feature `failpoints`;
//! without it every check is a no-op that compiles away).
//!
//! A failpoint is a named persistence point (`append`, `log_sync` (the
//! sync after an append's write), `vote`, `truncate`,
//! `purge`, `apply`, `snapshot_install`, `snapshot_build`) of one data
//! directory, armed to pass `after` times and then fail every time, as a
//! disk that has gone bad would. In-process tests arm points with [`arm`];
//! real processes read `RAVEL_FAILPOINTS=point=after,point=after` (for every
//! data directory of the process) on first use.

use std::path::Path;

/// Every persistence point that can be made to fail.
pub const POINTS: [&str; 8] = [
    "append",
    "log_sync",
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
    use std::sync::{Mutex, OnceLock};

    struct Armed {
        point: String,
        /// `None`: every data directory.
        dir: Option<PathBuf>,
        /// Passes left before the point starts failing.
        passes: u64,
        /// How long a failing hit takes before it reports the failure.
        delay: std::time::Duration,
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
                        delay: std::time::Duration::ZERO,
                    });
                }
            }
            Mutex::new(v)
        })
    }

    pub fn arm(point: &str, dir: Option<&Path>, after: u64, delay: std::time::Duration) {
        armed()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Armed {
                point: point.to_string(),
                dir: dir.map(Path::to_path_buf),
                passes: after,
                delay,
            });
    }

    pub fn disarm_all() {
        armed().lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn hit(point: &str, dir: &Path) -> std::io::Result<()> {
        let mut fail_after = None;
        {
            let mut armed = armed().lock().unwrap_or_else(|p| p.into_inner());
            for a in armed.iter_mut() {
                if a.point == point && a.dir.as_deref().is_none_or(|d| dir.starts_with(d)) {
                    if a.passes == 0 {
                        fail_after = Some(a.delay);
                        break;
                    }
                    a.passes -= 1;
                }
            }
        }
        match fail_after {
            None => Ok(()),
            Some(delay) => {
                // Off the lock: a slow failure holds up no other point.
                std::thread::sleep(delay);
                Err(std::io::Error::other(format!(
                    "injected failure at failpoint {point}"
                )))
            }
        }
    }
}

/// Arms `point` for the data directory `dir` (or every one): it passes
/// `after` times, then fails.
#[cfg(feature = "failpoints")]
pub fn arm(point: &str, dir: Option<&Path>, after: u64) {
    imp::arm(point, dir, after, std::time::Duration::ZERO)
}

/// Like [`arm`], but each failing hit first blocks its thread for `delay`,
/// as a disk that hangs before it reports an error would. Only for points
/// hit on blocking threads (`log_sync`).
#[cfg(feature = "failpoints")]
pub fn arm_slow(point: &str, dir: Option<&Path>, after: u64, delay: std::time::Duration) {
    imp::arm(point, dir, after, delay)
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
