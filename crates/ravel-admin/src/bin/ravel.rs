//! `ravel`: the command-line client (see `ravel_admin::user_cli`).

fn main() -> std::process::ExitCode {
    ravel_admin::user_cli::main()
}
