#!/usr/bin/env bash
# Regenerates the man pages in etc/man/ from the command definitions (swift-argument-parser's
# generate-manual plugin, vended by the swift-argument-parser dependency): tern.1 and one page per
# subcommand (tern-serve.1, tern-queue-list.1, ...). Run it after changing a command's options or help
# text, and commit the result. `scripts/man.sh --check` regenerates into a temporary directory and
# exits 1 when etc/man/ differs (for CI). Builds the package in release mode first (as the plugin does).
set -euo pipefail
cd "$(dirname "$0")/.."

# The date in the pages' footer: the last change to the commands, so that regenerating unchanged
# commands gives the same files.
date=$(git log -1 --format=%cs -- Sources/tern 2>/dev/null || true)
[ -n "$date" ] || date=$(date -u +%F)

swift package plugin generate-manual --multi-page --date "$date" >&2
generated=.build/plugins/GenerateManual/outputs/tern
[ -f "$generated/tern.1" ] || { echo "man.sh: no pages in $generated" >&2; exit 1; }

if [ "${1:-}" = "--check" ]; then
    if diff -r "$generated" etc/man >/dev/null; then
        echo "man.sh: etc/man is up to date"
    else
        diff -r "$generated" etc/man >&2 || true
        echo "man.sh: etc/man is out of date: run scripts/man.sh and commit the result" >&2
        exit 1
    fi
    exit 0
fi
rm -rf etc/man
mkdir -p etc/man
cp "$generated"/*.1 etc/man/
echo "man.sh: $(ls etc/man | wc -l) pages in etc/man" >&2
