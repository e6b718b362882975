#!/usr/bin/env bash
# Run the test suite. As root (CI), inside a fresh network namespace where only
# loopback exists, so WebRTC peers (aiortc and Chromium) can only pair on
# 127.0.0.1 and no test can reach another address.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
if [ "$(id -u)" -eq 0 ] && unshare -n true 2>/dev/null; then
    exec unshare -n sh -c 'ip link set lo up && exec .venv/bin/python -m pytest "$@"' pytest "$@"
fi
echo "test: not root (or no user namespaces): running on the host network, loopback only" >&2
exec .venv/bin/python -m pytest "$@"
