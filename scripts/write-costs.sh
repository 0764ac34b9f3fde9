#!/usr/bin/env bash
# What one write costs the servers (docs/performance.md, items 3 and 8): on a fresh 3-node
# `kv local up` cluster, runs AP puts at quorum and at one and CP puts (64 in flight, 10 s
# each by default) and prints, per load, the rate and latency from `kv bench -o json` and, per
# answered request, the three servers' CPU (/proc/PID/stat utime+stime), gRPC calls carrying
# AP replica writes and Raft messages (`kv_ap_write_calls_total`, `kv_raft_calls_total` from
# each node's /metrics), group-commit flushes (`kv_storage_flushes_total`) and bytes written to
# disk (/proc/PID/io write_bytes). The cluster and its folder are removed on exit.
#
# Usage: scripts/write-costs.sh [KV_BIN [LABEL]]   (default: target/release/kv, "kv")
# Settings (environment): DURATION=10s CONCURRENCY=64 KEYS=10000. Needs jq and curl (Linux).
# Two binaries back to back give a before/after pair on the same machine:
#   scripts/write-costs.sh /tmp/kv-before before; scripts/write-costs.sh /tmp/kv-after after
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target/release/kv}
LABEL=${2:-kv}
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-64}
KEYS=${KEYS:-10000}
unset KV_ENDPOINTS KV_DIR KV_BASE_PORT

die() { printf 'write-costs: %s\n' "$*" >&2; exit 1; }
for tool in jq curl; do command -v "$tool" >/dev/null || die "missing: $tool (sudo apt-get install $tool)"; done
[[ -x $BIN ]] || die "no kv binary at $BIN (cargo build --release -p kv-cli)"

D=$(mktemp -d "${TMPDIR:-/tmp}/kv-write-costs.XXXXXX")
trap '"$BIN" --dir "$D" local down >/dev/null 2>&1 || true; rm -rf "$D"' EXIT
"$BIN" --dir "$D" local up --base-port 0 >/dev/null 2>"$D.up.log" || die "kv local up failed: $(cat "$D.up.log")"; rm -f "$D.up.log"
for _ in $(seq 60); do "$BIN" --dir "$D" status >/dev/null 2>&1 && break; sleep 1; done
"$BIN" --dir "$D" status >/dev/null 2>&1 || die "the cluster in $D did not become ready in 60 s"
pids=$(jq -r '.nodes[].pid' "$D/cluster.json")
https=$(jq -r '.nodes[].http_addr // empty' "$D/cluster.json")
tck=$(getconf CLK_TCK)

sum_cpu() { local t=0 p f; for p in $pids; do read -r -a f <"/proc/$p/stat"; t=$((t + f[13] + f[14])); done; echo "$t"; }
sum_written() { local t=0 p; for p in $pids; do t=$((t + $(awk '/^write_bytes/ {print $2}' "/proc/$p/io"))); done; echo "$t"; }
sum_metric() { local h; for h in $https; do curl -sf "http://$h/metrics" | awk -v m="$1" '$1 == m {print $2}'; done | awk '{t += $1} END {print t + 0}'; }
snapshot() { echo "$(sum_cpu) $(sum_written) $(sum_metric kv_ap_write_calls_total) $(sum_metric kv_raft_calls_total) $(sum_metric kv_storage_flushes_total)"; }

echo "| binary | load | ops/s | p50 / p99 ms | server CPU µs/op | disk bytes/op | flushes/op | AP write calls/op | Raft calls/op |"
echo "|---|---|---|---|---|---|---|---|---|"
run() {
    local name=$1; shift
    local before after out
    before=$(snapshot)
    out=$("$BIN" --dir "$D" "$@" --duration "$DURATION" -c "$CONCURRENCY" --keys "$KEYS" -o json 2>/dev/null) ||
        die "$name: kv bench failed"
    after=$(snapshot)
    jq -r --arg lab "$LABEL" --arg name "$name" --arg before "$before" --arg after "$after" \
        --argjson tck "$tck" '
        ($before | split(" ") | map(tonumber)) as $b | ($after | split(" ") | map(tonumber)) as $a
        | (.throughput_ops_s * (.elapsed_s + .warmup_s)) as $ops
        | def per($i; $scale): if $ops > 0 then (($a[$i] - $b[$i]) * $scale / $ops) else 0 end;
        "| \($lab) | \($name) | \(.throughput_ops_s | round) | \(.latency_ms.p50) / \(.latency_ms.p99)"
        + " | \(per(0; 1000000 / $tck) | round) | \(per(1; 1) | round) | \(per(4; 1) * 100 | round / 100)"
        + " | \(per(2; 1) * 100 | round / 100) | \(per(3; 1) * 100 | round / 100) |"' <<<"$out"
}
run "AP put quorum" -k ap bench --mix put=1 --consistency quorum
run "AP put one" -k ap bench --mix put=1 --consistency one
run "CP put" -k cp bench --mix put=1
