//! Compiles the subset of etcd's v3 API the benchmark calls (pure Rust,
//! no protoc), as ravel-proto does for Ravel's own services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/etcd_kv.proto");
    let fds = protox::compile(["proto/etcd_kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
