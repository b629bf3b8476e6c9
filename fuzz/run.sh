#!/usr/bin/env bash
# Fuzz the SMTP protocol code with libFuzzer for a number of minutes (default 5). Not run by CI.
#   fuzz/run.sh 10
# Crashes land in fuzz/artifacts/; new interesting inputs in fuzz/work/ (both ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-5}
mkdir -p .build-fuzz fuzz/artifacts fuzz/work
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name FuzzSMTP \
    Sources/SMTPProtocol/*.swift fuzz/FuzzSMTP.swift -o .build-fuzz/fuzz-smtp
exec .build-fuzz/fuzz-smtp -max_total_time=$((minutes * 60)) -max_len=4096 \
    -artifact_prefix=fuzz/artifacts/ fuzz/work fuzz/corpus
