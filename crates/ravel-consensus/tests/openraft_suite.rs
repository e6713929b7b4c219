//! openraft's own storage test suite against our RocksDB-backed log store and
//! state machine.

use openraft::testing::{StoreBuilder, Suite};
use ravel_consensus::types::RaftStorageError;
use ravel_consensus::{DataDir, LogStore, StateMachine, TypeConfig};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), RaftStorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        // Small chunks so the snapshot transfer test crosses chunk boundaries.
        let (log, sm) = DataDir::new(dir.path()).open(64).expect("open data dir");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(RocksBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
