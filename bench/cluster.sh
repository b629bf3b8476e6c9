#!/bin/bash
# bench/cluster.sh -- what sharing the [[shaping]] rules' limits through Redis costs a node (issue 20),
# in one command.
#
#   bench/cluster.sh                # RUNS=3: N=20000 messages of 4 KiB over CONC=100 sessions
#
# bench/run.sh's relay scenario (smtp-source -> Tern -> smtp-sink, fsync on) for
#   tern-relay-limited  one [[shaping]] rule for the mail (20,000/s, 200 connections: not reached)
#   tern-relay-cluster  the same with [cluster] on a Redis of its own: each connection takes a lease
#                       and each batch of messages permits from Redis (Redis's CPU is not counted in
#                       the peer's; its stop prints Redis's CPU and the commands it served)
# plus the load generator's ceiling. Then redis-benchmark against a fresh Redis: the operations a
# second one Redis serves (plain commands, and a Lua script like the permit one), for working out
# where Redis becomes the bottleneck of a larger cluster (bench/README.md). Run it alone.
set -euo pipefail
BENCH=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
: "${RUNS:=3}" "${N:=20000}" "${CONC:=100}" "${COOLDOWN:=15}"
: "${RESULTS_DIR:=$BENCH/results/cluster-$(date +%Y%m%d-%H%M%S)}"
export RUNS COOLDOWN RESULTS_DIR
INTAKE_PEERS="tern-relay-limited tern-relay-cluster" SCENARIOS="sink relay" CASES="$N:4096:$CONC" "$BENCH/run.sh"

# One Redis, alone: its ops/s for the commands a node sends.
W=$(mktemp -d /tmp/tern-redis-bench.XXXXXX)
redis-server --port 0 --unixsocket "$W/redis.sock" --save "" --appendonly no --daemonize no < /dev/null > /dev/null 2>&1 &
RP=$!
trap 'kill $RP 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 50); do redis-cli -s "$W/redis.sock" ping > /dev/null 2>&1 && break; sleep 0.1; done
{
  echo "## redis-benchmark (one Redis, unix socket, 50 clients, 200,000 requests each)"
  echo '```'
  redis-benchmark -s "$W/redis.sock" -c 50 -n 200000 -q -t set,get,incr,zadd 2>&1 | tr '\r' '\n' | grep -v '^$' | grep 'requests per second'
  echo -n "EVAL (a GCRA-sized script: TIME, GET, SET PX): "
  redis-benchmark -s "$W/redis.sock" -c 50 -n 200000 -q EVAL \
    "local t = redis.call('TIME') local v = tonumber(redis.call('GET', KEYS[1]) or '0') redis.call('SET', KEYS[1], v + 1, 'PX', 1000) return v" \
    1 bench:key 2>&1 | tr '\r' '\n' | grep 'requests per second' | tail -1
  echo '```'
} | tee "$RESULTS_DIR/redis-benchmark.md"
grep -rh "tern-relay-cluster: redis" "$RESULTS_DIR"/runs/*/raw/*/peer.log.tail 2>/dev/null | tee "$RESULTS_DIR/redis-per-run.txt" || true
