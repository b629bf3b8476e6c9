#!/bin/sh
# peer-warmup.sh: called by an intake-only peer's start script (one that
# queues but does not deliver) after its daemon is launched.  Waits for the
# 220 banner, then sends PEER_WARMUP (50) messages of PEER_WARMUP_SIZE (4096)
# bytes over 5 sessions with smtp-source, without waiting for any delivery.
# This replaces the harness's own warm-up (WARMUP=0 for these peers), which
# would wait 60 s for the warm-up messages to reach the sink.  It runs before
# the harness's first mark, so its CPU and memory are outside the measured
# window.  Bounded: 30 s for the banner, 25 s for the messages (the harness waits 60 s in all for start).
set -u
: "${RELAY_ADDR:=127.0.0.1}" "${RELAY_PORT:=2525}" "${PEER_WARMUP:=50}" "${PEER_WARMUP_SIZE:=4096}"
[ "$PEER_WARMUP" -gt 0 ] || exit 0
case $RELAY_ADDR in 127.*|::1) ;; *) echo "warm-up: loopback only" >&2; exit 1 ;; esac
if [ -n "${BENCH_DIR:-}" ] && [ -f "$BENCH_DIR/lib/smtpcheck.py" ]; then
  /usr/bin/python3 "$BENCH_DIR/lib/smtpcheck.py" "$RELAY_ADDR" "$RELAY_PORT" 30 >/dev/null 2>&1 \
    || { echo "warm-up: no 220 banner on $RELAY_ADDR:$RELAY_PORT" >&2; exit 1; }
else
  sleep 2
fi
timeout 25 smtp-source -s 5 -m "$PEER_WARMUP" -l "$PEER_WARMUP_SIZE" \
  -f from@example.com -t to@example.net "$RELAY_ADDR:$RELAY_PORT" >/dev/null 2>&1 \
  || echo "warm-up: smtp-source failed (rc=$?)" >&2
exit 0
