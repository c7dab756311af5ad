#!/usr/bin/env bash
# The long chaos profile: a release build of tests/chaos run for N minutes of
# faults against a 3- or 5-node cluster, each node in its own network
# namespace (loopback fallback without root/ip/iptables). Writes the history
# (history.jsonl), summary.json, summary.txt, the run log and every node's log
# (node{id}.log) to a directory it prints; on a violation prints the seed and
# how to replay.
#
#   scripts/chaos.sh --minutes 30 --seed 42 [--nodes 3|5] [--nemesis kill-leader,pause-leader] [--out DIR]
#
# Fault kinds: kill-leader kill-random pause-leader isolate-leader
# split-majority asymmetric restart-node membership power-cut-node
# power-cut-all clock-step-forward clock-step-back clock-skew pause-holder
# (default: all). Power cuts mount powerfs (FUSE: root, /dev/fuse, fuse3) as
# each node's data dir; clock faults run the nodes under libfaketime (faketime).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

minutes=30
seed=""
nodes=3
nemesis=""
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --nemesis) nemesis="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
[[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "--minutes must be a number" >&2; exit 2; }
[[ "$nodes" == 3 || "$nodes" == 5 ]] || { echo "--nodes must be 3 or 5" >&2; exit 2; }
if [ -z "$seed" ]; then seed=$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM )); fi
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "--seed must be a non-negative integer" >&2; exit 2; }

# The namespace lab needs iproute2 and iptables (as root); without them the
# run falls back to loopback with process faults only. Power cuts need fuse3
# (fusermount3), clock faults libfaketime.
if [ "$(id -u)" -eq 0 ]; then
  missing=()
  command -v ip >/dev/null || missing+=(iproute2)
  command -v iptables-restore >/dev/null || missing+=(iptables)
  command -v fusermount3 >/dev/null || missing+=(fuse3)
  [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(faketime)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

out="${out:-target/chaos/$(date +%Y%m%d-%H%M%S)-seed$seed-n$nodes}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
echo "chaos: seed $seed, $nodes nodes, $minutes minutes of faults; output in $out"

# Labs of runs that died (Ctrl-C, kill) are removed by the next run; do it
# now too when this script is interrupted.
clean_stale_labs() {
  command -v ip >/dev/null || return 0
  for ns in $(ip netns list 2>/dev/null | awk '/^rsc[0-9]+x/ {print $1}'); do
    pid="${ns#rsc}"; pid="${pid%%x*}"
    [ -d "/proc/$pid" ] && continue
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
# A run that dies leaves its powerfs mounts dead ("transport endpoint is not connected").
clean_stale_mounts() {
  awk '$1 ~ /^powerfs-rsc[0-9]+x/ {print $1, $2}' /proc/mounts 2>/dev/null | while read -r source target; do
    pid="${source#powerfs-rsc}"; pid="${pid%%x*}"
    [ -d "/proc/$pid" ] || umount -l "$target" 2>/dev/null || true
  done
}
trap 'sleep 1; clean_stale_labs; clean_stale_mounts' INT TERM

cargo build --release --quiet --bin runner-storage --test chaos
status=0
CHAOS_MINUTES="$minutes" CHAOS_SEED="$seed" CHAOS_NODES="$nodes" CHAOS_NEMESIS="$nemesis" CHAOS_OUT="$out" \
  cargo test --release --quiet --test chaos -- chaos_long_profile --exact --nocapture --test-threads=1 \
  2>&1 | tee "$out/run.log" || status=$?
[ "$status" -eq 0 ] && grep -q '^violations: 0$' "$out/summary.txt" 2>/dev/null || status=1

echo
if [ "$status" -eq 0 ]; then
  echo "chaos: PASSED — seed $seed; summary $out/summary.txt; history $out/history.jsonl"
else
  echo "chaos: FAILED — seed $seed; history $out/history.jsonl; summary $out/summary.txt"
  echo "  re-check the recorded history: CHAOS_REPLAY=$out/history.jsonl cargo test --release --test chaos -- chaos_replay --nocapture"
  echo "  replay the schedule:           scripts/chaos.sh --minutes $minutes --seed $seed --nodes $nodes${nemesis:+ --nemesis $nemesis}"
fi
exit "$status"
