#!/bin/bash
# bench/sink.sh -- `tern sink` as a load-test target, beside Postfix's smtp-sink, in one command.
#
#   bench/sink.sh                # as root: build, then RUNS=3 interleaved repetitions, summary
#   RUNS=1 bench/sink.sh         # one repetition
#   SKIP_BUILD=1 bench/sink.sh   # reuse .build-bench/release/tern (or TERN_BIN)
#
# 1. rate: Postfix's smtp-source (-c -s CONC -m N -l SIZE, one message per connection, its
#    default) into smtp-sink (started exactly as the shared harness starts it: -c -u nobody
#    -m 2000, backlog 2048) and into `tern sink --mode count`, one after the other in each
#    repetition.  msgs/s = messages smtp-source saw accepted / the time smtp-source ran.  The
#    counts are checked on the receiving side (smtp-sink's -c counter, tern's /metrics).
# 2. sessions: the harness's lib/idle_clients.py opens SESSIONS sessions to `tern sink` (banner,
#    EHLO, 250, then idle), at most 200 handshakes in flight; once all are established (or
#    ESTABLISH_TIMEOUT passes) tern's RSS and its tern_sink_sessions_active gauge are read.
#
# Runs in the harness's private network namespace (only a fresh loopback; enter_ns in
# ../shared/bench/lib/common.sh).  Every loop is bounded: smtp-source by SOURCE_TIMEOUT,
# the idle clients by ESTABLISH_TIMEOUT and their own --hold.  It measures and reports; it
# never passes or fails on a figure.  Results: bench/results/sink-<date-time>/ (git-ignored):
# rate.tsv, sessions.tsv, summary.md (printed), env.txt, runs/.
#
# Environment (defaults):
#   RUNS=3 N=50000 SIZE=4096 CONC=100 SESSIONS=15000 SOURCE_TIMEOUT=300 ESTABLISH_TIMEOUT=120
#   SKIP_BUILD=0 TERN_BIN=.build-bench/release/tern RESULTS_DIR=bench/results/sink-<date-time>
set -uo pipefail
BENCH=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
: "${BENCH_HARNESS:=$REPO/../shared/bench}"
: "${RUNS:=3}" "${N:=50000}" "${SIZE:=4096}" "${CONC:=100}" "${SESSIONS:=15000}"
: "${SOURCE_TIMEOUT:=300}" "${ESTABLISH_TIMEOUT:=120}" "${SKIP_BUILD:=0}"
: "${TERN_BIN:=$REPO/.build-bench/release/tern}"
: "${RESULTS_DIR:=$BENCH/results/sink-$(date +%Y%m%d-%H%M%S)}"
export RUNS N SIZE CONC SESSIONS SOURCE_TIMEOUT ESTABLISH_TIMEOUT TERN_BIN RESULTS_DIR BENCH_HARNESS

if [ "${BENCH_PRIVATE_NS:-0}" != 1 ]; then
  # Outside the namespace: checks and the build (which may need the network for packages).
  [ "$(id -u)" = 0 ] || { echo "bench/sink.sh: run as root (unshare, mount)" >&2; exit 1; }
  [ -r "$BENCH_HARNESS/lib/common.sh" ] || { echo "bench/sink.sh: no harness at $BENCH_HARNESS" >&2; exit 1; }
  case $RUNS in ''|*[!0-9]*) echo "RUNS must be a number" >&2; exit 1 ;; esac
  [ "$RUNS" -ge 1 ] && [ "$RUNS" -le 20 ] || { echo "RUNS must be 1..20" >&2; exit 1; }
  [ "$SESSIONS" -le 19000 ] || { echo "SESSIONS above what a 20,000 fd limit allows" >&2; exit 1; }
  command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null || "$BENCH_HARNESS/setup.sh"
  if [ "$SKIP_BUILD" != 1 ]; then
    echo "[$(date +%T)] building tern (release, --scratch-path .build-bench)" >&2
    (cd "$REPO" && timeout 3600 swift build -c release --scratch-path .build-bench --product tern) \
      > /tmp/tern-sink-bench-build.log 2>&1 || { tail -30 /tmp/tern-sink-bench-build.log >&2; exit 1; }
  fi
  [ -x "$TERN_BIN" ] || { echo "no tern binary at $TERN_BIN" >&2; exit 1; }
fi

. "$BENCH_HARNESS/lib/common.sh"
enter_ns "$(readlink -f "$0")" "$@"

