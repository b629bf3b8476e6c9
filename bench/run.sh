#!/bin/bash
# bench/run.sh -- Tern's receive benchmarks beside Postfix, in one command.
#
#   bench/run.sh                 # RUNS=3: setup if needed, build, intake + concurrency, summary
#   RUNS=1 bench/run.sh          # quicker, for debugging
#   SKIP_BUILD=1 bench/run.sh    # use the existing .build-bench/release/tern
#
# Uses the shared harness (../shared/bench, read-only; BENCH_HARNESS overrides)
# for every measurement: each scenario script runs in a private network
# namespace whose only interface is a fresh loopback; peers run under its
# procmon (CPU from an accounting cgroup, RSS/PSS from /proc).
#
# 1. intake: smtp-source -c -s CONC -m N -l SIZE into each peer of INTAKE_PEERS
#    (relay-bench.sh, fsync on everywhere), for each case of CASES (N:SIZE:CONC):
#      postfix         the harness's stock Postfix relay (receives and delivers to smtp-sink)
#      postfix-intake  the same Postfix, every message held in its queue (no delivery)
#      tern            bench/peers/tern: `tern serve` with [delivery] enabled = false (receive + spool)
#      tern-relay      bench/peers/tern-relay: `tern serve` delivering everything to smtp-sink;
#                      its log's delay= of every delivery (from DATA to 250 from the sink) gives
#                      the p50/p99 time to delivery (delays-<case>.txt in each repetition)
#      tern-relay-base the same as tern-relay with the binary at $TERN_BASE_BIN (an earlier
#                      commit's build), for before/after figures of a change in one run:
#                      INTAKE_PEERS="tern-relay tern-relay-base" SCENARIOS="sink relay"
#      exim4, opensmtpd-bl  the harness's Exim and OpenSMTPD relays (PEERS_MORE; slow: Exim
#                      takes minutes per 20,000 messages; OpenSMTPD stops at its bound)
#    plus the harness's sink scenario (smtp-source straight into smtp-sink) as
#    the load generator's ceiling for the same case.
# 2. concurrency: idle sessions (banner + EHLO, then idle) with the harness's
#    concurrency-bench.sh: Tern at CONC_TERN, Postfix at CONC_POSTFIX.
#
# Repetitions are interleaved (rep 1 of every peer, then rep 2, ...) so that a
# change in the machine's background load hits every peer alike.  Results go to
# bench/results/<date-time>/ (git-ignored): relay.tsv, concurrency.tsv,
# sink.tsv (one row per run), harness-summary.md (the harness's tables),
# summary.md (medians and Tern/Postfix ratios, also printed), env.txt, runs/.
#
# Environment (defaults):
#   RUNS=3  N=20000  SIZE=4096  CONC=100  SOURCE_TIMEOUT=300
#   CASES="$N:$SIZE:$CONC 2000:102400:20" (the issues' two end-to-end cases)
#   INTAKE_PEERS="postfix postfix-intake tern tern-relay $PEERS_MORE"   PEERS_MORE="exim4 opensmtpd-bl"
#   CONC_PEERS="postfix tern"
#   CONC_TERN="1000 15000"  CONC_POSTFIX="1000"  ESTABLISH_TIMEOUT=120
#   SCENARIOS="sink relay concurrency"   SKIP_BUILD=0   SKIP_SETUP=0
#   STEP_TIMEOUT=1800 (bound on each harness call, s)   RESULTS_DIR=bench/results/<date-time>
#   COOLDOWN=60 (s after each intake run, once its spool is deleted; see cooldown())
# Benchmarks only measure and report: nothing here passes or fails on a figure.
set -uo pipefail
BENCH=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
cd "$REPO"
: "${BENCH_HARNESS:=$REPO/../shared/bench}"
: "${RUNS:=3}" "${N:=20000}" "${SIZE:=4096}" "${CONC:=100}" "${SOURCE_TIMEOUT:=300}"
: "${CASES:=$N:$SIZE:$CONC 2000:102400:20}" "${PEERS_MORE=exim4 opensmtpd-bl}"
: "${INTAKE_PEERS:=postfix postfix-intake tern tern-relay $PEERS_MORE}" "${CONC_PEERS:=postfix tern}"
: "${CONC_TERN:=1000 15000}" "${CONC_POSTFIX:=1000}" "${ESTABLISH_TIMEOUT:=120}"
: "${SCENARIOS:=sink relay concurrency}" "${SKIP_BUILD:=0}" "${SKIP_SETUP:=0}"
: "${STEP_TIMEOUT:=1800}" "${COOLDOWN:=60}" "${BENCH_ROOT:=/tmp/mtabench}"
: "${RESULTS_DIR:=$BENCH/results/$(date +%Y%m%d-%H%M%S)}"
TERN_BIN="$REPO/.build-bench/release/tern"

