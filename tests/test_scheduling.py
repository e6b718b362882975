"""`goldenhour serve --realtime-priority N`: the event loop's thread alone
under SCHED_FIFO (by default at SERVE_REALTIME_PRIORITY), everything it
starts at normal priority, and a clear word when the system refuses
(server/scheduling.py). CI runs as root, which may use SCHED_FIFO."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.scheduling import SERVE_REALTIME_PRIORITY

REPO = Path(__file__).resolve().parent.parent
SCHED_OTHER, SCHED_FIFO = 0, 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _serving(*extra: str, prefix: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen, str]]:
    """A `goldenhour serve` process on loopback, once /healthz answers."""
    port = _free_port()
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "server.cli", "serve", "--no-tls", "--no-demo-crew",
         "--loopback-only", "--port", str(port), *extra],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not answer /healthz within 60 s"
            time.sleep(0.1)
        yield process, url
    finally:
        process.terminate()
        process.wait(20)


def _threads(pid: int) -> dict[int, tuple[int, int]]:
    """Each thread of `pid`: (scheduling policy, real-time priority), from
    /proc (proc(5): fields 41 and 40 of stat)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        # Fields counted from 3 (state) after the command's closing parenthesis.
        found[int(task.name)] = (int(fields[41 - 3]), int(fields[40 - 3]))
    return found


def test_realtime_priority_puts_the_event_loop_alone_under_sched_fifo():
    with _serving("--realtime-priority", "3") as (process, url):
        health = httpx.get(f"{url}/healthz").json()
        # A worker thread the loop starts after it went real-time (/api/stats
        # computes its delays in one).
        assert httpx.get(f"{url}/api/stats").status_code == 200
        threads = _threads(process.pid)
    assert health["scheduling"] == {"policy": "fifo", "priority": 3, "refused": None}
    # uvicorn runs the event loop on the main thread, whose id is the pid.
    assert threads.pop(process.pid) == (SCHED_FIFO, 3)
    assert len(threads) >= 2
    assert set(threads.values()) == {(SCHED_OTHER, 0)}


def test_a_refused_realtime_priority_is_reported_and_the_server_serves_at_normal_priority():
    # Without CAP_SYS_NICE (dropped from the bounding set, so even root lacks
    # it) and with RLIMIT_RTPRIO 0, the kernel refuses SCHED_FIFO.
    no_sys_nice = ("setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice")
    with _serving("--realtime-priority", "3", prefix=no_sys_nice) as (process, url):
        health = httpx.get(f"{url}/healthz").json()
        threads = _threads(process.pid)
    assert health["status"] == "ok"
    assert health["scheduling"]["policy"] == "normal"
    assert "CAP_SYS_NICE" in health["scheduling"]["refused"]
    assert set(threads.values()) == {(SCHED_OTHER, 0)}


def test_goldenhour_serve_asks_for_sched_fifo_unless_told_0():
    with _serving() as (process, url):
        by_default = httpx.get(f"{url}/healthz").json()["scheduling"]
        loop_thread = _threads(process.pid)[process.pid]
    with _serving("--realtime-priority", "0") as (process, url):
        told_0 = httpx.get(f"{url}/healthz").json()["scheduling"]
        normal_threads = _threads(process.pid)
    assert by_default == {"policy": "fifo", "priority": SERVE_REALTIME_PRIORITY, "refused": None}
    assert loop_thread == (SCHED_FIFO, SERVE_REALTIME_PRIORITY)
    assert told_0 == {"policy": "normal", "priority": 0, "refused": None}
    assert set(normal_threads.values()) == {(SCHED_OTHER, 0)}


def test_a_refused_default_priority_is_a_note_and_an_asked_for_one_a_warning():
    no_sys_nice = ("setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice")
    levels = {}
    for extra in ((), ("--realtime-priority", "3")):
        with _serving(*extra, prefix=no_sys_nice) as (process, url):
            refused = httpx.get(f"{url}/healthz").json()["scheduling"]["refused"]
        assert "CAP_SYS_NICE" in refused
        lines = [json.loads(line) for line in process.stderr.read().splitlines()
                 if line.startswith("{")]
        [levels[extra]] = [line["level"] for line in lines
                           if line["msg"] == "the event loop runs at normal priority"]
    assert levels == {(): "info", ("--realtime-priority", "3"): "warning"}


def test_a_realtime_priority_out_of_range_is_named_and_nothing_starts():
    done = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--realtime-priority", "120"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "realtime_priority must be 0 (off) or 1-99, not 120" in done.stderr


def test_a_realtime_priority_that_is_not_a_number_is_named():
    from server.config import Config
    with pytest.raises(ValueError, match="GOLDENHOUR_REALTIME_PRIORITY must be a whole number"):
        Config.from_env({"GOLDENHOUR_REALTIME_PRIORITY": "high"})
    assert Config.from_env({"GOLDENHOUR_REALTIME_PRIORITY": "7"}).realtime_priority == 7
