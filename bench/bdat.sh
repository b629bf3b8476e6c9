#!/bin/bash
# bench/bdat.sh: BDAT (RFC 3030) against DATA on both hops of a relay (issue 18):
#   tern blast [--bdat] -> tern serve ([delivery] chunking on or off) -> tern sink
# in a private network namespace, RUNS interleaved repetitions of each mode for each case. One line
# per run: the relay's CPU (utime+stime ticks of /proc/PID/stat, 10 ms each) from the start of the
# injection to the last delivery, blast's accepted msg/s and the wall time to the last delivery. A
# line per repetition gives the load generator's own rate straight into the sink (its ceiling).
# Then the medians and the BDAT/DATA ratios. As root. TERN_BIN (default .build-bench/release/tern,
# built if missing), RUNS (5), CASES ("20000:4k:50 10000:100k:20": messages:size:connections),
# PORTS ("2935 2936"). Nothing passes or fails here; run it alone on the machine.
set -euo pipefail
if [ "${BDAT_IN_NS:-}" != 1 ]; then
    exec env BDAT_IN_NS=1 unshare --net -- "$0" "$@"
fi
ip link set lo up
here=$(cd "$(dirname "$0")/.." && pwd)
TERN_BIN=${TERN_BIN:-$here/.build-bench/release/tern}
if [ ! -x "$TERN_BIN" ]; then
    (cd "$here" && swift build -c release --scratch-path .build-bench --product tern >&2)
fi
RUNS=${RUNS:-5}; CASES=${CASES:-"20000:4k:50 10000:100k:20"}
read -r IN OUT <<<"${PORTS:-2935 2936}"
W=$(mktemp -d /tmp/tern-bdat.XXXXXX)
trap 'rm -rf "$W"' EXIT
RESULTS="$W/results.txt"
: > "$RESULTS"

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

sink_start() {  # extra sink options
    "$TERN_BIN" sink --listen "127.0.0.1:$OUT" --mode count --seed 1 "$@" > "$W/sink.log" 2>&1 &
    SINK=$!
    wait_port "$OUT"
}

ceiling() {  # n size c
    sink_start
    "$TERN_BIN" blast --server "127.0.0.1:$OUT" --messages "$1" --size "$2" --concurrency "$3" \
        --messages-per-connection 100 --json --quiet > "$W/blast.json"
    kill "$SINK"; wait "$SINK" 2>/dev/null || true
    printf "ceiling %s %s %s mps=%s\n" "$1" "$2" "$3" \
        "$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["rates"]["messages_per_s"]))' "$W/blast.json")" \
        | tee -a "$RESULTS"
}

one() {  # mode n size c
    local mode=$1 n=$2 size=$3 c=$4 chunking=false blastopt=()
    [ "$mode" = bdat ] && { chunking=true; blastopt=(--bdat); }
    rm -rf "$W/spool"; mkdir -p "$W/spool"
    cat > "$W/tern.toml" <<CONF
hostname = "relay.bench"
[server]
listen = ["127.0.0.1:$IN"]
relay_networks = ["127.0.0.0/8"]
max_connections = 20000
max_connections_per_ip = 20000
reverse_dns = false
[spool]
path = "$W/spool"
[delivery]
enabled = true
chunking = $chunking
[routes]
"*" = "[127.0.0.1]:$OUT"
[admin]
listen = ""
CONF
    sink_start
    "$TERN_BIN" serve --config "$W/tern.toml" > "$W/log" 2>&1 & local tern=$!
    wait_port "$IN"
    sleep 0.3
    local a t0 t1 b
    a=$(awk '{print $14+$15}' "/proc/$tern/stat"); t0=$(date +%s.%N)
    "$TERN_BIN" blast --server "127.0.0.1:$IN" --messages "$n" --size "$size" --concurrency "$c" \
        --messages-per-connection 100 "${blastopt[@]}" --json --quiet > "$W/blast.json"
    for _ in $(seq 3000); do  # at most 300 s for the last delivery
        [ "$(grep -c 'status=sent' "$W/log")" -ge "$n" ] && break
        sleep 0.1
    done
    t1=$(date +%s.%N); b=$(awk '{print $14+$15}' "/proc/$tern/stat")
    printf "%s %s %s %s cpu_ticks=%d wall=%.2f mps=%s sent=%d\n" "$mode" "$n" "$size" "$c" $((b - a)) \
        "$(echo "$t1 - $t0" | bc)" \
        "$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["rates"]["messages_per_s"]))' "$W/blast.json")" \
        "$(grep -c 'status=sent' "$W/log")" | tee -a "$RESULTS"
    kill "$tern" "$SINK"; wait "$tern" "$SINK" 2>/dev/null || true
}

for rep in $(seq "$RUNS"); do
    for case in $CASES; do
        IFS=: read -r n size c <<<"$case"
        ceiling "$n" "$size" "$c"; sleep 1
        for mode in data bdat; do one "$mode" "$n" "$size" "$c"; sleep 2; done
    done
done

python3 - "$RESULTS" <<'PY'
import re, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def field(r, k): return float(next(x.split("=")[1] for x in r if x.startswith(k + "=")))
cases = sorted({(r[1], r[2], r[3]) for r in rows}, key=lambda k: int(k[0]))
print("\n| case | mode | runs | relay CPU ms/msg (each) | accepted msg/s | wall s | load generator ceiling msg/s |")
print("|---|---|---|---|---|---|---|")
for n, size, c in cases:
    ceil = [field(r, "mps") for r in rows if r[0] == "ceiling" and r[1:4] == [n, size, c]]
    med = {}
    for mode in ("data", "bdat"):
        rs = [r for r in rows if r[0] == mode and r[1:4] == [n, size, c]]
        cpu = [field(r, "cpu_ticks") * 10 / int(n) for r in rs]
        med[mode] = (statistics.median(cpu), cpu)
        print(f"| {n} x {size} at {c} | {mode.upper()} | {len(rs)} | {statistics.median(cpu):.3f} "
              f"({', '.join(f'{x:.3f}' for x in cpu)}) | {statistics.median(field(r, 'mps') for r in rs):,.0f} | "
              f"{statistics.median(field(r, 'wall') for r in rs):.2f} | {statistics.median(ceil):,.0f} |")
    per = [b / d for b, d in zip(med["bdat"][1], med["data"][1])]
    print(f"\n{n} x {size}: BDAT / DATA relay CPU per message {med['bdat'][0] / med['data'][0]:.3f}x "
          f"(per repetition {', '.join(f'{x:.3f}' for x in per)})")
PY
