#!/usr/bin/env bash
# Side-by-side benchmark of kv and etcd on this machine (issue 10, docs/performance.md).
#
# Starts a 3-member etcd (Debian's etcd-server) and a 3-node kv cluster (`kv local up`, release
# build), both on loopback with free ports in one temporary folder, runs the same loads on both
# with `kv bench` (etcd through its gRPC KV API: `kv bench --target etcd`, built with
# `--features etcd`), and prints a table of kv/etcd ratios. Both clusters are stopped and the
# folder removed on exit, whatever happens. Installs nothing: it says what is missing.
#
# Settings (environment): DURATION=10s WARMUP=2s KEYS=10000 VALUE_SIZE=100 CONCURRENCY=64
# ROUNDS=1 (fresh clusters per round; the table shows each figure's median round)
# SEED=1 OUT_DIR=target/compare-etcd/<time> KV_BIN=<a kv built with --features etcd>
# PROFILE="cp_put_64 etcd_put_64": runs to profile with `perf record -g` (kv's first node,
# etcd's leader); the flat `perf report` lands beside the run's JSON.
# CARGO_TARGET_DIR is honoured.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
KEYS=${KEYS:-10000}
VALUE_SIZE=${VALUE_SIZE:-100}
CONCURRENCY=${CONCURRENCY:-64}
ROUNDS=${ROUNDS:-1}
SEED=${SEED:-1}
OUT_DIR=${OUT_DIR:-$ROOT/target/compare-etcd/$(date +%Y%m%d-%H%M%S)}
# Seconds to wait for a cluster to become ready.
READY_TIMEOUT_S=60
# Seconds over which the idle clusters' CPU use is sampled.
IDLE_SAMPLE_S=5
unset KV_ENDPOINTS KV_DIR KV_BASE_PORT ETCDCTL_ENDPOINTS

say() { printf '%s\n' "$*" >&2; }
die() { say "compare-etcd: $*"; exit 1; }

