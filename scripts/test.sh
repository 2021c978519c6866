#!/usr/bin/env bash
# Runs every test of the workspace, after installing whatever the tests need that is missing.
# This is the README's test command, and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# --- what the tests need ------------------------------------------------------------------
# Debian packages, by the command each provides.
declare -A packages=(
  [openssl]=openssl
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  # The example memcached tier's tests (examples/memcached-tier).
  [memcached]=memcached
  [pkg-config]=pkg-config
  # The interop suite's client stacks (crates/reprise-cli/tests/interop.rs).
  [go]=golang-go
  [node]=nodejs
  [gnutls-cli]=gnutls-bin
  [curl]=curl
  [python3]=python3
  # The engine's unsafe module and its model test, run under memcheck (see below).
  [valgrind]=valgrind
)
missing=()
for cmd in "${!packages[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${packages[$cmd]}")
done
# Libraries, which no command reveals: the OpenSSL headers reprise-openssl builds against.
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages (${missing[*]}) and not root: install them, then run again" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install a stable Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "installing the $component component"
    rustup component add "$component"
  fi
done

# --- the checks -----------------------------------------------------------------------------
log "format"
cargo fmt --all -- --check

log "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The engine's interleaving tests build only with its shuttle feature (see below).
cargo clippy -p reprise --all-targets --locked --features shuttle -- -D warnings

log "documentation (every public item documented, every doc link resolving)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

log "tests"
cargo test --workspace --locked

log "interleavings (the engine's locks and atomics under shuttle's deterministic schedulers)"
# Only these: the feature swaps the engine's locks for shuttle's, which work only inside a
# shuttle test.
cargo test -p reprise --locked --features shuttle --lib shuttle_tests

log "memory errors (the engine's one unsafe module, src/thin.rs, and the model test, under valgrind)"
# The test harness leaves one "possibly lost" block of its own: only definite leaks fail. The
# model test runs 64 cases per property here (about thirty times slower than natively).
runner="valgrind -q --error-exitcode=1 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite"
host=$(rustc -vV | sed -n 's/^host: //p')
runner_var="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUNNER"
env "$runner_var=$runner" cargo test -p reprise --locked --lib thin::
env "$runner_var=$runner" MODEL_CASES=64 cargo test -p reprise --locked --test model

log "all tests passed"
