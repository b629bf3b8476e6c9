#!/bin/bash
# bench/inject.sh -- the injection API against SMTP for 4 KiB messages (issue 19), in one command.
#
#   bench/inject.sh                  # RUNS=3, N=5000 messages, CONC=20 connections
#   RUNS=1 N=2000 bench/inject.sh    # quicker
#   TERN_BIN=path bench/inject.sh    # default: .build-bench/release/tern, else .build/release/tern
#
# Tern receives and spools only ([delivery] enabled = false; fsync before every answer, as always),
# in a private network namespace. Cases, each into a fresh spool:
#   http-1            N requests of one message to one recipient (bench/lib/inject_load.py)
#   smtp-1            N messages to one recipient with Postfix's smtp-source
#   http-100          N/20 requests of one message to 100 recipients (raw content: one message)
#   http-100-personal N/20 requests to 100 recipients with a substitution: 100 messages each
#   smtp-100          N/20 messages to 100 recipients with smtp-source -r 100
#   http-ceiling      the generator into a null HTTP server (inject_load.py serve): its own ceiling
# Tern's CPU is read from /proc/PID/stat before and after each case. Prints medians of messages/s,
# recipients/s and CPU per message and per recipient; rows in bench/results/inject-<time>/inject.tsv.
# Nothing passes or fails here. Run it alone on the machine.
set -euo pipefail
BENCH=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
if [ -z "${INSIDE_NETNS:-}" ]; then
  export INSIDE_NETNS=1
  exec unshare --net -- bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi
: "${RUNS:=3}" "${N:=5000}" "${CONC:=20}"
: "${RESULTS_DIR:=$BENCH/results/inject-$(date +%Y%m%d-%H%M%S)}"
if [ -z "${TERN_BIN:-}" ]; then
  TERN_BIN=$REPO/.build-bench/release/tern
  [ -x "$TERN_BIN" ] || TERN_BIN=$REPO/.build/release/tern
fi
command -v smtp-source >/dev/null || { echo "bench/inject.sh: smtp-source missing (apt-get install postfix)" >&2; exit 1; }
mkdir -p "$RESULTS_DIR"
W=$(mktemp -d /tmp/tern-inject-bench.XXXXXX)
trap 'kill $(cat "$W/pid" 2>/dev/null) 2>/dev/null; rm -rf "$W"' EXIT
TOKEN=$("$TERN_BIN" token --file "$W/tokens" bench | tail -1)
TSV=$RESULTS_DIR/inject.tsv
printf 'run\tcase\tmessages\trecipients\tseconds\ttern_cpu_s\n' > "$TSV"
TICKS=$(getconf CLK_TCK)

cpu_of() { awk -v t="$TICKS" '{ print ($14 + $15) / t }' "/proc/$1/stat"; }

start_tern() {
  rm -rf "$W/spool"
  cat > "$W/tern.toml" <<CONF
hostname = "relay.bench"
[server]
listen = ["127.0.0.1:2525"]
relay_networks = ["127.0.0.0/8"]
max_connections = 2000
max_connections_per_ip = 2000
reverse_dns = false
max_recipients = 1000
[spool]
path = "$W/spool"
[delivery]
enabled = false
[admin]
listen = ""
[http]
listen = "127.0.0.1:8080"
tokens_file = "$W/tokens"
max_connections = 64
CONF
  "$TERN_BIN" serve --config "$W/tern.toml" > "$W/tern.log" 2>&1 &
  echo $! > "$W/pid"
  for _ in $(seq 100); do grep -q "tern ready" "$W/tern.log" && return 0; sleep 0.05; done
  echo "tern did not start:" >&2; cat "$W/tern.log" >&2; exit 1
}

stop_tern() { kill -TERM "$(cat "$W/pid")"; wait "$(cat "$W/pid")" 2>/dev/null || true; }

