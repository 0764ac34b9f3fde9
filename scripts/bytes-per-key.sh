#!/usr/bin/env bash
# Bytes per key in memory and on disk (issue 10 item 7, docs/performance.md "Bytes per key").
#
# Starts a 3-node kv cluster (`kv local up --base-port 0`: free ports, its own temporary
# folder), reads each server's resident memory (VmRSS) and data folder size, loads N keys into
# the `cp` keyspace with `kv bench --preload`, reads them again, then loads N keys into the `ap`
# keyspace (consistency all: every replica holds every key when the load ends) and reads them a
# third time. Prints, per node and mode, the growth divided by N, and the goal of issue 10:
# at most 2 x (key + value) + 100 bytes per key. Every node holds a replica of every key (3
# nodes, 3 replicas), so a figure is the cost of one replica of one key. The cluster is stopped
# and the folder removed on exit, whatever happens. Installs nothing.
#
# Settings (environment): KEYS=100000 VALUE_SIZE=100 CONCURRENCY=64 SETTLE_S=5 (seconds waited
# after each load before measuring, so sled's periodic flush has written what it buffers)
# KV_BIN=<a kv binary; default: cargo build --release> OUT=<also write the table to this file>
# CARGO_TARGET_DIR is honoured.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
CONCURRENCY=${CONCURRENCY:-64}
SETTLE_S=${SETTLE_S:-5}
# `kv bench` keys are `bench-` and 10 digits.
KEY_SIZE=16
# Seconds to wait for the cluster to become ready.
READY_TIMEOUT_S=60
unset KV_ENDPOINTS KV_DIR KV_BASE_PORT

say() { printf '%s\n' "$*" >&2; }
die() { say "bytes-per-key: $*"; exit 1; }

command -v jq >/dev/null || die "missing: jq. Install with: sudo apt-get install jq"
if [[ -z ${KV_BIN:-} ]]; then
    command -v cargo >/dev/null || die "cargo not found (or set KV_BIN to a kv binary)"
    say "building kv (release)..."
    (cd "$ROOT" && cargo build --quiet --release -p kv-cli --bin kv)
    target_dir=${CARGO_TARGET_DIR:-target}
    if [[ $target_dir != /* ]]; then target_dir=$ROOT/$target_dir; fi
    KV_BIN=$target_dir/release/kv
fi
[[ -x $KV_BIN ]] || die "no kv binary at $KV_BIN"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kv-bytes.XXXXXX")
# Its own copy, so a build in the same target folder cannot swap it mid-run.
cp "$KV_BIN" "$TMP/kv-bin"
KV=("$TMP/kv-bin" --dir "$TMP/kv")
kv_up=0
cleanup() {
    set +e
    ((kv_up)) && "${KV[@]}" local down --purge >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting a 3-node cluster in $TMP"
"${KV[@]}" local up --base-port 0 >/dev/null
kv_up=1
deadline=$((SECONDS + READY_TIMEOUT_S))
until "${KV[@]}" status >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "cluster not ready after ${READY_TIMEOUT_S}s (logs in $TMP/kv)"
    sleep 0.2
done
NAMES=($(jq -r '.nodes[].name' "$TMP/kv/cluster.json"))
PIDS=($(jq -r '.nodes[].pid' "$TMP/kv/cluster.json"))

# snapshot LABEL: records each node's VmRSS and data folder size (bytes) as LABEL_rss_i / _disk_i.
declare -A M
snapshot() {
    local i rss
    for i in "${!NAMES[@]}"; do
        rss=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/${PIDS[i]}/status") ||
            die "node ${NAMES[i]} (pid ${PIDS[i]}) is gone (log: $TMP/kv/${NAMES[i]}.log)"
        M[$1_rss_$i]=$rss
        M[$1_disk_$i]=$(du -sb "$TMP/kv/${NAMES[i]}" | cut -f1)
    done
}

# load KEYSPACE ARGS...: writes every key once.
load() {
    local ks=$1 start=$SECONDS; shift
    say "loading $KEYS keys into $ks..."
    "${KV[@]}" -k "$ks" bench "$@" --preload --count 1 --mix put=100 -c "$CONCURRENCY" \
        --keys "$KEYS" --value-size "$VALUE_SIZE" -o json >"$TMP/load-$ks.json" ||
        die "loading $ks failed: $(head -c 500 "$TMP/load-$ks.json")"
    LOAD_S[$ks]=$((SECONDS - start))
    sleep "$SETTLE_S"
}

declare -A LOAD_S
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
sleep "$SETTLE_S"
snapshot idle
load cp
snapshot cp
load ap --consistency all
snapshot ap
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

goal=$((2 * (KEY_SIZE + VALUE_SIZE) + 100))
per_key() { awk -v a="$1" -v b="$2" -v n="$KEYS" 'BEGIN { printf "%.0f", (b - a) / n }'; }
mib() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1048576 }'; }
{
    echo "bytes-per-key: $KEYS keys of $KEY_SIZE bytes, $VALUE_SIZE-byte values, 3 nodes x 3 replicas"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "machine: $(nproc) cores, $(lscpu | awk -F: '/^Model name/ {gsub(/^ +/, "", $2); print $2}'), $(free -h | awk '/^Mem:/ {print $2}') memory, data on $(df -T "$TMP" | awk 'NR == 2 {print $2}')"
    echo "load average before: $load_before, after: $load_after; load time: cp ${LOAD_S[cp]} s, ap ${LOAD_S[ap]} s"
    echo "goal: <= 2 x (key + value) + 100 = $goal bytes per key"
    echo
    echo "| node | idle RSS MiB · disk MiB | cp: RSS B/key · disk B/key | ap: RSS B/key · disk B/key |"
    echo "|---|---|---|---|"
    for i in "${!NAMES[@]}"; do
        printf '| %s | %s · %s | %s · %s | %s · %s |\n' "${NAMES[i]}" \
            "$(mib "${M[idle_rss_$i]}")" "$(mib "${M[idle_disk_$i]}")" \
            "$(per_key "${M[idle_rss_$i]}" "${M[cp_rss_$i]}")" \
            "$(per_key "${M[idle_disk_$i]}" "${M[cp_disk_$i]}")" \
            "$(per_key "${M[cp_rss_$i]}" "${M[ap_rss_$i]}")" \
            "$(per_key "${M[cp_disk_$i]}" "${M[ap_disk_$i]}")"
    done
} | tee "${OUT:-/dev/null}"
