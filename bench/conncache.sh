#!/bin/bash
# bench/conncache.sh: the outbound connection cache (delivery.connection_cache_time) on and off.
# smtp-source -> tern serve ([routes] "*" = "[127.0.0.1]:2926") -> smtp-sink, in a private network
# namespace, for the issues' two end-to-end cases, RUNS interleaved repetitions of each setting.
# One line per run: tern's CPU (utime+stime ticks, /proc/PID/stat) from the first message in to the
# last one delivered, the outbound connect() calls (perf), and the wall time to the last delivery.
# As root. TERN_BIN (default .build-bench/release/tern), RUNS (3), CACHES ("0 2s"),
# CASES ("2000:102400:20 20000:4096:100"), PORTS ("2925 2926").
set -euo pipefail
if [ "${CONNCACHE_IN_NS:-}" != 1 ]; then
    exec env CONNCACHE_IN_NS=1 unshare --net -- "$0" "$@"
fi
ip link set lo up
here=$(cd "$(dirname "$0")/.." && pwd)
TERN_BIN=${TERN_BIN:-$here/.build-bench/release/tern}
RUNS=${RUNS:-3}; CACHES=${CACHES:-"0 2s"}; CASES=${CASES:-"2000:102400:20 20000:4096:100"}
read -r IN OUT <<<"${PORTS:-2925 2926}"
W=$(mktemp -d /tmp/tern-conncache.XXXXXX)
trap 'rm -rf "$W"' EXIT

one() {  # cache n size sessions
    local cache=$1 n=$2 size=$3 c=$4
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
connection_cache_time = "$cache"
[routes]
"*" = "[127.0.0.1]:$OUT"
[admin]
listen = ""
CONF
    smtp-sink -u nobody "127.0.0.1:$OUT" 1000 & local sink=$!
    "$TERN_BIN" serve --config "$W/tern.toml" > "$W/log" 2>&1 & local tern=$!
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$IN") 2>/dev/null && break; sleep 0.1; done
    perf stat -x, -e syscalls:sys_enter_connect -p "$tern" -o "$W/perf.txt" & local perf=$!
    sleep 0.3
    local a t0 t1 b
    a=$(awk '{print $14+$15}' "/proc/$tern/stat"); t0=$(date +%s.%N)
    smtp-source -c -s "$c" -m "$n" -l "$size" -f a@b.test -t c@d.test "127.0.0.1:$IN" > /dev/null
    for _ in $(seq 3000); do  # at most 300 s for the last delivery
        [ "$(grep -c 'status=sent' "$W/log")" -ge "$n" ] && break
        sleep 0.1
    done
    t1=$(date +%s.%N); b=$(awk '{print $14+$15}' "/proc/$tern/stat")
    kill -INT "$perf"; wait "$perf" 2>/dev/null || true
    printf "cache=%-3s %5d x %6d B at %3d  wall=%.2fs  cpu_ticks=%d  connects=%s  sent=%d\n" "$cache" "$n" "$size" "$c" \
        "$(echo "$t1 - $t0" | bc)" $((b - a)) "$(grep sys_enter_connect "$W/perf.txt" | cut -d, -f1)" \
        "$(grep -c 'status=sent' "$W/log")"
    kill "$tern" "$sink"; wait "$tern" "$sink" 2>/dev/null || true
}

for rep in $(seq "$RUNS"); do
    for case in $CASES; do
        IFS=: read -r n size c <<<"$case"
        for cache in $CACHES; do one "$cache" "$n" "$size" "$c"; sleep 1; done
    done
done
