//! The `ravel` CLI as tests run it, built next to `ravel-test-node` so a
//! testkit test finds it.

fn main() -> std::process::ExitCode {
    ravel_admin::user_cli::main()
}
