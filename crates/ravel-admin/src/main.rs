//! `ravel-admin`: the cluster admin (see `ravel_admin::cli`).

fn main() -> std::process::ExitCode {
    ravel_admin::cli::main()
}
