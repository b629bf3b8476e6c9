#!/bin/bash
# bench/blast.sh -- `tern blast` beside Postfix's smtp-source, both into smtp-sink, in one run.
#
#   bench/blast.sh                      # as root: RUNS=5 interleaved pairs, N=50000, 100 connections
#   RUNS=3 N=20000 bench/blast.sh       # shorter
#   SKIP_BUILD=1 TERN_BIN=.build-blast/release/tern bench/blast.sh
#
# Each run starts a fresh smtp-sink (the shared harness's start_sink: `smtp-sink -c -u nobody -m 2000
# 127.0.0.1:2526 2048`), runs one generator against it, and counts the messages smtp-sink saw (the
# same referee for both). Runs are interleaved and alternate in order (source, blast; then blast,
# source; ...) so background load hits both alike. Everything runs in a private network namespace
# (the harness's enter_ns: only loopback exists). Every run is bounded by SOURCE_TIMEOUT.
#
#   smtp-source -c -s CONC -m N -l SIZE -f from@example.com -t to@example.net 127.0.0.1:2526
#   tern blast --server 127.0.0.1:2526 --messages N --concurrency CONC --size BLAST_SIZE
#              --from from@example.com --to to@example.net [BLAST_OPTS] --json --quiet
#
# smtp-source -l SIZE is the body; it adds a 130-byte header, so with SIZE=4096 its messages are
# 4,226 bytes, and BLAST_SIZE defaults to SIZE+130 so both send the same bytes per message.
# Both open one connection per message (smtp-source's default; blast's --messages-per-connection 1).
# smtp-source never pipelines; blast pipelines MAIL/RCPT/DATA when the sink offers it (it does):
# GENERATORS="source blast blast-nopipe" adds blast with --no-pipelining, the like-for-like dialogue.
#
# msg/s = messages smtp-sink counted / the generator's wall time (process start to exit).
# CPU ms/msg = the generator's user+system CPU (from /usr/bin/time) / messages.
# Output: bench/results/blast-<date-time>/ (git-ignored): runs.tsv, summary.md (printed), env.txt,
# and each run's generator output. Nothing here passes or fails on a figure.
#
# Environment (defaults):
#   RUNS=5  N=50000  SIZE=4096  BLAST_SIZE=SIZE+130  CONC=100  BLAST_OPTS=""  GENERATORS="source blast"
#   SOURCE_TIMEOUT=300  PAUSE=5 (s between runs)  SKIP_BUILD=0  TERN_BIN=.build-bench/release/tern
#   BENCH_HARNESS=../shared/bench  RESULTS_DIR=bench/results/blast-<date-time>
set -uo pipefail
BENCH=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
cd "$REPO"
: "${BENCH_HARNESS:=$REPO/../shared/bench}"
: "${RUNS:=5}" "${N:=50000}" "${SIZE:=4096}" "${CONC:=100}" "${SOURCE_TIMEOUT:=300}" "${PAUSE:=5}"
: "${BLAST_SIZE:=$((SIZE + 130))}" "${BLAST_OPTS:=}" "${GENERATORS:=source blast}" "${SKIP_BUILD:=0}"
: "${TERN_BIN:=$REPO/.build-bench/release/tern}"
: "${RESULTS_DIR:=$BENCH/results/blast-$(date +%Y%m%d-%H%M%S)}"
export BENCH_HARNESS RUNS N SIZE CONC SOURCE_TIMEOUT PAUSE BLAST_SIZE BLAST_OPTS GENERATORS TERN_BIN RESULTS_DIR
export SKIP_BUILD

die() { echo "bench/blast.sh: $*" >&2; exit 1; }
[ -f "$BENCH_HARNESS/lib/common.sh" ] || die "no harness at $BENCH_HARNESS (set BENCH_HARNESS)"
case $RUNS$N$CONC$PAUSE in ''|*[!0-9]*) die "RUNS, N, CONC and PAUSE must be numbers" ;; esac
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 20 ] || die "RUNS must be 1..20"
[ "$CONC" -le 1900 ] || die "CONC must be at most 1900 (smtp-sink serves 2000 sessions at once)"

# Build before entering the namespace (the package cache is outside it).
if [ "${BENCH_PRIVATE_NS:-0}" != 1 ] && [ "$SKIP_BUILD" != 1 ]; then
  echo "[$(date +%T)] building tern (release, --scratch-path .build-bench)" >&2
  timeout 3600 swift build -c release --scratch-path .build-bench --product tern > /tmp/tern-blast-build.$$.log 2>&1 \
    || { tail -30 /tmp/tern-blast-build.$$.log >&2; die "swift build failed"; }
