#!/bin/bash
# Tern's CPU per relayed message, two builds side by side (made for journal segment recycling):
# smtp-source -> tern serve -> smtp-sink, 2,000 messages of 100 KiB at 20 sessions, fsync on.
# Each run starts a fresh spool and server and sends two loads back to back: the first starts with no
# spare segment, the second is the steady state (segments retired by the first). The CPU is Tern's
# utime+stime from /proc/PID/stat, from just before a load until Tern is idle again (every message
# delivered). Runs alternate between the builds, so background load hits both alike.
#
#   BEFORE=/path/to/old/tern AFTER=.build-x/release/tern RUNS=4 bench/journal-recycle.sh
#
# As root: it re-runs itself in a private network namespace with only loopback (ports 2825/2826).
set -eu
if [ -z "${IN_NETNS:-}" ]; then
    exec unshare --net -- env IN_NETNS=1 "$0" "$@"
fi
ip link set lo up
BEFORE=${BEFORE:?path of the first build}; AFTER=${AFTER:?path of the second build}
RUNS=${RUNS:-4}; N=${N:-2000}; SIZE=${SIZE:-102400}; C=${C:-20}
W=${W:-/tmp/tern-journal-recycle}; rm -rf "$W"; mkdir -p "$W"
HZ=$(getconf CLK_TCK)

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Waits until the process's CPU time stops moving for a second (queue drained), at most 60 s.
wait_idle() {
    local last now i
    last=$(ticks "$1")
    for i in $(seq 1 120); do
        sleep 0.5
        now=$(ticks "$1")
        if [ "$now" = "$last" ] && [ "$i" -ge 2 ]; then sleep 0.5; [ "$(ticks "$1")" = "$now" ] && return; fi
        last=$now
    done
}

one_run() {  # name binary -> prints "name load1_ms load2_ms wall1 wall2 free_files"
    local name=$1 bin=$2 d="$W/$1" t sink a b c wall1 wall2
    rm -rf "$d"; mkdir -p "$d/spool"
    cat > "$d/tern.toml" <<CONF
hostname = "relay.bench"
[server]
listen = ["127.0.0.1:2825"]
relay_networks = ["127.0.0.0/8"]
max_connections = 20000
max_connections_per_ip = 20000
reverse_dns = false
[spool]
path = "$d/spool"
[delivery]
enabled = true
[routes]
"*" = "[127.0.0.1]:2826"
[admin]
listen = ""
CONF
    smtp-sink -u nobody 127.0.0.1:2826 1000 & sink=$!
    "$bin" serve --config "$d/tern.toml" > "$d/log" 2>&1 & t=$!
    sleep 1
    a=$(ticks $t)
    wall1=$( { /usr/bin/time -f "%e" smtp-source -c -s "$C" -m "$N" -l "$SIZE" -f a@b.test -t c@d.test 127.0.0.1:2825 >/dev/null; } 2>&1 | tail -1)
    wait_idle $t
    b=$(ticks $t)
    wall2=$( { /usr/bin/time -f "%e" smtp-source -c -s "$C" -m "$N" -l "$SIZE" -f a@b.test -t c@d.test 127.0.0.1:2825 >/dev/null; } 2>&1 | tail -1)
    wait_idle $t
    c=$(ticks $t)
    local spares; spares=$(find "$d/spool/journal" -name '*.free' | wc -l)
    kill $t $sink; wait $t $sink 2>/dev/null || true
    echo "$name $(echo "scale=4; ($b-$a)*1000/$HZ/$N" | bc) $(echo "scale=4; ($c-$b)*1000/$HZ/$N" | bc) $wall1 $wall2 $spares"
}

echo "build load1_ms/msg load2_ms/msg wall1_s wall2_s free_files" | tee "$W/runs.txt"
for r in $(seq 1 "$RUNS"); do
    if [ $((r % 2)) = 1 ]; then order="before after"; else order="after before"; fi
    for name in $order; do
        if [ $name = before ]; then bin=$BEFORE; else bin=$AFTER; fi
        one_run $name "$bin" | tee -a "$W/runs.txt"
    done
done
echo "medians (ms of Tern CPU per message):"
for name in before after; do
    for col in 2 3 4 5; do
        grep "^$name " "$W/runs.txt" | awk -v c=$col '{print $c}' | sort -n | awk '{v[NR]=$1} END {m = NR % 2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2; printf "%s ", m}'
    done | sed "s/^/$name load1 load2 wall1 wall2: /"; echo
done