die() { echo "bench/run.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }

[ "$(id -u)" = 0 ] || die "run as root (the harness needs unshare, mount, cgroups)"
[ -x "$BENCH_HARNESS/relay-bench.sh" ] || die "no harness at $BENCH_HARNESS (set BENCH_HARNESS)"
case $RUNS$COOLDOWN in ''|*[!0-9]*) die "RUNS and COOLDOWN must be numbers" ;; esac
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 20 ] || die "RUNS must be 1..20"
for c in $CONC_TERN $CONC_POSTFIX; do
  [ "$c" -le 19000 ] || die "concurrency level $c: above what the 20,000 fd limit per process allows"
done

# --- setup (once per machine) ------------------------------------------------
needs_setup() {
  { command -v smtp-source && command -v smtp-sink && command -v postfix; } >/dev/null || return 0
  case " $INTAKE_PEERS " in *" exim4 "*) getent passwd Debian-exim >/dev/null && [ -x /opt/bench-mta/exim4/usr/sbin/exim4 ] || return 0 ;; esac
  case " $INTAKE_PEERS " in *" opensmtpd"*) [ -f /opt/bench-mta/lib/listen_backlog.so ] || return 0 ;; esac
  case " $INTAKE_PEERS " in *" postfix-dkim"*) command -v opendkim >/dev/null || return 0 ;; esac
  return 1
}
if [ "$SKIP_SETUP" != 1 ] && needs_setup; then
  log "Postfix tools or the Exim/OpenSMTPD peers missing: running $BENCH_HARNESS/setup.sh"
  "$BENCH_HARNESS/setup.sh" || die "setup.sh failed"
fi

# --- build -------------------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
  # others may edit Sources/ meanwhile: "was modified during the build" is retried (3 attempts)
  for attempt in 1 2 3; do
    log "building tern (release, --scratch-path .build-bench), attempt $attempt"
    if timeout 3600 swift build -c release --scratch-path .build-bench --product tern \
         > "/tmp/tern-bench-build.$$.log" 2>&1; then
      rm -f "/tmp/tern-bench-build.$$.log"; break
    fi
    if [ $attempt -lt 3 ] && grep -q "modified during the build" "/tmp/tern-bench-build.$$.log"; then
      sleep 20; continue
    fi
    tail -30 "/tmp/tern-bench-build.$$.log" >&2
    die "swift build failed (log: /tmp/tern-bench-build.$$.log; SKIP_BUILD=1 uses the last binary)"
  done
fi
[ -x "$TERN_BIN" ] || die "no tern binary at $TERN_BIN (build: swift build -c release --scratch-path .build-bench)"

mkdir -p "$RESULTS_DIR/runs"
log "results: $RESULTS_DIR"
{
  echo "date: $(date -Is)"
  echo "host: $(uname -srm), $(nproc) cpus, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "postfix: $(postconf -d -h mail_version 2>/dev/null)"
  echo "tern: $(git rev-parse --short HEAD 2>/dev/null) + $(git status --porcelain -- Sources Package.swift 2>/dev/null | wc -l) changed/untracked paths under Sources/ at build time; binary built $(date -r "$TERN_BIN" -Is)"
  echo "intake cases (N:SIZE:CONC): $CASES  runs=$RUNS (interleaved)"
  echo "intake peers: $INTAKE_PEERS"
  echo "concurrency: tern at $CONC_TERN, postfix at $CONC_POSTFIX"
  echo "loadavg at start: $(cat /proc/loadavg)"
  echo "busiest processes at start (%cpu since start, command):"
  ps -eo pcpu=,args= --sort=-pcpu | head -5 | cut -c1-110 | sed 's/^/  /'
} > "$RESULTS_DIR/env.txt"

