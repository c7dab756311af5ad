#!/usr/bin/env bash
# Run a 3-member etcd cluster on loopback, for `runner-storage-bench`'s etcd
# workloads and its `compare-etcd` (see BENCHMARKS.md). Debian's
# etcd-server, default settings (fsync on), installed when missing.
#
#   scripts/etcd-cluster.sh up       install etcd if needed, start, wait until healthy
#   scripts/etcd-cluster.sh down     stop every member (SIGTERM), keep the data
#   scripts/etcd-cluster.sh status   every member's health and the leader
#   scripts/etcd-cluster.sh wipe     down, then delete the data dirs
#
# Client endpoints 127.0.0.1:12379, :22379, :32379 (the bench's default
# --etcd-endpoints); peers on :12380, :22380, :32380. State in .etcd-cluster/.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=.etcd-cluster
MEMBERS=(1 2 3)
ENDPOINTS=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379
INITIAL_CLUSTER=m1=http://127.0.0.1:12380,m2=http://127.0.0.1:22380,m3=http://127.0.0.1:32380

die() { echo "etcd-cluster.sh: $*" >&2; exit 1; }
pid_file() { echo "$STATE/m$1.pid"; }
# Running: the pid exists and is not a zombie (a SIGKILLed member whose
# parent has not reaped it yet has released its ports and data dir).
is_running() {
  local f pid; f=$(pid_file "$1"); [ -f "$f" ] || return 1
  pid=$(cat "$f"); [ -e "/proc/$pid" ] || return 1
  ! grep -q ') Z' "/proc/$pid/stat" 2>/dev/null
}

install_etcd() {
  command -v etcd >/dev/null && command -v etcdctl >/dev/null && return 0
  [ "$(id -u)" -eq 0 ] || die "etcd is not installed; install Debian's etcd-server and etcd-client (needs root)"
  echo "installing Debian's etcd-server and etcd-client"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
}

start_member() {
  local id=$1
  is_running "$id" && { echo "member $id already running"; return; }
  mkdir -p "$STATE"
  local state=new
  [ -d "$STATE/m$id/member" ] && state=existing
  nohup etcd --name "m$id" --data-dir "$STATE/m$id" \
    --listen-client-urls "http://127.0.0.1:${id}2379" --advertise-client-urls "http://127.0.0.1:${id}2379" \
    --listen-peer-urls "http://127.0.0.1:${id}2380" --initial-advertise-peer-urls "http://127.0.0.1:${id}2380" \
    --initial-cluster "$INITIAL_CLUSTER" --initial-cluster-token runner-storage-bench \
    --initial-cluster-state "$state" >>"$STATE/m$id.log" 2>&1 &
  echo $! >"$(pid_file "$id")"
}

wait_healthy() {
  local deadline=$((SECONDS + 30))
  until etcdctl --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "etcd not healthy within 30 s; see $STATE/m*.log"
    sleep 0.2
  done
}

cmd=${1:-}
case "$cmd" in
  up)
    install_etcd
    for id in "${MEMBERS[@]}"; do start_member "$id"; done
    wait_healthy
    echo "etcd endpoints: $ENDPOINTS"
    echo "logs: $STATE/   stop: scripts/etcd-cluster.sh down"
    ;;
  down)
    for id in "${MEMBERS[@]}"; do
      is_running "$id" || continue
      pid=$(cat "$(pid_file "$id")"); kill "$pid"
      for _ in $(seq 100); do is_running "$id" || break; sleep 0.1; done
      rm -f "$(pid_file "$id")"
    done
    ;;
  status)
    etcdctl --endpoints "$ENDPOINTS" endpoint status --write-out table
    ;;
  wipe)
    "$0" down
    rm -rf "$STATE"
    ;;
  *)
    sed -n '2,12p' "$0"; exit 2
    ;;
esac
