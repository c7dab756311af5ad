#!/usr/bin/env bash
# npm run bench: this package's layer on a 3-node runner-storage cluster
# against Effect's SqlRunnerStorage on a local PostgreSQL, alternating
# (bench/main.ts). Installs what is missing first: Debian's postgresql
# (needs root, as on CI), the release build of the node, the npm packages.
# Arguments go to bench/main.ts (--passes 3 --duration 5 --warmup 1 ...).
# Everything it starts (the nodes, PostgreSQL) is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(cd ../.. && pwd)

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then echo "bench: PostgreSQL is missing (apt-get install postgresql, as root)" >&2; exit 1; fi
  echo "bench: installing Debian's postgresql"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if [ -z "${RUNNER_STORAGE_BIN:-}" ]; then
  export RUNNER_STORAGE_BIN="$repo/target/release/runner-storage"
  echo "bench: cargo build --release --bin runner-storage"
  (cd "$repo" && cargo build --release --quiet --bin runner-storage)
fi
[ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error
npm run --silent build
exec node dist/bench/main.js "$@"
