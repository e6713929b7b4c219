//! The `ravel-node` binary's handling of bad configuration and of a data
//! directory another process holds.

use std::process::{Command, Stdio};

fn node() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ravel-node"));
    c.stdin(Stdio::null());
    c
}

#[test]
fn bad_config_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "data_dir = \"/tmp/x\"\nlisten_addr = \"127.0.0.1:1\"\nadmin_addr = \"nowhere\"\n",
    )
    .unwrap();
    let out = node()
        .args(["start", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin_addr"), "{err}");

    // Missing required settings.
    let out = node()
        .args(["start"])
        .env_remove("RAVEL_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("data_dir"));

    // A config file that does not exist.
    let out = node()
        .args(["start", "--config", "/no/such/node.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/node.toml"));
}

#[test]
fn help_explains_the_flags() {
    let out = node().args(["start", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--storagedir",
        "--grpcaddr",
        "--raftaddr",
        "--adminrpcaddr",
        "--leader",
        "--config",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn locked_data_dir_is_refused_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Hold the directory's database open in this process.
    let (_log, _sm) = ravel_consensus::DataDir::new(&data).open(1024).unwrap();
    let out = node()
        .args([
            "start",
            "-s",
            data.to_str().unwrap(),
            "-g",
            "127.0.0.1:0",
            "-a",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked"), "{err}");
    assert!(err.contains(data.to_str().unwrap()), "{err}");
}

#[test]
fn kill_without_identity_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = node()
        .args(["kill", "-s", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("identity"));
}

#[test]
fn health_of_an_unreachable_address_fails_with_the_reason() {
    // Port 1 on loopback: nothing listens there.
    let out = node()
        .args(["health", "--addr", "127.0.0.1:1", "--timeout-ms", "3000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}