# --- what must be installed -------------------------------------------------------------
missing=()
[[ -n ${PROFILE:-} ]] && ! command -v perf >/dev/null && missing+=(linux-perf)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v jq >/dev/null || missing+=(jq)
if ((${#missing[@]})); then
    die "missing: ${missing[*]}. Install with: sudo apt-get install ${missing[*]}"
fi
if [[ -z ${KV_BIN:-} ]]; then
    command -v cargo >/dev/null || die "cargo not found (or set KV_BIN to a kv built with --features etcd)"
    say "building kv (release, --features etcd)..."
    (cd "$ROOT" && cargo build --quiet --release -p kv-cli --features etcd --bin kv)
    target_dir=${CARGO_TARGET_DIR:-target}
    if [[ $target_dir != /* ]]; then target_dir=$ROOT/$target_dir; fi
    KV_BIN=$target_dir/release/kv
fi
[[ -x $KV_BIN ]] || die "no kv binary at $KV_BIN"
probe=$("$KV_BIN" bench --target etcd --count 1 2>&1 || true)
[[ $probe == *"needs --endpoints"* ]] ||
    die "$KV_BIN cannot bench etcd ($probe): build it with cargo build --release --features etcd --bin kv"

# --- clusters -----------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kv-compare.XXXXXX")
etcd_pids=()
kv_up=0
# The run uses its own copy, so a build in the same target folder cannot swap it mid-run.
cp "$KV_BIN" "$TMP/kv-bin"
KV_BIN=$TMP/kv-bin

stop_clusters() {
    if ((kv_up)); then
        "$KV_BIN" --dir "$TMP/kv" local down --purge >/dev/null 2>&1 || true
        kv_up=0
    fi
    local pid
    for pid in "${etcd_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${etcd_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    etcd_pids=()
    rm -rf "$TMP/etcd" "$TMP/kv"
}
cleanup() {
    set +e
    stop_clusters
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Picks a port nobody listens on and that this script has not handed out yet.
given_ports=" "
free_port() {
    local p
    while :; do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        [[ $given_ports == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            given_ports+="$p "
            PORT=$p
            return
        fi
    done
}

# Waits until "$@" succeeds, at most READY_TIMEOUT_S seconds.
wait_for() {
    local what=$1; shift
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what not ready after ${READY_TIMEOUT_S}s (logs in $TMP)"
        sleep 0.2
    done
}

start_etcd() {
    mkdir -p "$TMP/etcd"
    local i cluster="" clients=() peers=()
    for i in 1 2 3; do
        free_port; clients+=("$PORT")
        free_port; peers+=("$PORT")
        cluster+="${cluster:+,}e$i=http://127.0.0.1:${peers[-1]}"
    done
    for i in 0 1 2; do
        etcd --name "e$((i + 1))" --data-dir "$TMP/etcd/e$((i + 1))" \
            --listen-client-urls "http://127.0.0.1:${clients[i]}" \
            --advertise-client-urls "http://127.0.0.1:${clients[i]}" \
            --listen-peer-urls "http://127.0.0.1:${peers[i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${peers[i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "kv-compare-$$" \
            --logger zap --log-outputs stderr --log-level warn \
            >"$TMP/etcd/e$((i + 1)).log" 2>&1 &
        etcd_pids+=($!)
    done
    ETCD_ENDPOINTS=$(printf '127.0.0.1:%s,' "${clients[@]}")
    ETCD_ENDPOINTS=${ETCD_ENDPOINTS%,}
    wait_for "etcd" etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health
}

start_kv() {
    "$KV_BIN" --dir "$TMP/kv" local up --base-port 0 >/dev/null
    kv_up=1
    wait_for "kv" "$KV_BIN" --dir "$TMP/kv" status
    KV_PIDS=$(jq -r '.nodes[].pid' "$TMP/kv/cluster.json" | tr '\n' ' ')
}

# The sum of kv bench durations (500ms, 10s, 2m, or bare seconds), in seconds.
seconds() {
    local d total=0
    for d in "$@"; do
        total=$(awk -v v="$d" -v t="$total" 'BEGIN {
            if (v ~ /ms$/) { sub(/ms$/, "", v); v = v / 1000 }
            else if (v ~ /s$/) { sub(/s$/, "", v) }
            else if (v ~ /m$/) { sub(/m$/, "", v); v = v * 60 }
            print t + v }')
    done
    echo "$total"
}

# The pid of etcd's current leader.
etcd_leader_pid() {
    local leader_ep i eps
    leader_ep=$(etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint status -w json |
        jq -r '.[] | select(.Status.leader == .Status.header.member_id) | .Endpoint')
    IFS=, read -r -a eps <<<"$ETCD_ENDPOINTS"
    for i in "${!eps[@]}"; do
        [[ $leader_ep == *"${eps[i]}" ]] && { echo "${etcd_pids[i]}"; return; }
    done
    echo "${etcd_pids[0]}"
}

# CPU time (microseconds) the given processes have used so far.
clk_tck=$(getconf CLK_TCK)
cpu_us() {
    local total=0 pid t
    for pid in "$@"; do
        t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo $((total * 1000000 / clk_tck))
}

# --- loads --------------------------------------------------------------------------------
COMMON=(--duration "$DURATION" --warmup "$WARMUP" --keys "$KEYS" --value-size "$VALUE_SIZE" --seed "$SEED")

# bench STORE NAME ARGS...: one measured run, saved as $ROUND_DIR/NAME.json with the servers'
# CPU time during the run (warm-up included) added.
bench() {
    local store=$1 name=$2; shift 2
    local pids before after
    if [[ $store == kv ]]; then
        pids=($KV_PIDS)
        set -- "$KV_BIN" --dir "$TMP/kv" bench "$@"
    else
        pids=("${etcd_pids[@]}")
        set -- "$KV_BIN" --endpoints "$ETCD_ENDPOINTS" bench --target etcd "$@"
    fi
    say "  $name"
    local perf_pid=""
    if [[ " ${PROFILE:-} " == *" $name "* ]]; then
        # The profiled process: etcd's leader, or kv's first node (kv nodes lead alike).
        local victim=${pids[0]}
        [[ $store == etcd ]] && victim=$(etcd_leader_pid)
        # For the warm-up and the measured time, not to a signal: a signal that comes while perf
        # is still attaching to a busy process's threads leaves an empty profile.
        perf record -F 499 -g -p "$victim" -o "$ROUND_DIR/$name.perf.data" \
            -- sleep "$(seconds "$WARMUP" "$DURATION")" >"$ROUND_DIR/$name.perf.log" 2>&1 &
        perf_pid=$!
    fi
    before=$(cpu_us "${pids[@]}")
    "$@" "${COMMON[@]}" -o json >"$ROUND_DIR/$name.raw" 2>"$ROUND_DIR/$name.err" ||
        say "    (exit $?: $(head -c 300 "$ROUND_DIR/$name.err"))"
    after=$(cpu_us "${pids[@]}")
    if [[ -n $perf_pid ]]; then
        wait "$perf_pid" 2>/dev/null || true
        perf report -i "$ROUND_DIR/$name.perf.data" --no-children --sort dso,symbol --stdio \
            -g none --percent-limit 0.5 >"$ROUND_DIR/$name.perf.txt" 2>/dev/null || true
    fi
    jq --argjson cpu "$((after - before))" '. + {server_cpu_us: $cpu}' \
        "$ROUND_DIR/$name.raw" >"$ROUND_DIR/$name.json" 2>/dev/null || true
    rm -f "$ROUND_DIR/$name.raw"
}

# preload STORE ARGS...: writes every key once (not measured).
preload() {
    local store=$1; shift
    if [[ $store == kv ]]; then
        "$KV_BIN" --dir "$TMP/kv" bench "$@" --preload --count 1 --mix put=100 \
            -c "$CONCURRENCY" --keys "$KEYS" --value-size "$VALUE_SIZE" -o json >/dev/null
    else
        "$KV_BIN" --endpoints "$ETCD_ENDPOINTS" bench --target etcd --preload --count 1 \
            --mix put=100 -c "$CONCURRENCY" --keys "$KEYS" --value-size "$VALUE_SIZE" -o json >/dev/null
    fi
}

C=$CONCURRENCY
mkdir -p "$OUT_DIR"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    lscpu | grep -E '^(Model name|CPU family|Model|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|CPU max MHz|Hypervisor vendor|L3 cache):' || true
    echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
    echo "kernel: $(uname -sr)"
    echo "data folder: $TMP on $(df -T "$TMP" | awk 'NR == 2 {print $1 " (" $2 ")"}')"
    echo "etcd: $(etcd --version | awk '/^etcd Version/ {print $3}')"
    echo "settings: duration $DURATION, warm-up $WARMUP, $KEYS keys, $VALUE_SIZE-byte values, $C in flight, $ROUNDS round(s), seed $SEED"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT_DIR/machine.txt"

for round in $(seq 1 "$ROUNDS"); do
    ROUND_DIR=$OUT_DIR/round-$round
    mkdir -p "$ROUND_DIR"
    say "round $round/$ROUNDS: starting etcd (3 members) and kv (3 nodes) in $TMP"
    start_etcd
    start_kv
    # Both clusters run during every measurement: what each costs while idle, for the reader.
    idle_etcd=$(cpu_us "${etcd_pids[@]}")
    idle_kv=$(cpu_us $KV_PIDS)
    sleep "$IDLE_SAMPLE_S"
    echo "round $round idle server CPU over ${IDLE_SAMPLE_S}s: etcd $(( ($(cpu_us "${etcd_pids[@]}") - idle_etcd) / (IDLE_SAMPLE_S * 10000) ))%, kv $(( ($(cpu_us $KV_PIDS) - idle_kv) / (IDLE_SAMPLE_S * 10000) ))% of one core" >>"$OUT_DIR/machine.txt"
    say "loading $KEYS keys into etcd, kv cp and kv ap"
    preload etcd
    preload kv -k cp
    preload kv -k ap --consistency all
    say "measuring ($DURATION each after $WARMUP of warm-up)"
    bench etcd etcd_put_1 --mix put=100 -c 1
    bench kv cp_put_1 -k cp --mix put=100 -c 1
    bench etcd etcd_put_$C --mix put=100 -c "$C"
    bench kv cp_put_$C -k cp --mix put=100 -c "$C"
    bench kv ap_put_quorum_$C -k ap --mix put=100 -c "$C" --consistency quorum
    bench kv ap_put_one_$C -k ap --mix put=100 -c "$C" --consistency one
    bench etcd etcd_get_$C --mix get=100 -c "$C"
    bench kv cp_get_$C -k cp --mix get=100 -c "$C"
    bench etcd etcd_serializable_get_$C --mix get=100 -c "$C" --stale
    bench kv cp_stale_get_$C -k cp --mix get=100 -c "$C" --stale
    bench kv ap_get_one_$C -k ap --mix get=100 -c "$C" --consistency one
    stop_clusters
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT_DIR/machine.txt"

# --- the table ----------------------------------------------------------------------------
# median NAME: the round whose throughput is the median for NAME (its JSON).
median() {
    jq -s 'map(select(.throughput_ops_s != null)) | sort_by(.throughput_ops_s)
           | if length == 0 then null else .[(length - 1) / 2 | floor] end' \
        "$OUT_DIR"/round-*/"$1".json 2>/dev/null || echo null
}
cell() { # JSON -> "ops/s (p50 / p99 ms)"
    jq -r 'if . == null then "failed" else
             "\(.throughput_ops_s | round) (\(.latency_ms.p50) / \(.latency_ms.p99))"
             + (if .errors.total > 0 then " [\(.errors.total) errors]" else "" end) end' <<<"$1"
}
cpu() { # JSON -> server CPU µs per answered request, warm-up included in both
    jq -r 'if . == null or .throughput_ops_s == 0 then "-" else
             (.server_cpu_us / (.throughput_ops_s * (.elapsed_s + .warmup_s)) | round | tostring) end' <<<"$1"
}
table() {
    echo "| figure | etcd ops/s (p50 / p99 ms) | kv ops/s (p50 / p99 ms) | kv / etcd | server CPU µs/op etcd · kv | kv hops |"
    echo "|---|---|---|---|---|---|"
    local row label kvname etcdname k e
    for row in \
        "CP put, 1 client|cp_put_1|etcd_put_1" \
        "CP put, $C in flight|cp_put_$C|etcd_put_$C" \
        "CP linearizable get, $C|cp_get_$C|etcd_get_$C" \
        "CP stale get, $C (etcd serializable)|cp_stale_get_$C|etcd_serializable_get_$C" \
        "AP put quorum, $C (vs etcd put)|ap_put_quorum_$C|etcd_put_$C" \
        "AP put one, $C (vs etcd put)|ap_put_one_$C|etcd_put_$C" \
        "AP get one, $C (vs etcd serializable)|ap_get_one_$C|etcd_serializable_get_$C"; do
        IFS='|' read -r label kvname etcdname <<<"$row"
        k=$(median "$kvname")
        e=$(median "$etcdname")
        ratio=$(jq -rn --argjson k "$k" --argjson e "$e" \
            'if $k == null or $e == null or $e.throughput_ops_s == 0 then "-"
             else ($k.throughput_ops_s / $e.throughput_ops_s * 100 | round / 100 | tostring) end')
        hops=$(jq -r 'if . == null or .hops == null then "-" else
                        "\(.hops.ratio * 1000 | round / 10)%" end' <<<"$k")
        echo "| $label | $(cell "$e") | $(cell "$k") | $ratio | $(cpu "$e") · $(cpu "$k") | $hops |"
    done
}
table >"$OUT_DIR/results.md"
cat "$OUT_DIR/machine.txt"
echo
cat "$OUT_DIR/results.md"
say ""
say "saved in $OUT_DIR (one JSON report per run and round)"
