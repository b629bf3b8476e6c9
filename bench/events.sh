#!/bin/bash
# bench/events.sh -- the cost of delivery events over a webhook (issue 19), in one command.
#
#   bench/events.sh                # RUNS=3: N=20000 messages of 4 KiB over CONC=100 sessions
#   RUNS=1 N=5000 bench/events.sh  # quicker
#
# bench/run.sh's relay scenario (smtp-source -> Tern -> smtp-sink, fsync on) for
#   tern-relay          no events
#   tern-relay-webhook  every event (reception and delivery per recipient) POSTed to a receiver
#                       (bench/lib/hook_receiver.py) through the durable outbox, batches of 100
#   postfix             the harness's Postfix relay, for scale
# plus the load generator's ceiling (smtp-source straight into smtp-sink). The receiver's CPU is
# not counted (it is moved out of the peer's cgroup). summary.md has the medians; the events' cost
# is tern-relay-webhook's CPU per message over tern-relay's. Run it alone on the machine.
set -euo pipefail
BENCH=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
: "${RUNS:=3}" "${N:=20000}" "${CONC:=100}" "${COOLDOWN:=15}"
: "${RESULTS_DIR:=$BENCH/results/events-$(date +%Y%m%d-%H%M%S)}"
: "${EVENT_PEERS:=tern-relay tern-relay-webhook postfix}"
export RUNS COOLDOWN RESULTS_DIR
INTAKE_PEERS="$EVENT_PEERS" SCENARIOS="sink relay" CASES="$N:4096:$CONC" exec "$BENCH/run.sh"
