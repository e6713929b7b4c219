//! The `ravel-admin` binary's configuration errors.

use std::process::Command;

#[test]
fn bad_config_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_ravel-admin"))
        .args(["--grpc", "not-an-address", "--backupPath", "/tmp/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("grpc_addr"));

    let out = Command::new(env!("CARGO_BIN_EXE_ravel-admin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no data dir given");
    assert!(String::from_utf8_lossy(&out.stderr).contains("data_dir"));
}
