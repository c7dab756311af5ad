#!/usr/bin/env bash
# Restarts every node of the running local cluster (scripts/cluster.sh) one at
# a time: followers first, the leader last, each with SIGTERM (a clean stop:
# in-flight calls finish, the data dir is flushed) and waiting until the
# restarted node has caught up with the leader before the next one goes.
#
#   scripts/rolling-restart.sh
#
# The leader, told to stop, first hands leadership to an up-to-date
# follower (it stops heartbeats, the followers' leases run out, the target
# campaigns at once), so no one waits for an election timeout; clients
# retry through the hand-over within their deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${RUNNER_STORAGE_BIN:-target/release/runner-storage}
STATE=.cluster

endpoints() {
  local list=() f
  for f in "$STATE"/pids/node*.pid; do
    [ -f "$f" ] || continue
    local id=${f##*node}; id=${id%.pid}
    list+=("$(grep -m1 '^listen' "$(config_of "$id")" | sed 's/.*"\(.*\)".*/\1/')")
  done
  (IFS=,; echo "${list[*]}")
}
config_of() {
  if [ -f "$STATE/configs/node$1.toml" ]; then echo "$STATE/configs/node$1.toml"
  else echo "cluster-config/$(cat "$STATE/layout" 2>/dev/null || echo three)/node$1.toml"; fi
}
status_json() { RUNNER_STORAGE_ENDPOINTS=$(endpoints) "$BIN" ctl status --json 2>/dev/null; }
field() { python3 -c "import json,sys; rows=json.load(sys.stdin); print(' '.join(str(r.get('$1','')) for r in rows if 'error' not in r and ($2)))"; }

leader=$(status_json | field node_id "r['role']=='leader'")
[ -n "$leader" ] || { echo "rolling-restart: no leader; is the cluster up?" >&2; exit 1; }
followers=$(status_json | field node_id "r['role']!='leader'")
for id in $followers $leader; do
  target=$(status_json | field commit_index "r['role']=='leader'")
  echo "restarting node $id (leader commit index ${target:-?})"
  scripts/cluster.sh restart "$id" >/dev/null
  deadline=$((SECONDS + 60))
  until [ "$(status_json | field applied_index "r['node_id']==$id")" -ge "${target:-0}" ] 2>/dev/null \
        && [ -n "$(status_json | field node_id "r['role']=='leader'")" ]; do
    [ $SECONDS -lt $deadline ] || { echo "rolling-restart: node $id did not catch up within 60 s" >&2; exit 1; }
    sleep 0.2
  done
  echo "node $id is back and caught up"
done
echo "rolling restart done; leader is now node $(status_json | field node_id "r['role']=='leader'")"