TERN_PORT=2527
METRICS_PORT=8026
TERN_PID=
mkdir -p "$RESULTS_DIR/runs"
{
  echo "date: $(date -Is)"
  echo "host: $(uname -srm), $(nproc) cpus; fd limit $(ulimit -n)"
  echo "postfix: $(postconf -d -h mail_version 2>/dev/null)"
  echo "tern: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null), binary built $(date -r "$TERN_BIN" -Is)"
  echo "rate case: N=$N SIZE=$SIZE CONC=$CONC, runs=$RUNS (interleaved); sessions: $SESSIONS"
  echo "loadavg at start: $(cat /proc/loadavg)"
  echo "busiest processes at start (%cpu since start, command):"
  ps -eo pcpu=,args= --sort=-pcpu | head -5 | cut -c1-110 | sed 's/^/  /'
} > "$RESULTS_DIR/env.txt"
printf 'rep\ttarget\tn\taccepted\treceived\tseconds\tmsgs_per_s\treceiver_cpu_s\tsource_cpu_s\tloadavg\n' > "$RESULTS_DIR/rate.tsv"
printf 'rep\twanted\testablished\tsessions_active\trss_kib\n' > "$RESULTS_DIR/sessions.tsv"

start_tern() {  # DIR
  timeout -s TERM 1800 "$TERN_BIN" sink --mode count --listen "127.0.0.1:$TERN_PORT" \
    --metrics-listen "127.0.0.1:$METRICS_PORT" --max-connections 19000 > "$1/tern.out" 2> "$1/tern.err" &
  TERN_PID=$!
  wait_banner 127.0.0.1 "$TERN_PORT" 10 || die "tern sink did not start"
}
stop_tern() {
  [ -n "$TERN_PID" ] && kill -TERM "$TERN_PID" 2>/dev/null && wait "$TERN_PID" 2>/dev/null
  TERN_PID=
}
tern_metric() {  # NAME: its value on /metrics (the probe sessions of wait_banner included)
  $PY - "$METRICS_PORT" "$1" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
print(next((l.split()[-1] for l in body.splitlines() if l.split(" ")[0] == sys.argv[2]), "?"))
EOF
}
cleanup() { stop_tern; stop_sink; }
trap cleanup EXIT
trap 'exit 130' INT TERM

proc_cpu() {  # PID: user+system CPU seconds so far
  awk -v t="$(getconf CLK_TCK)" '{sub(/^.*\) /,""); print ($12+$13)/t}' "/proc/$1/stat" 2>/dev/null || echo 0
}

source_into() {  # DIR PORT: smtp-source run, prints "accepted seconds source-cpu"
  local t0 t1
  t0=$(now)
  /usr/bin/time -f "%U %S" -o "$1/source.time" timeout "$SOURCE_TIMEOUT" smtp-source -c -s "$CONC" -m "$N" -l "$SIZE" -f from@example.com -t to@example.net \
    "127.0.0.1:$2" > "$1/source.out" 2>&1
  t1=$(now)
  local accepted; accepted=$(tr '\r' '\n' < "$1/source.out" | grep -E '^[0-9]+$' | tail -1)
  echo "${accepted:-0} $(echo "$t1 $t0" | awk '{printf "%.3f", $1-$2}') $(awk 'END{print $1+$2}' "$1/source.time")"
}

