#!/bin/bash
# bench/scheduler-shaping.sh -- the scheduler with traffic shaping at scale (issue 16): 1,000,000 queued
# messages over 1,000 destinations, each its own [[shaping]] rule (1,000 rules), 100 of them blocked
# (50 suspended, 50 throttled), beside the same queue with no shaping (max_connections_per_destination
# alone, today's scheduler). Prints the index's bytes per message and ns per pick: a connection closes
# and dispatch fills its slot from the best open gate (release+dispatch), and next(on:) on an open
# connection. Blocked destinations' backlogs must never be scanned: a pick stays logarithmic.
#
#   bench/scheduler-shaping.sh                      # release build of the tests, RUNS=3, 1,000,000
#   COUNTS="20000 1000000" RUNS=1 bench/scheduler-shaping.sh
#
# Runs Tests/MailQueueTests/ShapingSchedulerTests.swift's pickCostWithBlockedDestinations (the unit
# suite runs it at 20,000). Reports only. Environment (defaults): RUNS=3 COUNTS=1000000
# SCRATCH=.build-bench-tests. Output: the test's lines, then the median of each figure per case.
set -euo pipefail
BENCH=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
cd "$BENCH/.."
: "${RUNS:=3}" "${COUNTS:=1000000}" "${SCRATCH:=.build-bench-tests}"
raw=$(mktemp)
# -enable-testing: the test imports MailQueue with @testable, which a plain release build refuses.
swift build -c release --build-tests --scratch-path "$SCRATCH" -Xswiftc -enable-testing >&2
for rep in $(seq 1 "$RUNS"); do
    TERN_SHAPING_SCALE="$COUNTS" swift test -c release --skip-build --scratch-path "$SCRATCH" \
        -Xswiftc -enable-testing --filter pickCostWithBlockedDestinations 2>&1 \
        | grep '^shaping scheduler at' | tee -a "$raw" >&2
done
python3 - "$raw" <<'PY'
import re, statistics, sys
pat = re.compile(r"at (\d+) messages, ([^:]+): index (\d+) bytes/message; release\+dispatch (\d+) ns/pick, next\(on:\) (\d+) ns/pick")
rows = {}
for line in open(sys.argv[1]):
    m = pat.search(line)
    if m: rows.setdefault((int(m[1]), m[2]), []).append([int(m[3]), int(m[4]), int(m[5])])
print("| messages | case | index bytes/message | release+dispatch ns/pick | next(on:) ns/pick |")
print("|---|---|---|---|---|")
for (n, case), runs in sorted(rows.items()):
    med = [int(statistics.median(col)) for col in zip(*runs)]
    print(f"| {n:,} | {case} | {med[0]} | {med[1]:,} | {med[2]:,} |")
PY
rm -f "$raw"
