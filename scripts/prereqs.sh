# Sourced by the scripts in this folder: installs what building Ravel needs on
# a Debian machine, and points every build at one shared target directory.
#
# - clang + libclang: RocksDB's Rust bindings are generated with bindgen.
# - a C++ compiler: RocksDB itself is C++ (g++ comes with build-essential).
# - Rust: cargo/rustc from rustup, if the machine has none.
# No protoc is needed: ravel-proto compiles .proto files with protox.

ravel_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Some CI environments run without HOME; cargo, rustup and the cache below
# need it.
if [ -z "${HOME:-}" ]; then
  HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
  export HOME
fi

# One target directory outside the clone, reused by later runs on the same
# machine: RocksDB's C++ takes minutes to compile and should not be rebuilt
# for every fresh clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ravel/target}"

ravel_log() { printf '[ravel] %s\n' "$*" >&2; }

# ravel_wait_until SECS WHAT LOGS COMMAND...: runs COMMAND every 0.1 s until
# it succeeds; after SECS seconds says what it waited for and where the logs
# are, and exits 1.
ravel_wait_until() {
  local secs=$1 what=$2 logs=$3; shift 3
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  ravel_log "timed out waiting for $what; logs in $logs"
  exit 1
}

ravel_as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ravel_ensure_prereqs() {
  local missing=()
  command -v clang >/dev/null 2>&1 || missing+=(clang)
  # bindgen loads libclang at run time.
  ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  command -v make >/dev/null 2>&1 || missing+=(make)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if [ "${#missing[@]}" -gt 0 ]; then
    ravel_log "installing Debian packages: ${missing[*]}"
    ravel_as_root apt-get update -qq
    ravel_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      ravel_log "no Rust toolchain: installing one with rustup"
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
      export PATH="$HOME/.cargo/bin:$PATH"
    fi
  fi
  mkdir -p "$CARGO_TARGET_DIR"
}
