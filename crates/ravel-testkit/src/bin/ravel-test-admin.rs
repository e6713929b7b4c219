//! `ravel-admin` as tests run it, built next to `ravel-test-node` so a
//! testkit test finds both (`CARGO_BIN_EXE_*`).

fn main() -> std::process::ExitCode {
    ravel_admin::cli::main()
}
