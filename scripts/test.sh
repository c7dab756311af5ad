#!/usr/bin/env bash
# Runs every test of runner-storage from a clean clone, installing what the
# tests need first: format and lint checks, the Rust unit, property,
# conformance and cluster tests (real node processes), and the Effect
# client's tests (real Node.js runners against a real cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# --- what the tests need -----------------------------------------------------
apt_install() {
  # Debian packages, installed only when missing (needs root, as on CI).
  local missing=()
  # dpkg -s also succeeds for a removed package whose config files remain.
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then echo "missing Debian packages: ${missing[*]} (run as root to install)" >&2; return 1; fi
  log "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
command -v kill >/dev/null || apt_install procps
command -v openssl >/dev/null || apt_install openssl
# The clock tests run nodes under libfaketime (their wall clocks stepped).
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || apt_install faketime
# The bench's tests (bench/tests/) compare against a real etcd cluster.
command -v etcd >/dev/null && command -v etcdctl >/dev/null || apt_install etcd-server etcd-client
# Chaos: the namespace lab (iproute2, iptables) and power cuts over powerfs
# (FUSE: fuse3's fusermount3, /dev/fuse); its clock faults use faketime too.
command -v ip >/dev/null || apt_install iproute2
command -v iptables-restore >/dev/null || apt_install iptables
command -v fusermount3 >/dev/null || apt_install fuse3

# --- Rust ----------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The workspace: runner-storage, bench/ and tests/powerfs. Cargo builds every
# binary before any test runs, so the bench's tests find the node's binary.
log "cargo test (the workspace: runner-storage, bench, tests/powerfs)"
cargo test --workspace --quiet

# --- Effect client ---------------------------------------------------------------
log "Effect client (clients/effect)"
cargo build --quiet --bin runner-storage
export RUNNER_STORAGE_BIN="$PWD/target/debug/runner-storage"
(cd clients/effect && npm ci --no-audit --no-fund --loglevel=error && npm test)

log "all tests passed"