row() {  # REP TARGET ACCEPTED RECEIVED SECONDS RECEIVER-CPU SOURCE-CPU
  local rate; rate=$(echo "$3 $5" | awk '{printf "%.0f", ($2 > 0 ? $1/$2 : 0)}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$N" "$3" "$4" "$5" "$rate" "$6" "$7" \
    "$(cut -d' ' -f1 /proc/loadavg)" >> "$RESULTS_DIR/rate.tsv"
  log "rep $1 $2: $3 accepted in $5 s = $rate msgs/s (receiver counted $4; CPU s: receiver $6, smtp-source $7)"
}

for rep in $(seq 1 "$RUNS"); do
  R="$RESULTS_DIR/runs/rep$rep"; mkdir -p "$R/smtp-sink" "$R/tern" "$R/sessions"
  # smtp-sink, started as the harness starts it
  start_sink "$R/smtp-sink"
  sinkp=$(pgrep -P "$SINK_PID" | head -1)  # SINK_PID is the `timeout` wrapper
  c0=$(proc_cpu "$sinkp")
  read -r acc secs scpu < <(source_into "$R/smtp-sink" "$SINK_PORT")
  c1=$(proc_cpu "$sinkp")
  got=$($PY "$BENCH_DIR/lib/waitsink.py" --file "$R/smtp-sink/sink.out" --target "$acc" --timeout 10 | awk '{print $2}')
  stop_sink
  row "$rep" smtp-sink "$acc" "${got:-?}" "$secs" "$(echo "$c1 $c0" | awk '{print $1-$2}')" "$scpu"
  sleep 2
  # tern sink
  start_tern "$R/tern"
  tern=$(pgrep -P "$TERN_PID" | head -1)
  c0=$(proc_cpu "$tern")
  read -r acc secs scpu < <(source_into "$R/tern" "$TERN_PORT")
  c1=$(proc_cpu "$tern")
  got=$(tern_metric tern_sink_messages_total)
  stop_tern
  row "$rep" tern-sink "$acc" "$got" "$secs" "$(echo "$c1 $c0" | awk '{print $1-$2}')" "$scpu"
  sleep 2
  # concurrent sessions held by tern sink
  start_tern "$R/sessions"
  $PY "$BENCH_DIR/lib/idle_clients.py" --port "$TERN_PORT" --count "$SESSIONS" --parallel 200 \
    --establish-timeout "$ESTABLISH_TIMEOUT" --hold 120 --ready "$R/sessions/ready.json" \
    > "$R/sessions/clients.out" 2>&1 &
  clients=$!
  for _ in $(seq 1 $((ESTABLISH_TIMEOUT * 10 + 100))); do
    [ -s "$R/sessions/ready.json" ] && break
    kill -0 "$clients" 2>/dev/null || break
    sleep 0.1
  done
  sleep 3
  est=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1])).get("established","?"))' "$R/sessions/ready.json" 2>/dev/null || echo "?")
  active=$(tern_metric tern_sink_sessions_active)
  tern=$(pgrep -P "$TERN_PID" | head -1)  # TERN_PID is the `timeout` wrapper
  rss=$(awk '/^VmRSS/{print $2}' "/proc/${tern:-$TERN_PID}/status")
  kill -USR1 "$clients" 2>/dev/null; wait "$clients" 2>/dev/null
  stop_tern
  printf '%s\t%s\t%s\t%s\t%s\n' "$rep" "$SESSIONS" "$est" "$active" "$rss" >> "$RESULTS_DIR/sessions.tsv"
  log "rep $rep sessions: $est of $SESSIONS established, gauge $active, tern RSS $rss KiB"
  sleep 2
done

$PY - "$RESULTS_DIR" <<'EOF' | tee "$RESULTS_DIR/summary.md"
import csv, statistics, sys
d = sys.argv[1]
rows = list(csv.DictReader(open(f"{d}/rate.tsv"), delimiter="\t"))
med = {}
print("| target | runs | median msgs/s | runs (msgs/s) | median receiver CPU µs/msg | median smtp-source CPU µs/msg |")
print("|---|---|---|---|---|---|")
for t in ("smtp-sink", "tern-sink"):
    mine = [r for r in rows if r["target"] == t]
    rates = [float(r["msgs_per_s"]) for r in mine]
    med[t] = statistics.median(rates) if rates else 0
    per = lambda key: statistics.median([float(r[key]) * 1e6 / max(1, int(r["accepted"] or 0)) for r in mine]) if mine else 0
    print(f"| {t} | {len(rates)} | {med[t]:.0f} | {', '.join(f'{x:.0f}' for x in rates)} | "
          f"{per('receiver_cpu_s'):.0f} | {per('source_cpu_s'):.0f} |")
if med["smtp-sink"]:
    print(f"\ntern sink / smtp-sink, ratio of the medians: {med['tern-sink'] / med['smtp-sink']:.2f}x (goal: at least 1.5x)")
    paired = [float(b["msgs_per_s"]) / float(a["msgs_per_s"])
              for a in rows if a["target"] == "smtp-sink"
              for b in rows if b["target"] == "tern-sink" and b["rep"] == a["rep"] and float(a["msgs_per_s"]) > 0]
    if paired:
        print(f"per repetition (each pair run back to back): {', '.join(f'{x:.2f}x' for x in paired)}; "
              f"median {statistics.median(paired):.2f}x")
s = list(csv.DictReader(open(f"{d}/sessions.tsv"), delimiter="\t"))
print("\n| rep | sessions wanted | established | tern_sink_sessions_active | tern RSS MiB |\n|---|---|---|---|---|")
for r in s:
    rss = f"{int(r['rss_kib']) / 1024:.0f}" if r["rss_kib"].isdigit() else "?"
    print(f"| {r['rep']} | {r['wanted']} | {r['established']} | {r['sessions_active']} | {rss} |")
EOF
log "results: $RESULTS_DIR"
