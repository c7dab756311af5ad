#!/usr/bin/env bash
# Run a local runner-storage cluster on loopback from cluster-config/.
#
#   scripts/cluster.sh up [--nodes 3|5]   build (release) and start, bootstrap on first start,
#                                         wait for a leader, print the endpoints
#   scripts/cluster.sh down               stop every node (SIGTERM), keep the data
#   scripts/cluster.sh status             every node's role, term, commit/applied index
#   scripts/cluster.sh kill-leader        SIGKILL the current leader
#   scripts/cluster.sh restart NODE       restart node NODE from its data dir
#   scripts/cluster.sh add-node           start a new node, add it as learner, promote it to voter
#   scripts/cluster.sh remove-node NODE   remove node NODE from the membership and stop it
#   scripts/cluster.sh wipe               down, then delete the data dirs
#
# State lives in .cluster/ (data dirs, logs, pids, generated configs).
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=.cluster
BIN=${RUNNER_STORAGE_BIN:-target/release/runner-storage}
mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/configs"

die() { echo "cluster.sh: $*" >&2; exit 1; }
pid_file() { echo "$STATE/pids/node$1.pid"; }
# Running: the pid exists and is not a finished zombie. A killed node whose
# parent has not reaped it yet has released its port and data dir once its
# last thread is gone; its main thread alone turns zombie earlier.
is_running() {
  local f pid; f=$(pid_file "$1"); [ -f "$f" ] || return 1
  pid=$(cat "$f"); [ -e "/proc/$pid" ] || return 1
  grep -q ') Z' "/proc/$pid/stat" 2>/dev/null || return 0
  [ "$(ls "/proc/$pid/task" 2>/dev/null | wc -l)" -gt 1 ]
}
node_config() {
  if [ -f "$STATE/configs/node$1.toml" ]; then echo "$STATE/configs/node$1.toml"; return; fi
  echo "cluster-config/$(cat "$STATE/layout" 2>/dev/null || echo three)/node$1.toml"
}
node_address() { grep -m1 '^listen' "$(node_config "$1")" | sed 's/.*"\(.*\)".*/\1/'; }
known_nodes() {
  local layout; layout=$(cat "$STATE/layout" 2>/dev/null || echo three)
  { ls "cluster-config/$layout" | sed -n 's/^node\([0-9]*\)\.toml$/\1/p'
    ls "$STATE/configs" 2>/dev/null | sed -n 's/^node\([0-9]*\)\.toml$/\1/p'; } | sort -n | uniq
}
endpoints() {
  local list=() id
  for id in $(known_nodes); do is_running "$id" && list+=("$(node_address "$id")"); done
  (IFS=,; echo "${list[*]}")
}
ctl() { RUNNER_STORAGE_ENDPOINTS=$(endpoints) "$BIN" ctl "$@"; }

start_node() {
  local id=$1
  is_running "$id" && { echo "node $id already running"; return; }
  nohup "$BIN" serve --config "$(node_config "$id")" >>"$STATE/logs/node$id.log" 2>&1 &
  echo $! >"$(pid_file "$id")"
}

leader_id() { ctl status --json 2>/dev/null | grep -B3 '"role": "leader"' | sed -n 's/.*"node_id": \([0-9]*\).*/\1/p' | head -1; }

wait_for_leader() {
  local deadline=$((SECONDS + 30)) leader
  while [ $SECONDS -lt $deadline ]; do
    leader=$(leader_id)
    [ -n "$leader" ] && { echo "$leader"; return 0; }
    sleep 0.2
  done
  return 1
}

cmd_up() {
  local nodes=3
  [ "${1:-}" = "--nodes" ] && nodes=${2:?--nodes needs 3 or 5}
  case $nodes in 3) echo three >"$STATE/layout";; 5) echo five >"$STATE/layout";; *) die "--nodes must be 3 or 5";; esac
  if [ -z "${RUNNER_STORAGE_BIN:-}" ]; then cargo build --release --quiet; fi
  for id in $(seq 1 "$nodes"); do start_node "$id"; done
  local leader
  leader=$(wait_for_leader) || die "no leader within 30 s; see $STATE/logs/"
  echo "runner-storage: $nodes-node cluster up, leader is node $leader at $(node_address "$leader")"
  echo "endpoints: $(endpoints)"
  echo "logs: $STATE/logs/   stop: scripts/cluster.sh down"
}

cmd_down() {
  local id
  for id in $(known_nodes); do
    if is_running "$id"; then kill -TERM "$(cat "$(pid_file "$id")")"; fi
  done
  for id in $(known_nodes); do
    local deadline=$((SECONDS + 10))
    while is_running "$id" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    is_running "$id" && kill -KILL "$(cat "$(pid_file "$id")")"
    rm -f "$(pid_file "$id")"
  done
  echo "cluster stopped (data kept in $STATE/)"
}

cmd_kill_leader() {
  local leader; leader=$(leader_id)
  [ -n "$leader" ] || die "no leader to kill"
  kill -KILL "$(cat "$(pid_file "$leader")")"
  rm -f "$(pid_file "$leader")"
  echo "killed leader node $leader"
  local next; next=$(wait_for_leader) || die "no new leader within 30 s"
  echo "new leader: node $next"
}

cmd_restart() {
  local id=${1:?restart needs a node id}
  if is_running "$id"; then kill -TERM "$(cat "$(pid_file "$id")")"; while is_running "$id"; do sleep 0.1; done; fi
  start_node "$id"
  echo "node $id restarted"
}

cmd_add_node() {
  local id=$(( $(known_nodes | tail -1) + 1 ))
  local address="127.0.0.1:$((7000 + id))"
  local layout; layout=$(cat "$STATE/layout" 2>/dev/null || echo three)
  printf 'node_id = %s\nlisten = "%s"\ndata_dir = "%s/%s/node%s"\nworker_threads = 1\n' "$id" "$address" "$STATE" "$layout" "$id" >"$STATE/configs/node$id.toml"
  start_node "$id"
  ctl members add "$id" "$address"
  local voters
  voters=$(ctl status --json | sed -n 's/.*"node_id": \([0-9]*\).*/\1/p' | sort -n | uniq | paste -sd,)
  ctl members set-voters "$voters"
  echo "node $id added at $address"
}

cmd_remove_node() {
  local id=${1:?remove-node needs a node id}
  ctl members remove "$id"
  if is_running "$id"; then kill -TERM "$(cat "$(pid_file "$id")")"; fi
  rm -f "$(pid_file "$id")" "$STATE/configs/node$id.toml"
  echo "node $id removed"
}

case ${1:-} in
  up) shift; cmd_up "$@";;
  down) cmd_down;;
  status) ctl status;;
  kill-leader) cmd_kill_leader;;
  restart) shift; cmd_restart "$@";;
  add-node) cmd_add_node;;
  remove-node) shift; cmd_remove_node "$@";;
  wipe) cmd_down; rm -rf "$STATE"; echo "data deleted";;
  *) sed -n '2,14p' "$0"; exit 2;;
esac
