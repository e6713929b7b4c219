//! What the storage layer reports to whoever watches it (the node's
//! metrics): each synced log append, each snapshot taken, sent or installed. The
//! log store and the snapshot directory share one [`StorageObserver`]; the
//! node sets its [`StorageEvents`] once its metrics exist (the stores are
//! handed to openraft before that).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Storage events, as the node's metrics take them.
pub trait StorageEvents: Send + Sync {
    /// Entries of `bytes` (encoded) were appended to the log and synced,
    /// taking `took`.
    fn log_appended(&self, bytes: u64, took: Duration);
    /// A snapshot was taken: a consistent point of the state machine,
    /// pinned; nothing is copied.
    fn snapshot_built(&self, took: Duration);
    /// A snapshot stream of `bytes` was exported from a pinned view (sent
    /// to a peer), taking `took`.
    fn snapshot_sent(&self, bytes: u64, took: Duration);
    /// A received snapshot of `bytes` was installed.
    fn snapshot_installed(&self, bytes: u64, took: Duration);
}

/// The shared slot for the [`StorageEvents`]; clones share it. Events
/// before it is set are not reported.
#[derive(Clone, Default)]
pub struct StorageObserver(Arc<OnceLock<Arc<dyn StorageEvents>>>);

impl StorageObserver {
    /// Sets the receiver of events; later calls are ignored.
    pub fn set(&self, events: Arc<dyn StorageEvents>) {
        let _ = self.0.set(events);
    }

    pub(crate) fn report(&self, f: impl FnOnce(&dyn StorageEvents)) {
        if let Some(e) = self.0.get() {
            f(e.as_ref());
        }
    }
}

impl std::fmt::Debug for StorageObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.0.get().is_some() {
            "set"
        } else {
            "unset"
        };
        write!(f, "StorageObserver({state})")
    }
}
