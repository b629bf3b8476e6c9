#!/bin/bash
# bench/dkim.sh -- DKIM signing beside Postfix + OpenDKIM, in one command (issue 17).
#
#   bench/dkim.sh                # RUNS=3: N=5000 messages of 4 KiB over CONC=20 sessions
#   RUNS=1 N=2000 bench/dkim.sh  # quicker
#
# 1. bench/dkim/sign-cost.c, built here with cc and OpenSSL 3: the bare CPU cost of one signature
#    (RSA-2048 and Ed25519, the OpenSSL calls a signer needs at the least) -> sign-cost.txt
# 2. bench/run.sh, relay scenario (smtp-source -> peer -> smtp-sink, fsync on) for the peers
#      tern-relay               no signing (the reference for signing's extra CPU)
#      tern-relay-dkim          RSA-2048             postfix-dkim           Postfix + OpenDKIM, RSA-2048
#      tern-relay-dkim-ed25519  Ed25519              postfix-dkim-ed25519   Postfix + OpenDKIM, Ed25519
#      tern-relay-dkim-both     RSA-2048 + Ed25519
#    plus the load generator's ceiling (smtp-source straight into smtp-sink).
# summary.md (printed) has the medians, the Tern / Postfix+OpenDKIM ratios and Tern's extra CPU per
# message against the bare signature. Run it alone on the machine. Nothing passes or fails here.
set -euo pipefail
BENCH=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
: "${RUNS:=3}" "${N:=5000}" "${CONC:=20}" "${COOLDOWN:=15}"
: "${RESULTS_DIR:=$BENCH/results/dkim-$(date +%Y%m%d-%H%M%S)}"
: "${DKIM_PEERS:=tern-relay tern-relay-dkim tern-relay-dkim-ed25519 tern-relay-dkim-both postfix-dkim postfix-dkim-ed25519}"
mkdir -p "$RESULTS_DIR"
command -v cc >/dev/null || { echo "bench/dkim.sh: no C compiler (apt-get install gcc libssl-dev)" >&2; exit 1; }
cc -O2 -Wall -o "$RESULTS_DIR/sign-cost" "$BENCH/dkim/sign-cost.c" -lcrypto
echo "bare signature cost (bench/dkim/sign-cost.c):"
"$RESULTS_DIR/sign-cost" 2000 5 | tee "$RESULTS_DIR/sign-cost.txt"
export RUNS COOLDOWN RESULTS_DIR
INTAKE_PEERS="$DKIM_PEERS" SCENARIOS="sink relay" CASES="$N:4096:$CONC" exec "$BENCH/run.sh"
