#!/usr/bin/env bash
# Tern's whole test suite: dependencies, release build, unit tests (swift test), then the
# integration tests (pytest against .build/release/tern) inside a private network namespace.
# Exits non-zero if any phase fails. Usage: scripts/test.sh [extra pytest args]
set -uo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing dependencies"
bash scripts/install-deps.sh || exit 1

step "swift build -c release"
swift build -c release || { echo "test.sh: release build failed" >&2; exit 1; }

failed=()

step "man pages (etc/man) match the command definitions"
bash scripts/man.sh --check || failed+=("man pages out of date (run scripts/man.sh)")

step "swift test (unit tests)"
# Bounded (and killed as a process group) so that a hung test cannot eat CI's time.
timeout --kill-after=30 1200 swift test
rc=$?
if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 124 ] && echo "test.sh: swift test timed out after 20 minutes" >&2
    failed+=("swift test (exit $rc)")
fi

step "integration tests (pytest)"
export TERN_BIN="$PWD/.build/release/tern"
export PYTHONDONTWRITEBYTECODE=1
PYTEST=(/usr/bin/python3 -m pytest -v -p no:cacheprovider Tests/integration "$@")
# Bounded so that a hung server cannot eat CI's time.
TIMEOUT=(timeout --kill-after=30 900)
inner='ip link set lo up && exec "$@"'
if [ "$(id -u)" -eq 0 ] && unshare --net --mount true 2>/dev/null; then
    echo "test.sh: running in a private network namespace (unshare --net --mount: loopback only, private mounts)"
    "${TIMEOUT[@]}" unshare --net --mount -- bash -c "$inner" bash "${PYTEST[@]}"
    rc=$?
elif unshare --user --map-root-user --net true 2>/dev/null; then
    echo "test.sh: running in a private network namespace (unshare --user --map-root-user --net)"
    "${TIMEOUT[@]}" unshare --user --map-root-user --net -- bash -c "$inner" bash "${PYTEST[@]}"
    rc=$?
else
    echo "test.sh: NOTE: unshare --net is not permitted here; running the integration tests on the" \
         "host's loopback instead"
    "${TIMEOUT[@]}" "${PYTEST[@]}"
    rc=$?
fi
if [ "$rc" -ne 0 ]; then
    failed+=("integration tests (exit $rc)")
fi

if [ ${#failed[@]} -ne 0 ]; then
    printf '\ntest.sh: FAILED: %s\n' "$(IFS=,; echo "${failed[*]}")" >&2
    exit 1
fi
printf '\ntest.sh: all phases passed\n'
