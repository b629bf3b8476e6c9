#!/usr/bin/env bash
# Build Tern and run it in the foreground. Without --config it uses the embedded default
# (the same as etc/tern.toml): SMTP on 127.0.0.1:2525, spool in ./var/spool.
# Extra arguments go to `tern serve`, e.g. scripts/run.sh --config /etc/tern/tern.toml (relative paths in a
# config file are from its own directory: etc/tern.toml given as a file keeps its spool in etc/var/spool)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build -c release
exec .build/release/tern serve "$@"