fi
[ -x "$TERN_BIN" ] || die "no tern binary at $TERN_BIN (SKIP_BUILD=0 builds it; TERN_BIN overrides)"
command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null \
  || die "smtp-source/smtp-sink missing: run $BENCH_HARNESS/setup.sh (or scripts/install-deps.sh)"

. "$BENCH_HARNESS/lib/common.sh"
enter_ns "$(readlink -f "$0")" "$@"
trap cleanup_all EXIT
trap 'exit 130' INT TERM

mkdir -p "$RESULTS_DIR/runs"
{
  echo "date: $(date -Is)"
  echo "host: $(uname -srm), $(nproc) cpus, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "postfix: $(postconf -d -h mail_version 2>/dev/null)"
  echo "tern: $(git rev-parse --short HEAD 2>/dev/null), binary $TERN_BIN built $(date -r "$TERN_BIN" -Is)"
  echo "case: N=$N SIZE=$SIZE (blast --size $BLAST_SIZE) CONC=$CONC RUNS=$RUNS BLAST_OPTS='$BLAST_OPTS'"
  echo "loadavg at start: $(cat /proc/loadavg)"
  echo "busiest processes at start (%cpu since start, command):"
  ps -eo pcpu=,args= --sort=-pcpu | head -5 | cut -c1-110 | sed 's/^/  /'
} > "$RESULTS_DIR/env.txt"
printf 'generator\trep\tn\tsink_messages\twall_s\tmsg_per_s\tcpu_s\tcpu_ms_per_msg\trc\tloadavg\n' > "$RESULTS_DIR/runs.tsv"

run_one() {  # GENERATOR REP
  local gen=$1 rep=$2 d="$RESULTS_DIR/runs/rep$2-$1"
  mkdir -p "$d"
  local cmd
  case $gen in
    source) cmd=(smtp-source -c -s "$CONC" -m "$N" -l "$SIZE" -f from@example.com -t to@example.net
                 "$SINK_ADDR:$SINK_PORT") ;;
    blast|blast-nopipe)
      cmd=("$TERN_BIN" blast --server "$SINK_ADDR:$SINK_PORT" --messages "$N" --concurrency "$CONC"
           --size "$BLAST_SIZE" --from from@example.com --to to@example.net $BLAST_OPTS --json --quiet)
      [ "$gen" = blast-nopipe ] && cmd+=(--no-pipelining) ;;
    *) die "unknown generator $gen" ;;
  esac
  start_sink "$d"
  local base; base=$(sink_count "$d/sink.out")
  local load; load=$(cut -d' ' -f1 /proc/loadavg)
  log "rep $rep: $gen ($N messages, $CONC connections)"
  local t0 t1; t0=$(now)
  /usr/bin/time -f "%U %S" -o "$d/time" timeout "$SOURCE_TIMEOUT" "${cmd[@]}" > "$d/out" 2> "$d/err"
  local rc=$?
  t1=$(now)
  $PY "$BENCH_DIR/lib/waitsink.py" --file "$d/sink.out" --target $((base + N)) --timeout 10 > /dev/null
  local got; got=$(( $(sink_count "$d/sink.out") - base ))
  stop_sink
  local cpu; cpu=$(awk 'END { print $1 + $2 }' "$d/time")
  awk -v g="$gen" -v r="$rep" -v n="$N" -v got="$got" -v t0="$t0" -v t1="$t1" -v cpu="$cpu" -v rc="$rc" -v l="$load" \
    'BEGIN { w = t1 - t0; printf "%s\t%d\t%d\t%d\t%.3f\t%.1f\t%.2f\t%.4f\t%d\t%s\n", g, r, n, got, w, got / w, cpu, (got ? 1000 * cpu / got : 0), rc, l }' \
    >> "$RESULTS_DIR/runs.tsv"
  tail -1 "$RESULTS_DIR/runs.tsv" | cut -f1,2,4-8 >&2
}

gens=($GENERATORS)
for rep in $(seq 1 "$RUNS"); do
  order=("${gens[@]}")
  if [ $((rep % 2)) = 0 ]; then order=(); for ((i=${#gens[@]}-1; i>=0; i--)); do order+=("${gens[i]}"); done; fi
  for gen in "${order[@]}"; do
    run_one "$gen" "$rep"
    sleep "$PAUSE"
  done
done

$PY "$BENCH/lib/blast_summary.py" "$RESULTS_DIR" | tee "$RESULTS_DIR/summary.md"
log "results: $RESULTS_DIR"
