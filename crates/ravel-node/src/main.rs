//! `ravel-node`: run a replica, or remove one for good (see `ravel_node::cli`).

fn main() -> std::process::ExitCode {
    ravel_node::cli::main()
}