# step NAME CMD...: one bounded harness call; a failure is logged, the run goes on
step() {
  local name=$1; shift
  log "== $name"
  timeout -s TERM "$STEP_TIMEOUT" "$@" 2>&1 | grep -v 'note: hard fd limit' >&2
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { log "!! $name failed (rc=$rc)"; echo "$name: rc=$rc" >> "$RESULTS_DIR/failures.txt"; }
}
# cooldown PEER: delete the queue/spool the intake run left in the harness's
# scratch space now (the harness would delete it at the start of this peer's
# next run, just before it creates N new files), then wait COOLDOWN s.  The
# root filesystem here is ext4 without a journal: its inode allocator skips
# inodes deleted in the last 60 s (more while their table block is dirty) and
# pays a buffer lookup for each, which showed up as up to ~1/3 of Tern's CPU
# in a run that followed the deletion of 40,000 spool files (see README).
cooldown() {
  local d="$BENCH_ROOT/run/relay-$(basename "$1")"
  # Tern's delivery log: delay= of each status=sent line after the harness's 50 warm-up messages
  if [ -n "${2:-}" ] && [ -f "$d/peer.log" ] && grep -q 'status=sent' "$d/peer.log"; then
    grep -o 'delay=[0-9.]*, dsn=[^,]*, status=sent' "$d/peer.log" | tail -n +51 | cut -d= -f2 | cut -d, -f1 > "$2"
  fi
  case $d in /*/run/relay-*) rm -rf -- "$d" ;; esac
  [ "$COOLDOWN" -gt 0 ] && { log "cooldown ${COOLDOWN}s"; sleep "$COOLDOWN"; }
  return 0
}
peer_arg() {  # bench/peers/NAME if we have it, else a harness peer name
  if [ -d "$BENCH/peers/$1" ]; then echo "$BENCH/peers/$1"; else echo "$1"; fi
}

export SOURCE_TIMEOUT ESTABLISH_TIMEOUT BENCH_ROOT
for rep in $(seq 1 "$RUNS"); do
  R="$RESULTS_DIR/runs/rep$rep"; mkdir -p "$R"
  for sc in $SCENARIOS; do
    case $sc in
      sink)
        step "rep $rep: sink (load-generator ceiling)" \
          env RUNS=1 SINK_CASES="$CASES" RESULTS_DIR="$R" "$BENCH_HARNESS/sink-bench.sh" ;;
      relay)
        for c in $CASES; do
          for p in $INTAKE_PEERS; do
            # PEER_WARMUP: intake-only peers warm up in their start script (see bench/lib/peer-warmup.sh)
            step "rep $rep: intake $p $c" \
              env RUNS=1 CASES="$c" PEER_WARMUP=50 PEER_WARMUP_SIZE="$(echo "$c" | cut -d: -f2)" \
                RESULTS_DIR="$R" "$BENCH_HARNESS/relay-bench.sh" "$(peer_arg "$p")"
            cooldown "$p" "$R/delays-$(basename "$p")-$(echo "$c" | awk -F: '{printf "%sx%sBx%sc", $1, $2, $3}').txt"
          done
        done ;;
      concurrency)
        for p in $CONC_PEERS; do
          case $p in tern) levels=$CONC_TERN ;; postfix) levels=$CONC_POSTFIX ;; *) levels=$CONC_POSTFIX ;; esac
          step "rep $rep: concurrency $p at $levels" \
            env RUNS=1 CONC_LEVELS="$levels" PEER_WARMUP=0 \
              RESULTS_DIR="$R" "$BENCH_HARNESS/concurrency-bench.sh" "$(peer_arg "$p")"
        done ;;
      *) log "unknown scenario $sc" ;;
    esac
  done
done
echo "loadavg at end: $(cat /proc/loadavg)" >> "$RESULTS_DIR/env.txt"

# merge the per-repetition TSVs (rep column = repetition number) and summarize
/usr/bin/python3 "$BENCH/lib/merge.py" "$RESULTS_DIR" || die "merge failed"
/usr/bin/python3 "$BENCH_HARNESS/lib/summarize.py" "$RESULTS_DIR" > "$RESULTS_DIR/harness-summary.md" 2>/dev/null
/usr/bin/python3 "$BENCH/lib/summary.py" "$RESULTS_DIR" | tee "$RESULTS_DIR/summary.md"
[ ! -s "$RESULTS_DIR/failures.txt" ] || { log "some steps failed:"; cat "$RESULTS_DIR/failures.txt" >&2; }
log "results: $RESULTS_DIR (summary.md, harness-summary.md, *.tsv, runs/)"
