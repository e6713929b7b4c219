//! `ravel-node` built with the test hooks (fault injection) compiled in:
//! the same `main` as the release binary, for tests that run real
//! processes (SIGKILL, SIGSTOP, iptables between loopback addresses).

fn main() -> std::process::ExitCode {
    ravel_node::cli::main()
}