# one CASE RUN: runs the case against a fresh Tern and appends its row.
one() {
  local case=$1 run=$2 per=$((N / 20)) msgs rcpts before after t0 t1
  start_tern
  local pid; pid=$(cat "$W/pid")
  before=$(cpu_of "$pid"); t0=$(date +%s.%N)
  case $case in
    http-1) python3 "$BENCH/lib/inject_load.py" load 127.0.0.1 8080 "$TOKEN" "$N" "$CONC" 1 > "$W/out"; msgs=$N; rcpts=$N ;;
    smtp-1) smtp-source -c -s "$CONC" -m "$N" -l 4096 -f bench@example.com -t user@example.net 127.0.0.1:2525 > "$W/out"
            msgs=$N; rcpts=$N ;;
    http-100) python3 "$BENCH/lib/inject_load.py" load 127.0.0.1 8080 "$TOKEN" "$per" "$CONC" 100 > "$W/out"
              msgs=$per; rcpts=$((per * 100)) ;;
    http-100-personal) python3 "$BENCH/lib/inject_load.py" load 127.0.0.1 8080 "$TOKEN" "$per" "$CONC" 100 --personal > "$W/out"
                       msgs=$((per * 100)); rcpts=$((per * 100)) ;;
    smtp-100) smtp-source -c -s "$CONC" -m "$per" -r 100 -l 4096 -f bench@example.com -t user@example.net 127.0.0.1:2525 > "$W/out"
              msgs=$per; rcpts=$((per * 100)) ;;
  esac
  t1=$(date +%s.%N); after=$(cpu_of "$pid")
  if grep -q "failed=[1-9]" "$W/out"; then echo "bench/inject.sh: $case had failures: $(cat "$W/out")" >&2; fi
  stop_tern
  local queued; queued=$(grep -c -e ": queued as " -e ", protocol=HTTP, " "$W/tern.log" || true)
  [ "$queued" -eq "$msgs" ] || echo "bench/inject.sh: $case queued $queued messages, expected $msgs" >&2
  printf '%s\t%s\t%s\t%s\t%.3f\t%.3f\n' "$run" "$case" "$msgs" "$rcpts" "$(echo "$t1 - $t0" | bc)" "$(echo "$after - $before" | bc)" >> "$TSV"
}

ceiling() {
  python3 "$BENCH/lib/inject_load.py" serve 127.0.0.1 8090 & local spid=$!
  sleep 0.5
  local t0 t1; t0=$(date +%s.%N)
  python3 "$BENCH/lib/inject_load.py" load 127.0.0.1 8090 x "$N" "$CONC" 1 > "$W/out"
  t1=$(date +%s.%N)
  kill "$spid"; wait "$spid" 2>/dev/null || true
  printf '%s\thttp-ceiling\t%s\t%s\t%.3f\t0\n' "$1" "$N" "$N" "$(echo "$t1 - $t0" | bc)" >> "$TSV"
}

for run in $(seq "$RUNS"); do
  for c in http-1 smtp-1 http-100 http-100-personal smtp-100; do one "$c" "$run"; done
  ceiling "$run"
done

python3 - "$TSV" <<'PY' | tee "$RESULTS_DIR/summary.md"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cases = []
for r in rows:
    if r["case"] not in cases: cases.append(r["case"])
print("| case | messages/s | recipients/s | Tern CPU µs/message | Tern CPU µs/recipient | runs |")
print("|---|---|---|---|---|---|")
for c in cases:
    rs = [r for r in rows if r["case"] == c]
    med = lambda f: statistics.median(f(r) for r in rs)
    mps = med(lambda r: int(r["messages"]) / float(r["seconds"]))
    rps = med(lambda r: int(r["recipients"]) / float(r["seconds"]))
    cpm = med(lambda r: float(r["tern_cpu_s"]) / int(r["messages"]) * 1e6)
    cpr = med(lambda r: float(r["tern_cpu_s"]) / int(r["recipients"]) * 1e6)
    cpu = "-" if c == "http-ceiling" else f"{cpm:.0f}"
    cpur = "-" if c == "http-ceiling" else f"{cpr:.1f}"
    print(f"| {c} | {mps:.0f} | {rps:.0f} | {cpu} | {cpur} | {len(rs)} |")
PY
