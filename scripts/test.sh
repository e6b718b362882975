#!/usr/bin/env bash
# Run the test suite. As root (CI), inside a fresh network namespace where only
# loopback exists, so WebRTC peers (aiortc and Chromium) can only pair on
# 127.0.0.1 and no test can reach another address.
#
# The browser tests run in a pytest process of their own: sync Playwright keeps
# an event loop running in the main thread, which pytest-asyncio's tests cannot
# share (machine-facts: "Pick one style per pytest process").
#
#   scripts/test.sh [PYTEST ARGS]      both parts, e.g. scripts/test.sh -x -q
#   scripts/test.sh tests/test_sfu.py  just what you name
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts

isolated() {
    if [ "$(id -u)" -eq 0 ] && unshare -n true 2>/dev/null; then
        unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$@"
    else
        echo "test: not root (or no user namespaces): host network, ICE on 127.0.0.1 only" >&2
        "$@"
    fi
}

for arg in "$@"; do
    case "$arg" in
        tests*|*.py|*::*) exec_paths=1 ;;
    esac
done
if [ -n "${exec_paths:-}" ]; then
    isolated .venv/bin/python -m pytest "$@"
    exit $?
fi

status=0
isolated .venv/bin/python -m pytest tests --ignore=tests/browser "$@" || status=$?
isolated .venv/bin/python -m pytest tests/browser "$@" || status=$?
exit $status
