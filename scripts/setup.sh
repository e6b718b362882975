#!/usr/bin/env bash
# Install what GoldenHour needs on a fresh Debian 12 machine, idempotently:
# Debian packages (open3d's libusb, Chromium for the browser tests, iproute2 and
# util-linux for the loopback-only test namespace, a C compiler for the SFU's
# fan-out loop) and a virtual environment with the project. `setup.sh run`
# skips the browser.
set -euo pipefail
cd "$(dirname "$0")/.."
purpose="${1:-test}"

packages=(libusb-1.0-0 iproute2 util-linux gcc libc6-dev)
[ "$purpose" = "test" ] && packages+=(chromium fonts-dejavu-core)
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
# server/sfu/_fanout.c needs Python's headers: Debian's python3.11 keeps them
# in python3.11-dev (a Python built from source, as pyenv's, has its own).
if ! "$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    case "$(command -v "$PY")" in /usr/bin/*) packages+=(python3.11-dev) ;; esac
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $PY"
    "$PY" -m venv .venv
fi
stamp=.venv/.goldenhour-installed
want="$(cat pyproject.toml setup.py server/sfu/_fanout.c | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing the project into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[test]"
    echo "$want" > "$stamp"
fi
