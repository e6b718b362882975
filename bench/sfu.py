"""SFU benchmark: GoldenHour's encoded pass-through against aiortc's decode/re-encode relay,
a C SFU (Janus's videoroom, where Debian's `janus` is installed) and a direct call, with one
720p crew camera and N remote experts.

    python bench/sfu.py                      # 30 s per point, N = 1, 4, 16 (the lead's run)
    python bench/sfu.py --quick              # a few seconds, N = 1, 4 (development)
    python bench/sfu.py --seconds 5 --subscribers 1,4,16 --systems goldenhour,direct

Every system runs as its own process so that its CPU is its own: the GoldenHour
server (`python -m server.cli serve`), the baselines (bench/relay_server.py; `janus`
as installed, configured by bench/janus_baseline.py, at normal priority), the
publisher and the subscribers (bench/sfu_peers.py). The publisher is the
synthetic headset camera (frame counter painted into every frame). A headset
encodes in hardware, so by default it sends a clip of that camera encoded once
ahead of time, with aiortc's VP8 settings at the pinned bitrate, and answers
each keyframe request from the clip's nearest keyframe (bench/vp8_clip.py);
`--camera live` encodes every frame in software instead, as earlier runs did.
It logs, per frame sent, its RTP timestamp, capture time (handed to the
sender), the clip frame it showed and when its last packet left. Of the N subscribers one decodes (in a process of its own)
and reads the painted code back; the other N-1 are RTP-only: they decode
nothing and record, per RTP timestamp, when the frame's packets arrived and
when it was complete. Joined on the RTP timestamp with the publisher's log,
that gives a network-level glass-to-glass latency and lost frames per
subscriber at about 2.5% of a core each, where decoding 720p VP8 costs 20-30%:
so N=16 fits on 2 cores next to the encoder and the server.

Prints a table and the issue's goals, and writes bench/results/sfu-<time>.json
and bench/results/sfu-latest.json. A benchmark, not a test: it never fails on
a missed goal, only on a broken run (exit status 1 when a point failed).

What can bias the figures (points where it does are flagged in the output):
- The load generator still shares the machine: the decoding subscriber takes
  about 0.3 core, the RTP-only ones 0.025 each, the pre-encoded publisher a
  few percent (with `--camera live` its VP8 encoder takes about 0.9 core at
  720p30: one libvpx thread, about 25 ms a frame; at N=16 the machine is then
  about 85% busy). A frame's work arrives in one burst on every process at
  once, so queueing for a core adds to the latencies (the direct call,
  measured next to each N, has less of it).
- Subscribers time a packet by the kernel's receive timestamp, asked for
  when their process reads its datagram (by the clear RTP header:
  bench/receiver_seams.record_datagram_arrivals); on loopback it is taken
  inside the server's send. Until 2026-11-26 13:20 they timed it at the read
  itself, and until 11:40 when aiortc handed it over, after its Python
  (about 90 us a packet, one frame's packets for 7-8 subscribers per
  process); that queue is the load generator's, and the report prints it
  separately.
- Network-level g2g stops when the frame is complete at the subscriber; a
  browser then waits in its jitter buffer and decodes. The decoding
  subscriber's figure includes aiortc's (one frame interval) and decoding.
- Subscribers send no REMB (bench/receiver_seams.py says why); the encoders
  are pinned to one bitrate anyway.
- "+direct" compares percentiles of runs made one after another.
- Every GoldenHour server runs as `goldenhour serve` does by default: its
  event loop under SCHED_FIFO at priority 10 (server/scheduling.py) where
  the system allows it (root, CAP_SYS_NICE), so that the subscribers it
  wakes cannot take its core; the report says, for each system, what the
  server got. goldenhour-normal-priority is the same server with
  `--realtime-priority 0`, at the load generator's priority; until
  2026-11-26 20:22 the default was normal priority and the real-time server
  was the system goldenhour-realtime. Every other process runs at normal
  priority.
- Forwarding delay is what the SFU measures itself, from a datagram's arrival
  at the server's socket (its kernel receive timestamp) to each copy handed
  to the kernel ('fwd', the goal's figure) and to its last copy ('last
  copy'). Since 2026-11-26 15:28; before, from the packet's tap after
  aiortc's receive path (15:18-15:28: its arrival in Python) to its last
  copy, without the time in the socket buffer (or in aiortc's receive path).
  goldenhour-after-receiver still starts at its tap.
- The baseline's re-encoders run at the same pinned bitrate; with aiortc's
  default buffered MediaRelay overload shows as growing latency, then as lost
  frames (`--relay-unbuffered` drops instead). Its RTP timestamps are its
  encoders', so it is measured on the decoding subscriber's pixels.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import janus_baseline
import psutil
from vp8_clip import load_or_encode

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
REPLY_PREFIX = "@@"

SYSTEMS = ("direct", "goldenhour", "goldenhour-normal-priority", "goldenhour-python",
           "goldenhour-after-receiver", "janus", "relay")
#: What a run measures unless told (--systems).
DEFAULT_SYSTEMS = ("direct", "goldenhour", "goldenhour-normal-priority", "goldenhour-python",
                   "janus", "relay")
#: The servers measured (the direct call is the reference for each N).
SERVER_SYSTEMS = ("goldenhour", "goldenhour-normal-priority", "goldenhour-python",
                  "goldenhour-after-receiver", "janus", "relay")
SYSTEM_LABELS = {"goldenhour": "GoldenHour SFU",
                 "goldenhour-normal-priority": "GoldenHour, normal priority",
                 "goldenhour-python": "GoldenHour, Python fan-out",
                 "goldenhour-after-receiver": "GoldenHour, forwarding after aiortc's receiver",
                 "janus": "Janus videoroom (C)",
                 "relay": "aiortc MediaRelay", "direct": "direct call"}
#: Extra arguments of each server: the same GoldenHour server with its event
#: loop at normal priority (the load generator's), next to the one as
#: `goldenhour serve` runs by default (SCHED_FIFO where allowed;
#: server/scheduling.py).
SERVER_ARGS = {"goldenhour-normal-priority": ["--realtime-priority", "0"]}
#: Extra environment of each server: the same GoldenHour server with its C
#: fan-out loop turned off is the baseline of that loop, in the same run.
SERVER_ENV = {"goldenhour-python": {"GOLDENHOUR_FANOUT": "python"},
              "goldenhour-after-receiver": {"GOLDENHOUR_FORWARD": "after-receiver"}}

#: The issue's goals for the SFU.
GOALS = {
    "marginal_cpu_pct_per_subscriber": 0.5,
    "added_over_direct_p50_ms": 6.0,
    "added_over_direct_p95_ms": 10.0,
    "forwarding_p99_ms": 5.0,
    "late_joiner_first_frame_s": 1.0,
    "frames_lost": 0,
}

#: Above this share of all cores busy, the machine (not the system under test)
#: limits what we measure.
SATURATED_BUSY_SHARE = 0.90
#: A process using this much of one core is bound by its core (or its GIL).
PROCESS_BOUND_CORES = 0.90
#: The publisher's capture-to-send p50 this much above the direct call's
#: means contention slowed the encoder, and '+direct' carries it.
PUBLISHER_SLOWER_MS = 3.0


# --- child processes ------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the benchmark dies (Linux), so that no
    server outlives a killed run."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


async def http_get_json(url: str, timeout_s: float = 5.0) -> object:
    def call() -> object:
        with _NO_PROXY.open(url, timeout=timeout_s) as response:
            return json.loads(response.read())
    return await asyncio.to_thread(call)


class Child:
    """A process this benchmark started; `stop()` always ends it.

    With `control=True` it is a bench/sfu_peers.py worker: we send one JSON
    command per line and read one `@@{json}` reply per command.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, control: bool,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.extra_env = env or {}
        self.log_path = log_path
        self.control = control
        self.proc: asyncio.subprocess.Process | None = None
        self.ps: psutil.Process | None = None
        self._replies: asyncio.Queue[dict] = asyncio.Queue()
        self._reader: asyncio.Task | None = None
        self._log = None

    async def start(self, ready_timeout_s: float = 30.0) -> None:
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO), str(BENCH_DIR)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
            **self.extra_env)
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=REPO, env=env, limit=1 << 26,
            stdin=asyncio.subprocess.PIPE if self.control else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if self.control else self._log,
            stderr=self._log, preexec_fn=_die_with_parent)
        self.ps = psutil.Process(self.proc.pid)
        if self.control:
            self._reader = asyncio.create_task(self._read())
            await self._reply(ready_timeout_s)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await self._replies.put({"error": f"{self.name} exited "
                                                  f"(see {self.log_path})", "eof": True})
                return
            text = line.decode(errors="replace")
            if text.startswith(REPLY_PREFIX):
                await self._replies.put(json.loads(text[len(REPLY_PREFIX):]))
            elif self._log is not None:
                self._log.write(line)

    async def _reply(self, timeout_s: float) -> dict:
        try:
            reply = await asyncio.wait_for(self._replies.get(), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"{self.name}: no reply within {timeout_s:.0f} s") from None
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    async def call(self, cmd: dict, timeout_s: float = 60.0) -> dict:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        return await self._reply(timeout_s)

    def cpu_s(self) -> float:
        assert self.ps is not None
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss_mb(self) -> float:
        assert self.ps is not None
        return self.ps.memory_info().rss / 2**20

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.returncode is None and self.control and proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.write(b'{"op": "stop"}\n')
                    await proc.stdin.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 8.0)
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        finally:
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
            if self._log is not None:
                self._log.close()
                self._log = None


# --- statistics -----------------------------------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; `inf` entries (frames never delivered) rank last."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return None if sxx == 0 else sum((x - mx) * (y - my) for x, y in points) / sxx




@dataclass
class CpuSnapshot:
    wall_s: float
    system_busy_s: float
    per_child_s: dict[str, float] = field(default_factory=dict)
    orchestrator_s: float = 0.0

    @classmethod
    def take(cls, children: list[Child]) -> CpuSnapshot:
        times = psutil.cpu_times()
        # guest time is already inside user time on Linux: name what counts.
        busy = sum(getattr(times, name, 0.0) for name in
                   ("user", "nice", "system", "irq", "softirq", "steal"))
        own = psutil.Process().cpu_times()
        return cls(time.monotonic(), busy,
                   {c.name: c.cpu_s() for c in children if c.alive},
                   own.user + own.system)


# --- one point: a system with N subscribers ---------------------------------------

@dataclass
class Settings:
    seconds: float
    warmup_s: float
    drain_s: float
    bitrate_bps: int
    width: int
    height: int
    fps: int
    camera: str
    subscriber_procs: int
    relay_unbuffered: bool
    server_nice: int
    max_server_rss_mb: float
    late_join_timeout_s: float


async def run_point(system: str, n: int, settings: Settings, log_dir: Path) -> dict:
    """Run one system with n subscribers; returns the raw figures (see `summarise`).

    Subscriber sub-00 decodes, in a process of its own; the other n-1 are
    RTP-only, spread over up to --subscriber-procs processes. For the direct
    call n is the N it is the reference for: it always has one subscriber,
    the decoding one (a second would need a second encoder at the publisher).
    """
    point: dict = {"system": system, "n": n, "warnings": []}
    setup_started = time.monotonic()
    children: list[Child] = []
    python = sys.executable
    tag = f"{system}-n{n}"

    def child(name: str, argv: list[str], control: bool, env: dict[str, str] | None = None) -> Child:
        made = Child(name, argv, log_dir / f"{tag}-{name}.log", control, env)
        children.append(made)
        return made

    try:
        server: Child | None = None
        if system != "direct":
            port = free_port()
            if system.startswith("goldenhour"):
                argv = [python, "-m", "server.cli", "--log-level", "WARNING", "serve",
                        "--no-tls", "--no-demo-crew", "--loopback-only", "--port", str(port),
                        *SERVER_ARGS.get(system, [])]
            elif system == "janus":
                janus_baseline.prepare_network()
                config = janus_baseline.write_config(log_dir / f"{tag}-janus-config", port)
                argv = ["janus", "--configs-folder", str(config.parent), "--config", str(config),
                        "--disable-colors"]
            else:
                argv = [python, str(BENCH_DIR / "relay_server.py"), "--port", str(port),
                        "--bitrate", str(settings.bitrate_bps)]
                if settings.relay_unbuffered:
                    argv.append("--unbuffered")
            if settings.server_nice:
                argv = ["nice", "-n", str(settings.server_nice)] + argv
            server = child("server", argv, control=False, env=SERVER_ENV.get(system))
            http_url = f"http://127.0.0.1:{port}"
            media_url = (f"ws://127.0.0.1:{port}/ws" if system.startswith("goldenhour") else
                         f"{http_url}/janus" if system == "janus" else http_url)
            health_url = f"{http_url}/janus/info" if system == "janus" else f"{http_url}/healthz"
        # The peers speak GoldenHour's protocol to either GoldenHour server.
        peer_system = "goldenhour" if system.startswith("goldenhour") else system

        peers = [python, str(BENCH_DIR / "sfu_peers.py")]
        publisher = child("publisher", peers + [
            "publisher", "--bitrate", str(settings.bitrate_bps), "--width", str(settings.width),
            "--height", str(settings.height), "--fps", str(settings.fps),
            "--camera", settings.camera], control=True)
        decoder = child("decoder", peers + ["subscribers"], control=True)
        rtp_only = 0 if system == "direct" else n - 1
        procs = min(settings.subscriber_procs, rtp_only)
        workers = [child(f"subscribers{k}", peers + ["subscribers"], control=True)
                   for k in range(procs)]

        async def start_server() -> None:
            if server is not None:
                await server.start()
                await _wait_healthy(server, health_url)
            if system.startswith("goldenhour"):
                scheduling = (await http_get_json(f"{http_url}/healthz"))["scheduling"]
                point["server_scheduling"] = scheduling
                if scheduling["refused"] and system not in SERVER_ARGS:
                    point["warnings"].append(
                        "the server's SCHED_FIFO was refused (not root?): this is the server at "
                        "normal priority, not as `goldenhour serve` runs where it may")

        # Python, aiortc and PyAV take seconds to import on a busy machine:
        # start every process at once; media starts only when all are up.
        started = await asyncio.gather(start_server(), publisher.start(), decoder.start(),
                                       *(w.start() for w in workers), return_exceptions=True)
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            raise failed[0]

        if system == "direct":
            offer = await publisher.call({"op": "offer"})
            answer = await decoder.call({"op": "answer_direct", "sdp": offer["sdp"],
                                         "name": "direct", "decode": True})
            await publisher.call({"op": "answer", "sdp": answer["sdp"]})
            ready = [await decoder.call({"op": "wait_direct"})]
        else:
            await publisher.call({"op": "start", "system": peer_system, "url": media_url})
            names = [f"sub-{i:02d}" for i in range(1, n)]
            ready = await asyncio.gather(
                decoder.call({"op": "start", "system": peer_system, "url": media_url,
                              "names": ["sub-00"], "decode": True}),
                *(w.call({"op": "start", "system": peer_system, "url": media_url,
                          "names": names[k::procs], "decode": False})
                  for k, w in enumerate(workers)))
        point["subscribers_ready_s"] = max(r["ready_s"] for r in ready)

        point["setup_s"] = round(time.monotonic() - setup_started, 1)
        await asyncio.sleep(settings.warmup_s)

        # --- the measurement window -------------------------------------------
        if system.startswith("goldenhour"):
            await http_get_json(f"{http_url}/api/stats?reset=1")
        mark0 = await publisher.call({"op": "mark"})
        cpu0 = CpuSnapshot.take(children)
        t0_ms = time.time() * 1000
        peak_rss = 0.0
        end = time.monotonic() + settings.seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(0.5, left))
            dead = [c.name for c in children if not c.alive]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited during the measurement")
            if server is not None:
                peak_rss = max(peak_rss, server.rss_mb())
                if peak_rss > settings.max_server_rss_mb:
                    point["warnings"].append(
                        f"window cut short: server memory {peak_rss:.0f} MB > "
                        f"{settings.max_server_rss_mb:.0f} MB (frames queueing without bound)")
                    point["aborted"] = True
                    break
        t1_ms = time.time() * 1000
        cpu1 = CpuSnapshot.take(children)
        mark1 = await publisher.call({"op": "mark"})
        if system.startswith("goldenhour"):
            point["sfu_stats"] = await http_get_json(f"{http_url}/api/stats")
        point["window"] = {"t0_ms": t0_ms, "t1_ms": t1_ms, "seconds": (t1_ms - t0_ms) / 1000}
        point["server_peak_rss_mb"] = round(peak_rss, 1) if server is not None else None

        # Frames captured late in the window may still be on their way.
        await asyncio.sleep(settings.drain_s)
        point["publisher_log"] = await publisher.call({"op": "log", "t0_ms": t0_ms,
                                                       "t1_ms": t1_ms})
        # A frame captured in the window cannot arrive before it.
        since = {"op": "report", "since_s": t0_ms / 1000 - 0.5}
        reports = await asyncio.gather(*(w.call(since) for w in [decoder] + workers))
        point["subscribers"] = [s for r in reports for s in r["subscribers"]]
        # Packets timed by the kernel, and the few (a socket's first) by the read.
        point["arrival_stamps"] = {k: sum(r.get("arrival_stamps", {}).get(k, 0) for r in reports)
                                   for k in ("kernel", "read")}
        point["publisher"] = _publisher_rates(mark0, mark1)
        point["cpu"] = _cpu(cpu0, cpu1, server, publisher, decoder, workers)

        if system != "direct":
            # One joiner of each kind, one after the other, so that each gets
            # its own keyframe request answered.
            timeout_s = settings.late_join_timeout_s
            for key, host, decode in (("late_joiner_first_frame_s",
                                       workers[0] if workers else decoder, False),
                                      ("late_joiner_first_decoded_s", decoder, True)):
                late = await host.call({"op": "late_join", "system": peer_system, "url": media_url,
                                        "name": f"late-{'decoding' if decode else 'rtp'}",
                                        "decode": decode, "timeout_s": timeout_s},
                                       timeout_s=timeout_s + 30)
                point[key] = late["first_frame_s"]
            point["stream_age_at_late_join_s"] = round(
                settings.warmup_s + point["window"]["seconds"] + settings.drain_s, 1)
    except Exception as exc:
        point["error"] = f"{type(exc).__name__}: {exc}"
        point["logs"] = {c.name: _tail(c.log_path) for c in children}
    finally:
        # Subscribers first, then the publisher, then the server: every peer
        # says goodbye while the other side still listens.
        teardown_started = time.monotonic()
        order = [[c for c in children if c.name.startswith("subscribers")
                  or c.name == "decoder"],
                 [c for c in children if c.name == "publisher"],
                 [c for c in children if c.name == "server"]]
        for group in order:
            await asyncio.gather(*(c.stop() for c in group), return_exceptions=True)
        point["teardown_s"] = round(time.monotonic() - teardown_started, 1)
    return point


async def _wait_healthy(server: Child, url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if not server.alive:
            raise RuntimeError(f"server exited at start: {_tail(server.log_path)}")
        with contextlib.suppress(OSError, ValueError):
            await http_get_json(url, timeout_s=1.0)
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"server not healthy after {timeout_s:.0f} s")
        await asyncio.sleep(0.1)


def _publisher_rates(mark0: dict, mark1: dict) -> dict:
    seconds = (mark1["t_ms"] - mark0["t_ms"]) / 1000
    return {"fps": round((mark1["frames"] - mark0["frames"]) / seconds, 2),
            "payload_kbps": round((mark1["bytes_sent"] - mark0["bytes_sent"]) * 8
                                  / seconds / 1000, 1)}


def _cpu(a: CpuSnapshot, b: CpuSnapshot, server: Child | None, publisher: Child,
         decoder: Child, workers: list[Child]) -> dict:
    wall = b.wall_s - a.wall_s

    def cores(name: str) -> float | None:
        if name not in a.per_child_s or name not in b.per_child_s:
            return None
        return (b.per_child_s[name] - a.per_child_s[name]) / wall

    ours = sum((b.per_child_s[k] - a.per_child_s[k]) for k in b.per_child_s
               if k in a.per_child_s) + (b.orchestrator_s - a.orchestrator_s)
    busy = (b.system_busy_s - a.system_busy_s) / wall
    return {
        "server_cores": None if server is None else _round(cores(server.name), 4),
        "publisher_cores": _round(cores(publisher.name), 3),
        "decoder_cores": _round(cores(decoder.name), 3),
        "subscriber_proc_cores": [_round(cores(w.name), 3) for w in workers],
        "orchestrator_cores": round((b.orchestrator_s - a.orchestrator_s) / wall, 3),
        "system_busy_cores": round(busy, 3),
        "machine_cores": psutil.cpu_count(),
        "other_cores": round(max(0.0, busy - ours / wall), 3),
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- summary ------------------------------------------------------------------------

def summarise(point: dict, settings: Settings) -> dict:
    """Latency, loss, CPU and load-generator warnings from one point's raw figures."""
    out = {k: point[k] for k in ("system", "n", "setup_s", "teardown_s", "server_scheduling")
           if k in point}
    out["subscribers"] = 1 if point["system"] == "direct" else point["n"]
    if "error" in point:
        out["error"] = point["error"]
        return out
    t0_s, t1_s = point["window"]["t0_ms"] / 1000, point["window"]["t1_ms"] / 1000
    window_s = t1_s - t0_s
    pub = point["publisher_log"]
    sent = pub["sent"]
    capture_of_ts = dict(zip(sent["rtp_ts"], sent["capture_s"]))
    capture_of_id = dict(zip(pub["captured"]["frame_id"], pub["captured"]["capture_s"]))
    frame_of_painted = _painted_to_frame_id(pub["captured"], pub.get("clip_index"))
    # The relay re-encodes: its RTP timestamps are its encoders', not the publisher's.
    joinable = point["system"] != "relay"
    out["g2g_basis"] = "rtp" if joinable else "pixels"
    out["arrival_stamps"] = point.get("arrival_stamps")

    sent_of_ts = dict(zip(sent["rtp_ts"], sent["marker_sent_s"]))
    rtp_latencies: list[float] = []
    queued_ms: list[float] = []  # complete as handed over by aiortc, minus as read
    first_packet_ms: list[float] = []   # first packet in, minus capture
    sent_to_complete_ms: list[float] = []  # complete, minus marker packet sent
    decoded_latencies: list[float] = []
    per_subscriber = []
    rtp_lost: list[int] = []
    decoded_lost = None
    unreadable = 0
    shifts = (_timestamp_offsets(point["subscribers"], sent, frame_of_painted)
              if point["system"] in REWRITES_RTP_TIMESTAMPS else None)
    if shifts is not None and len(shifts) < len(point["subscribers"]):
        point["warnings"].append(
            f"{len(point['subscribers']) - len(shifts)} subscriber(s) whose RTP timestamp shift "
            "could not be found: their frames count as lost")
    for sub in point["subscribers"]:
        rtp = sub["rtp"]
        if shifts is not None:
            shift = shifts.get(sub["name"])
            rtp = {**rtp, "rtp_ts": [] if shift is None else
                   [(t - shift) % _RTP_TS for t in rtp["rtp_ts"]]}
        queued_ms.extend(1000 * (h - c) for c, h in zip(rtp["complete_s"], rtp.get("complete_handed_s", []))
                         if c is not None and h is not None)
        completed = [c for c in rtp["complete_s"] if c is not None]
        entry: dict = {"name": sub["name"], "decode": sub["decode"],
                       "complete_fps": round(sum(t0_s <= c < t1_s for c in completed)
                                             / window_s, 2)}
        if joinable:
            complete_of_ts = {ts: c for ts, c in zip(rtp["rtp_ts"], rtp["complete_s"])
                              if c is not None and ts in capture_of_ts}
            mine = [1000 * (complete_of_ts[ts] - captured) if ts in complete_of_ts
                    else math.inf for ts, captured in capture_of_ts.items()]
            lost = sum(math.isinf(v) for v in mine)
            for ts, first, complete in zip(rtp["rtp_ts"], rtp["first_s"], rtp["complete_s"]):
                if ts in capture_of_ts and complete is not None:
                    first_packet_ms.append(1000 * (first - capture_of_ts[ts]))
                    if sent_of_ts.get(ts) is not None:
                        sent_to_complete_ms.append(1000 * (complete - sent_of_ts[ts]))
            rtp_lost.append(lost)
            rtp_latencies.extend(mine)
            entry.update(lost=lost, p50_ms=percentile(mine, 0.5), p95_ms=percentile(mine, 0.95))
        if sub["decode"]:
            decoded = sub["decoded"]
            decoded_of_id = {}
            for painted, decoded_s in zip(decoded["frame_id"], decoded["decoded_s"]):
                frame_id = frame_of_painted(painted, decoded_s)
                if frame_id in capture_of_id:
                    decoded_of_id.setdefault(frame_id, decoded_s)
            decoded_latencies = [1000 * (decoded_of_id[i] - c) if i in decoded_of_id
                                 else math.inf for i, c in capture_of_id.items()]
            decoded_lost = sum(math.isinf(v) for v in decoded_latencies)
            unreadable += decoded["unreadable"]
            entry.update(decoded_lost=decoded_lost,
                         decoded_p50_ms=percentile(decoded_latencies, 0.5))
        per_subscriber.append(entry)

    out["frames_sent_in_window"] = len(capture_of_ts)
    out["frames_captured_in_window"] = len(capture_of_id)
    out["per_subscriber"] = per_subscriber
    out["frames_unreadable"] = unreadable
    quantiles = (50, 95, 99)
    out["decoded_glass_to_glass_ms"] = {f"p{q}": percentile(decoded_latencies, q / 100)
                                        for q in quantiles}
    out["decoded_frames_lost"] = decoded_lost
    fps = [s["complete_fps"] for s in per_subscriber]
    out["complete_fps"] = {"min": min(fps), "mean": round(sum(fps) / len(fps), 2)}
    if joinable:
        out["glass_to_glass_ms"] = {f"p{q}": percentile(rtp_latencies, q / 100)
                                    for q in quantiles}
        out["frames_expected_per_subscriber"] = len(capture_of_ts)
        out["frames_lost_per_subscriber"] = rtp_lost
        out["frames_lost"] = sum(rtp_lost)
        # Not in g2g: how long after a frame's last packet was read from the
        # socket the subscriber's own aiortc handed it over (the load
        # generator's queue, several subscribers per process).
        out["subscriber_queue_ms"] = {"p50": percentile(queued_ms, 0.5),
                                      "p95": percentile(queued_ms, 0.95)} if queued_ms else None
        # Where the time goes: capture to the marker packet handed to the
        # publisher's transport (encode, packetize) and from there to complete.
        send = [1000 * (m - c) for c, m in zip(sent["capture_s"], sent["marker_sent_s"])
                if m is not None]
        out["breakdown_ms"] = {
            "capture_to_marker_sent": _p50_p99(send),
            "capture_to_first_packet_in": _p50_p99(first_packet_ms),
            "marker_sent_to_complete": _p50_p99(sent_to_complete_ms)}
    else:
        out["glass_to_glass_ms"] = {f"p{q}": None for q in quantiles}
        out["frames_expected_per_subscriber"] = len(capture_of_id)
        out["frames_lost_per_subscriber"] = [decoded_lost]
        out["frames_lost"] = decoded_lost
        out["breakdown_ms"] = None
    out["publisher_frames_not_sent"] = len(capture_of_id) - len(capture_of_ts)
    if pub.get("unmapped_packets"):
        point["warnings"].append(
            f"publisher log: {pub['unmapped_packets']} packets sent with no captured frame: "
            "the RTP timestamp to frame mapping is off")
    out["forwarding_ms"] = out["forwarding_last_copy_ms"] = out["socket_wait_ms"] = None
    if point["system"].startswith("goldenhour"):
        video = [s for s in point.get("sfu_stats", []) if s.get("kind") == "video"]
        if video:
            for key in ("forwarding_ms", "forwarding_last_copy_ms", "socket_wait_ms"):
                fwd = video[0].get(key)
                if fwd is not None:
                    out[key] = {"p50": fwd["p50"], "p99": fwd["p99"], "n": fwd["n"]}
            # Over the whole point, warm-up included: copies sent, and sent
            # again for a subscriber's NACK (its loss on this machine).
            consumers = video[0].get("consumers", [])
            out["video_copies"] = {
                "sent": sum(c["packets_out"] for c in consumers),
                "retransmitted": sum(c.get("packets_retransmitted", 0) for c in consumers)}
    out["cpu"] = point["cpu"]
    out["server_cpu_cores"] = point["cpu"]["server_cores"]
    out["load_generator"] = _generator_cost(point["cpu"], out["subscribers"])
    out["publisher"] = point["publisher"]
    out["late_joiner_first_frame_s"] = point.get("late_joiner_first_frame_s")
    out["late_joiner_first_decoded_s"] = point.get("late_joiner_first_decoded_s")
    out["stream_age_at_late_join_s"] = point.get("stream_age_at_late_join_s")
    out["subscribers_ready_s"] = point.get("subscribers_ready_s")
    out["server_peak_rss_mb"] = point.get("server_peak_rss_mb")
    out["window_s"] = round(window_s, 2)
    load_warnings = _load_warnings(out, settings)
    out["warnings"] = list(point["warnings"]) + load_warnings
    stamps = point.get("arrival_stamps") or {}
    if stamps.get("read", 0) > 0.01 * max(1, stamps.get("kernel", 0) + stamps.get("read", 0)):
        out["warnings"].append(f"{stamps['read']} of {stamps['kernel'] + stamps['read']} packets had no "
                               "kernel receive timestamp: timed when read instead")
    #: The machine or the load generator, not the system, set this point's figures.
    out["load_bound"] = bool(load_warnings) or bool(point.get("aborted"))
    return out


#: Servers that shift each subscriber's RTP timestamps by a constant of their
#: own: Janus's switching context starts every subscriber's stream near 0.
REWRITES_RTP_TIMESTAMPS = {"janus"}
_RTP_TS = 1 << 32


def _timestamp_offsets(subscribers: list[dict], sent: dict,
                       frame_of_painted: Callable[[int, float], int | None]) -> dict[str, int]:
    """Each subscriber's RTP timestamp shift (received minus sent), by name,
    for a server that rewrites them.

    The decoding subscriber's is exact: each decoded frame has the RTP
    timestamp it came with and the frame id painted in its pixels, which the
    publisher's log maps to the timestamp it sent. Every other subscriber's
    is the shift that lines its frames' completion times up with the
    decoding subscriber's for the same frames: they receive the same packets
    within a few ms of each other, where a shift of one frame more or less
    would put them a frame interval (33 ms) apart. (Aligning on latency
    alone cannot tell a path that adds 40 ms from one frame off.) A
    subscriber left out here is not joined, and its frames count as lost."""
    offsets: dict[str, int] = {}
    decoder = next((s for s in subscribers if s["decode"]), None)
    if decoder is None:
        return offsets
    sent_ts_of_frame = dict(zip(sent["frame_id"], sent["rtp_ts"]))
    decoded = decoder["decoded"]
    votes: dict[int, int] = {}
    for painted, decoded_s, ts in zip(decoded["frame_id"], decoded["decoded_s"],
                                      decoded.get("rtp_ts", [])):
        frame_id = frame_of_painted(painted, decoded_s)
        if frame_id in sent_ts_of_frame:
            shift = (ts - sent_ts_of_frame[frame_id]) % _RTP_TS
            votes[shift] = votes.get(shift, 0) + 1
    if not votes:
        return offsets
    ranked = sorted(votes.values(), reverse=True)
    shift, count = max(votes.items(), key=lambda kv: kv[1])  # count == ranked[0]
    # A painted clip index can name two frames of a looping clip, so a few
    # votes go astray (59 of 359 in a 10 s run); a shift without a clear
    # majority is no shift: join nothing rather than guess.
    if count < 0.6 * sum(ranked) or (len(ranked) > 1 and count < 3 * ranked[1]):
        return offsets
    offsets[decoder["name"]] = shift
    anchor = {(t - shift) % _RTP_TS: c
              for t, c in zip(decoder["rtp"]["rtp_ts"], decoder["rtp"]["complete_s"])
              if c is not None}
    for sub in subscribers:
        if sub is decoder:
            continue
        frames = [(t, c) for t, c in zip(sub["rtp"]["rtp_ts"], sub["rtp"]["complete_s"])
                  if c is not None]
        if not frames or not anchor:
            continue
        sample = frames[::max(1, len(frames) // 300)]
        probe_ts, probe_complete = frames[len(frames) // 2]
        best: tuple[float, int] | None = None  # (median gap, shift)
        for ts, complete in anchor.items():
            if abs(complete - probe_complete) > 0.5:
                continue
            candidate = (probe_ts - ts) % _RTP_TS
            gaps = sorted(abs(c - anchor[(t - candidate) % _RTP_TS]) for t, c in sample
                          if (t - candidate) % _RTP_TS in anchor)
            if len(gaps) >= len(sample) // 2 and (best is None or gaps[len(gaps) // 2] < best[0]):
                best = (gaps[len(gaps) // 2], candidate)
        if best is not None:
            offsets[sub["name"]] = best[1]
    return offsets


def _painted_to_frame_id(captured: dict, clip_index: list[int] | None):
    """painted code, decoded at time t -> the publisher's frame id.

    The live camera paints the frame id itself. The pre-encoded camera paints
    the clip frame, which recurs (the clip loops, and a keyframe request jumps
    back): the frame is the latest one that showed that clip frame before t.
    """
    if clip_index is None:
        return lambda painted, decoded_s: painted
    shown: dict[int, tuple[list[float], list[int]]] = {}
    for frame_id, capture_s, index in zip(captured["frame_id"], captured["capture_s"],
                                          clip_index):
        times, ids = shown.setdefault(index, ([], []))
        times.append(capture_s)
        ids.append(frame_id)

    def frame_of(painted: int, decoded_s: float) -> int | None:
        times, ids = shown.get(painted, ((), ()))
        k = bisect.bisect_right(times, decoded_s)
        return ids[k - 1] if k else None

    return frame_of


def _p50_p99(values: list[float]) -> dict:
    return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99)}


def _generator_cost(cpu: dict, subscribers: int) -> dict:
    """What the load generator spent, in cores: the publisher, the decoding
    subscriber, and each RTP-only subscriber on average."""
    rtp_procs = [c for c in cpu["subscriber_proc_cores"] if c is not None]
    rtp_only = subscribers - 1
    return {
        "publisher_cores": cpu["publisher_cores"],
        "decoding_subscriber_cores": cpu["decoder_cores"],
        "rtp_only_subscribers": rtp_only,
        "rtp_only_cores_each": round(sum(rtp_procs) / rtp_only, 4) if rtp_only and rtp_procs
        else None,
        "total_cores": round((cpu["publisher_cores"] or 0) + (cpu["decoder_cores"] or 0)
                             + sum(rtp_procs), 3),
    }


def _load_warnings(out: dict, settings: Settings) -> list[str]:
    """Say where the machine or the load generator, not the system under test, set a figure.

    Only conditions that bias the figures count; others go in the point's notes.
    A server that itself takes most of the machine is the system's own result,
    not the load generator's: that goes in the notes.
    """
    notes = out.setdefault("notes", [])
    warnings: list[str] = []
    cpu = out["cpu"]
    generator = out["load_generator"]["total_cores"]
    server = cpu["server_cores"] or 0.0
    saturated = cpu["system_busy_cores"] >= SATURATED_BUSY_SHARE * cpu["machine_cores"]
    by_server = saturated and server >= generator
    # When the server saturates the machine, the starved publisher is its doing too.
    biased = notes if by_server else warnings
    if saturated:
        whom = (f"mostly by the server ({server:.2f} cores, the load generator "
                f"{generator:.2f})" if by_server else
                f"the load generator uses {generator:.2f}, the server {server:.2f}")
        biased.append(f"machine saturated ({cpu['system_busy_cores']:.2f} of "
                      f"{cpu['machine_cores']} cores busy; {whom}): latency, loss and server "
                      "CPU include contention")
    for k, cores in enumerate(cpu["subscriber_proc_cores"]):
        if cores is not None and cores >= PROCESS_BOUND_CORES:
            warnings.append(f"RTP-only subscriber process {k} used {cores:.2f} core: it is "
                            "core/GIL bound and adds latency of its own")
    if cpu["decoder_cores"] is not None and cpu["decoder_cores"] >= PROCESS_BOUND_CORES:
        warnings.append(f"decoding subscriber used {cpu['decoder_cores']:.2f} core "
                        "(decoder bound)")
    if cpu["publisher_cores"] is not None and cpu["publisher_cores"] >= PROCESS_BOUND_CORES:
        # Bound, but a bias only where it shows: as a lower frame rate (below)
        # or a slower encode than in the direct call (compare()).
        notes.append(f"publisher used {cpu['publisher_cores']:.2f} core (one libvpx thread: "
                     "encoder bound)")
    fps = out["publisher"]["fps"]
    if fps < 0.97 * settings.fps:
        biased.append(f"publisher produced {fps:.1f} fps, not {settings.fps}")
    kbps = out["publisher"]["payload_kbps"]
    if abs(kbps * 1000 - settings.bitrate_bps) > 0.2 * settings.bitrate_bps:
        biased.append(f"publisher sent {kbps / 1000:.2f} Mbit/s of payload, "
                      f"target {settings.bitrate_bps / 1e6:.2f}")
    if cpu["other_cores"] >= 0.2:
        # Contention from others biases the point when it is short of CPU.
        (warnings if warnings else notes).append(
            f"processes not started by this benchmark used {cpu['other_cores']:.2f} cores "
            "during the window")
    if out["frames_unreadable"]:
        notes.append(f"{out['frames_unreadable']} decoded frames had an unreadable code")
    if out["publisher_frames_not_sent"]:
        notes.append(f"the publisher's encoder sent {out['publisher_frames_not_sent']} "
                     "captured frames never (not counted as lost at RTP level)")
    if not notes:
        del out["notes"]
    return warnings


def compare(rows: list[dict]) -> dict:
    """Added-over-direct latency and marginal CPU per subscriber, per system.

    Each system is compared on its own g2g basis: network level (RTP) where
    the publisher's RTP timestamps reach the subscribers, decoded pixels for
    the relay, against the same basis of the direct call.
    """
    directs = [r for r in rows if r["system"] == "direct" and "error" not in r]

    def minus(a: dict, b: dict) -> dict:
        return {q: None if a[q] is None or b[q] is None else a[q] - b[q]
                for q in ("p50", "p95", "p99")}

    for row in rows:
        row["added_over_direct_ms"] = None
        row["added_over_direct_decoded_ms"] = None
        if not directs or "error" in row or row["system"] == "direct":
            continue
        # The reference measured next to this N, else the nearest one.
        direct = min(directs, key=lambda d: abs(d["n"] - row["n"]))
        key = ("decoded_glass_to_glass_ms" if row["g2g_basis"] == "pixels"
               else "glass_to_glass_ms")
        row["added_over_direct_ms"] = minus(row[key], direct[key])
        row["added_over_direct_decoded_ms"] = minus(row["decoded_glass_to_glass_ms"],
                                                    direct["decoded_glass_to_glass_ms"])
        if row["breakdown_ms"] and direct["breakdown_ms"]:
            # The publisher is the same program in both runs: time its encoder
            # lost to contention is the load generator's, not the system's.
            slower = (row["breakdown_ms"]["capture_to_marker_sent"]["p50"]
                      - direct["breakdown_ms"]["capture_to_marker_sent"]["p50"])
            row["publisher_slower_than_in_direct_p50_ms"] = round(slower, 2)
            if slower > PUBLISHER_SLOWER_MS:
                row["warnings"].append(
                    f"the publisher took {slower:.1f} ms longer from capture to sending a "
                    "frame than in the direct call (p50): that much of '+direct' is the "
                    "load generator's encoder waiting for a core")
                row["load_bound"] = True
    marginal: dict = {}
    for system in SERVER_SYSTEMS:
        ok = sorted((r for r in rows if r["system"] == system and "error" not in r
                     and r["server_cpu_cores"] is not None), key=lambda r: r["n"])
        steps = []
        for prev, cur in zip(ok, ok[1:]):
            pct = (cur["server_cpu_cores"] - prev["server_cpu_cores"]) / (cur["n"] - prev["n"])
            cur["marginal_cpu_pct_per_subscriber"] = round(100 * pct, 3)
            steps.append({"from_n": prev["n"], "to_n": cur["n"], "pct_core": round(100 * pct, 3)})
        fit = slope([(r["n"], r["server_cpu_cores"]) for r in ok])
        marginal[system] = {"steps": steps,
                            "fit_pct_core": None if fit is None else round(100 * fit, 3)}
    return marginal


def goals(rows: list[dict], marginal: dict) -> list[dict]:
    """Each goal against the worst figure of each server system."""
    verdicts = []
    for system in SERVER_SYSTEMS:
        ok = [r for r in rows if r["system"] == system and "error" not in r]
        if not ok:
            continue

        def worst(values: list) -> float | None:
            values = [v for v in values if v is not None]
            return max(values) if values else None

        added = [r["added_over_direct_ms"] or {} for r in ok]
        steps = [s["pct_core"] for s in marginal.get(system, {}).get("steps", [])]
        late = [r["late_joiner_first_frame_s"] for r in ok]
        figures = {
            "marginal_cpu_pct_per_subscriber": worst(steps),
            "added_over_direct_p50_ms": worst([a.get("p50") for a in added]),
            "added_over_direct_p95_ms": worst([a.get("p95") for a in added]),
            "forwarding_p99_ms": worst([(r["forwarding_ms"] or {}).get("p99") for r in ok]),
            # A late joiner that never saw a frame is the worst case of all.
            "late_joiner_first_frame_s": (math.inf if any(v is None for v in late)
                                          else worst(late)),
            "frames_lost": sum(r["frames_lost"] for r in ok),
        }
        for goal, limit in GOALS.items():
            figure = figures[goal]
            verdicts.append({"system": system, "goal": goal, "limit": limit,
                             "worst": figure,
                             "met": None if figure is None else figure <= limit,
                             "load_bound": any(r["load_bound"] for r in ok)})
    return verdicts


# --- output ---------------------------------------------------------------------------

def _ms(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "lost"
    return f"{value:+.1f}" if sign else f"{value:.1f}"


def _label(system: str, n: int) -> str:
    if system == "direct":
        return f"direct call (reference for N={n}, 1 subscriber)"
    return f"{SYSTEM_LABELS[system]}, N={n}"


def table(rows: list[dict]) -> str:
    header = ["N", "system", "fwd p50/p99 ms", "last copy p50/p99", "g2g p50/p95/p99 ms", "+direct p50/p95",
              "lost", "decoded g2g p50/p95 (lost)", "sub fps", "srv CPU", "+CPU/sub",
              "late join kf/dec", "pub fps/Mbps", "CPU gen/other/all"]
    lines = [header]
    previous_n = None
    for r in rows:
        if previous_n is not None and r["n"] != previous_n:
            lines.append([])  # a blank line between N groups
        previous_n = r["n"]
        system = "direct call (1 sub)" if r["system"] == "direct" else SYSTEM_LABELS[r["system"]]
        if "error" in r:
            lines.append([str(r["n"]), system, "FAILED: " + r["error"][:100]])
            continue
        fwd, fwd_last = r["forwarding_ms"], r.get("forwarding_last_copy_ms")
        g = r["glass_to_glass_ms"]
        d = r["decoded_glass_to_glass_ms"]
        added = r["added_over_direct_ms"]
        marginal = r.get("marginal_cpu_pct_per_subscriber")
        late, late_dec = r["late_joiner_first_frame_s"], r["late_joiner_first_decoded_s"]
        cpu = r["cpu"]
        pixels = r["g2g_basis"] == "pixels"
        dec = " dec" if pixels else ""
        expected = r["frames_expected_per_subscriber"] * (1 if pixels else r["subscribers"])
        lines.append([
            str(r["n"]), system,
            "n/a" if fwd is None else f"{_ms(fwd['p50'])}/{_ms(fwd['p99'])}",
            "n/a" if fwd_last is None else f"{_ms(fwd_last['p50'])}/{_ms(fwd_last['p99'])}",
            "n/a (a)" if pixels else f"{_ms(g['p50'])}/{_ms(g['p95'])}/{_ms(g['p99'])}",
            "ref" if r["system"] == "direct" else
            ("n/a" if added is None else
             f"{_ms(added['p50'], True)}/{_ms(added['p95'], True)}{dec}"),
            f"{r['frames_lost']}/{expected}{dec}",
            f"{_ms(d['p50'])}/{_ms(d['p95'])} ({r['decoded_frames_lost']})",
            f"{r['complete_fps']['min']:.1f}",
            "n/a" if r["server_cpu_cores"] is None else f"{100 * r['server_cpu_cores']:.1f}%",
            "-" if marginal is None else f"{marginal:.2f}%",
            "n/a" if r["system"] == "direct" else
            f"{'never' if late is None else f'{late:.2f}'}/"
            f"{'never' if late_dec is None else f'{late_dec:.2f}'} s",
            f"{r['publisher']['fps']:.1f}/{r['publisher']['payload_kbps'] / 1000:.2f}",
            f"{r['load_generator']['total_cores']:.2f}/{cpu['other_cores']:.2f}/"
            f"{cpu['system_busy_cores']:.2f}",
        ])
    full = [line for line in lines if len(line) == len(header)]
    widths = [max(len(line[i]) for line in full) for i in range(len(header))]
    out = []
    for k, line in enumerate(lines):
        if len(line) == len(header):
            out.append("  ".join(c.ljust(w) if i == 1 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(line, widths))).rstrip())
        else:
            out.append("  ".join([c.rjust(widths[0]) if i == 0 else
                                  c.ljust(widths[1]) if i == 1 else c
                                  for i, c in enumerate(line)]).rstrip())
        if k == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


GOAL_LABELS = {
    "marginal_cpu_pct_per_subscriber": ("marginal CPU per subscriber", "% core", "<="),
    "added_over_direct_p50_ms": ("glass-to-glass added over direct, p50", "ms", "<="),
    "added_over_direct_p95_ms": ("glass-to-glass added over direct, p95", "ms", "<="),
    "forwarding_p99_ms": ("forwarding delay in the SFU, p99", "ms", "<="),
    "late_joiner_first_frame_s": ("late joiner: join to first complete keyframe", "s", "<="),
    "frames_lost": ("frames lost (every frame delivered)", "frames", "="),
}


def goals_table(verdicts: list[dict]) -> str:
    systems = [s for s in SERVER_SYSTEMS if any(v["system"] == s for v in verdicts)]
    lines = [["goal", "target"] + [SYSTEM_LABELS[s] + " (worst)" for s in systems]]
    for goal, limit in GOALS.items():
        label, unit, op = GOAL_LABELS[goal]
        row = [label, f"{op} {limit:g} {unit}"]
        for s in systems:
            v = next((v for v in verdicts if v["system"] == s and v["goal"] == goal), None)
            if v is None or v["worst"] is None:
                row.append("n/a")
                continue
            figure = ("never" if math.isinf(v["worst"]) else
                      f"{v['worst']:.0f}" if goal == "frames_lost" else f"{v['worst']:.2f}")
            row.append(f"{figure} {'PASS' if v['met'] else 'FAIL'}"
                       + (" *" if v["load_bound"] else ""))
        lines.append(row)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "-" * len(out[0]))
    if any(v["load_bound"] for v in verdicts):
        out.append("* some of these points were bound by the machine or the load generator "
                   "(see below): not a verdict on the system")
    return "\n".join(out)


def _jsonable(value: object) -> object:
    if isinstance(value, float) and math.isinf(value):
        # JSON has no infinity: a percentile that falls on frames never
        # delivered is written as this string.
        return "undelivered"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _git_commit() -> str | None:
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
    return None


def _versions() -> dict:
    import aiortc
    import av
    return {"python": platform.python_version(), "aiortc": aiortc.__version__,
            "av": av.__version__}


# --- main --------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None,
                        help="measurement window per point (default 30; 3 with --quick)")
    parser.add_argument("--subscribers", default=None,
                        help="comma-separated N values (default 1,4,16; 1,4 with --quick)")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                        help=f"comma-separated, from {', '.join(SYSTEMS)} (default: all "
                             "but goldenhour-after-receiver, the on-arrival path's baseline)")
    parser.add_argument("--quick", action="store_true",
                        help="development run: a few seconds per point, N = 1,4")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of streaming before each window (default 3; 1 quick)")
    parser.add_argument("--drain", type=float, default=2.0,
                        help="seconds to wait for the window's last frames; a frame not "
                             "complete (decoded, for the decoding subscriber) by then counts "
                             "as lost")
    parser.add_argument("--bitrate", type=float, default=2.5e6, help="publisher VP8 bit/s")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--camera", choices=("preencoded", "live"), default="preencoded",
                        help="publisher: a clip encoded ahead of time, as a headset's hardware "
                             "encoder leaves the CPU free (default), or aiortc's software VP8 "
                             "encoder on every frame (0.9 core here)")
    parser.add_argument("--subscriber-procs", type=int, default=None,
                        help="most processes for the RTP-only subscribers, spread over them "
                             "(default 2; each subscriber costs about 2.5%% of a core; the "
                             "decoding subscriber always has a process of its own)")
    parser.add_argument("--relay-unbuffered", action="store_true",
                        help="baseline with MediaRelay(buffered=False) (drops instead of queues)")
    parser.add_argument("--server-nice", type=int, default=0,
                        help="run the servers at this niceness (default 0, as the load generator; "
                             "-10 shows what waiting for a core costs: on 2 cores the "
                             "subscribers the server wakes take the core it needs)")
    parser.add_argument("--max-server-rss-mb", type=float, default=4096,
                        help="cut a window short when a server grows past this")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the child processes' logs (always kept when a point fails)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help="where the JSON goes (default bench/results/)")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 30.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    if args.subscriber_procs is None:
        # Two halve the queueing of one frame's packets behind 15 other
        # subscribers' (measured at N=16: p50 +3 ms for the last one with one).
        args.subscriber_procs = 2
    if args.subscribers is None:
        args.subscribers = "1,4" if args.quick else "1,4,16"
    args.n_values = sorted({int(v) for v in args.subscribers.split(",") if v.strip()})
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    reason = janus_baseline.unusable_because() if "janus" in args.system_list else None
    if reason is not None:
        if args.systems != parser.get_default("systems"):
            parser.error(f"--systems janus: {reason}")
        print(f"{reason}: its baseline is left out.")
        args.system_list.remove("janus")
    unknown = set(args.system_list) - set(SYSTEMS)
    if unknown or not args.n_values or min(args.n_values) < 1:
        parser.error(f"bad --systems {sorted(unknown)} or --subscribers {args.subscribers!r}")
    return args


async def run(args: argparse.Namespace) -> dict:
    settings = Settings(seconds=args.seconds, warmup_s=args.warmup, drain_s=args.drain,
                        bitrate_bps=int(args.bitrate), width=args.width, height=args.height,
                        fps=args.fps, camera=args.camera,
                        subscriber_procs=args.subscriber_procs,
                        relay_unbuffered=args.relay_unbuffered, server_nice=args.server_nice,
                        max_server_rss_mb=args.max_server_rss_mb, late_join_timeout_s=10.0)
    # A direct call is measured next to every N (the machine's other load
    # drifts), and each system's "added over direct" uses the one of its N.
    plan = [(system, n) for n in args.n_values for system in SYSTEMS
            if system in args.system_list]
    if settings.camera == "preencoded":  # encode (about a minute) before any point, once
        load_or_encode(settings.width, settings.height, settings.fps, settings.bitrate_bps)
    log_dir = Path(tempfile.mkdtemp(prefix="goldenhour-bench-sfu-"))
    started = time.time()
    raw, rows = [], []
    load_before = os.getloadavg()
    try:
        for k, (system, n) in enumerate(plan, 1):
            print(f"[{k}/{len(plan)}] {_label(system, n)} ...", file=sys.stderr, flush=True)
            point = await run_point(system, n, settings, log_dir)
            raw.append(point)
            rows.append(summarise(point, settings))
            if "error" in point:
                print(f"    failed: {point['error']}", file=sys.stderr)
                for name, tail in point.get("logs", {}).items():
                    if tail:
                        print(f"    --- {name} log (tail) ---\n{tail}", file=sys.stderr)
    finally:
        if "janus" in args.system_list:
            janus_baseline.remove_network()
        if args.keep_logs or any("error" in p for p in raw):
            print(f"logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    marginal = compare(rows)
    verdicts = goals(rows, marginal)
    return {
        "benchmark": "sfu",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "commit": _git_commit(),
        "machine": {"cores": psutil.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg(), **_versions()},
        "settings": vars(settings),
        "goals": GOALS,
        "rows": rows,
        "marginal_cpu": marginal,
        "verdicts": verdicts,
        "raw_subscriber_counts": [{"system": p["system"], "n": p["n"],
                                   "subscribers": len(p.get("subscribers", []))} for p in raw],
    }


def _legend(s: dict) -> list[str]:
    drain = f"{s['drain_s']:g} s"
    terms = [
        ("fwd", "the SFU's own figure (its /api/stats), per copy: an RTP packet's arrival at "
                "the server's socket (the kernel's receive timestamp) to that copy handed to the "
                "kernel, pooled over all copies. Since 2026-11-26 15:28; before, from the packet's "
                "tap (15:18-15:28: its arrival in Python) to its last copy; "
                "goldenhour-after-receiver still starts at its tap. n/a where the server has no "
                "such counter."),
        ("last copy", "the same, to the packet's last copy (the slowest subscriber's)."),
        ("g2g", "network level, per frame: the time its last missing packet arrived at a "
                "subscriber's socket (the kernel's receive timestamp, matched by the clear RTP "
                "header; since 2026-11-26 13:20. From 11:40 it was when the subscriber's "
                "process read the datagram, before that when aiortc handed it over after its "
                "Python; the difference is printed below as the subscribers' own queue) "
                "(the frame complete: every sequence number from its first to its "
                "marker packet, retransmissions included, nothing decoded) minus its capture "
                "time at the publisher (same clock), joined on the RTP timestamp, which the "
                "SFU passes through unchanged; pooled over all N subscribers. A frame "
                f"captured in the window and not complete {drain} after it ends counts as "
                "lost and ranks last ('lost')."),
        ("Janus", "Debian's janus (1.1.2) videoroom plugin, configured by "
                  "bench/janus_baseline.py, at normal priority (compare its latency with "
                  "GoldenHour's normal-priority server). It starts each subscriber's RTP "
                  "timestamps near 0: the decoding subscriber's shift comes from its decoded "
                  "frames' painted ids, every other's from lining its frames up in time with "
                  "that one's, and each is undone before the join with the publisher's log."),
        ("(a)", "the relay re-encodes, so its RTP timestamps are its own encoders': its "
                "network-level g2g is not joinable with the publisher's frames. For the relay "
                "'+direct' and 'lost' are the decoding subscriber's (marked 'dec'), and 'sub "
                "fps' says how many frames per second its RTP-only subscribers completed."),
        ("+direct", "g2g percentile minus the same percentile of the direct call measured "
                    "next to this N (a difference of percentiles, not a percentile of "
                    "differences)."),
        ("lost", "frames never complete at a subscriber / frames the publisher sent in the "
                 "window times subscribers."),
        ("decoded", "sub-00, the one subscriber that decodes (alone in its process): frame "
                    "decoded and handed to it, read back by its painted frame counter, minus "
                    "that frame's capture time; includes aiortc's jitter buffer (it releases "
                    "a frame when the next one starts: about one frame interval) and VP8 "
                    f"decoding. (lost): frames captured in the window not decoded {drain} "
                    "after it."),
        ("sub fps", "the fewest frames per second any subscriber completed in the window "
                    f"(the publisher sends {s['fps']})."),
        ("srv CPU", "server process CPU seconds per second (100% = one core)."),
        ("+CPU/sub", "server CPU slope from the previous N, per added subscriber."),
        ("late join", "a new subscriber joining after the stream has run "
                      f"{s['warmup_s'] + s['seconds'] + s['drain_s']:g} s: join to its first "
                      "complete keyframe (kf, RTP-only) / first decoded, readable frame (dec)."),
        ("pub", "the publisher's frame rate and VP8 payload bitrate in the window."),
        ("CPU", "cores used by the load generator (publisher, decoding subscriber, RTP-only "
                "subscribers) / by processes this benchmark did not start / by everything on "
                "the machine."),
    ]
    lines = []
    for term, text in terms:
        lines += textwrap.wrap(text, 100, initial_indent=f"{term:>9}: ",
                               subsequent_indent=" " * 11)
    return lines


def _generator_summary(rows: list[dict]) -> list[str]:
    """One line: what the load generator costs, from the points with a full stream
    (the relay starves the publisher and sends its subscribers a few frames a second)."""
    full = [r for r in rows if "error" not in r and r["system"] != "relay"]
    if not full:
        return []
    cost = [r["load_generator"] for r in full]
    publishers = [c["publisher_cores"] for c in cost if c["publisher_cores"] is not None]
    decoders = [c["decoding_subscriber_cores"] for c in cost
                if c["decoding_subscriber_cores"] is not None]
    each = [c["rtp_only_cores_each"] for c in cost if c["rtp_only_cores_each"] is not None]
    parts = []
    if publishers:
        parts.append(f"publisher {min(publishers):.2f}-{max(publishers):.2f} core")
    if decoders:
        parts.append(f"decoding subscriber {min(decoders):.2f}-{max(decoders):.2f}")
    if each:
        parts.append(f"RTP-only subscribers {100 * min(each):.1f}-{100 * max(each):.1f}% "
                     "of a core each on average")
    fit = slope([(c["rtp_only_subscribers"],
                  sum(x or 0 for x in r["cpu"]["subscriber_proc_cores"]))
                 for r, c in zip(full, cost) if c["rtp_only_subscribers"]])
    if fit is not None:
        parts.append(f"{100 * fit:.1f}% per added one")
    lines = ["Load generator (points with a full stream): " + ", ".join(parts) + "."]
    queues = [f"{_label(r['system'], r['n'])} {r['subscriber_queue_ms']['p50']:.1f}/"
              f"{r['subscriber_queue_ms']['p95']:.1f}" for r in full if r.get("subscriber_queue_ms")]
    if queues:
        lines += textwrap.wrap(
            "Subscribers' own queue, p50/p95 ms (a frame complete as aiortc handed it over, minus "
            "as its packets reached the socket; g2g counts the latter): " + "; ".join(queues),
            100)
    waits = [f"{_label(r['system'], r['n'])} {r['socket_wait_ms']['p50']:.1f}/"
             f"{r['socket_wait_ms']['p99']:.1f}" for r in rows
             if r.get("socket_wait_ms") and r["socket_wait_ms"].get("p50") is not None]
    if waits:
        lines += textwrap.wrap(
            "Server's socket wait, p50/p99 ms (a packet's arrival at the server's socket to the "
            "server reading it; part of 'fwd'): " + "; ".join(waits), 100)
    return lines


def _scheduling_summary(rows: list[dict]) -> list[str]:
    """How each GoldenHour server's event loop was scheduled (its /healthz)."""
    lines = ["Event loop scheduling (the server's /healthz):"]
    for system in SERVER_SYSTEMS:
        seen = {_describe_scheduling(r["server_scheduling"]) for r in rows
                if r["system"] == system and r.get("server_scheduling")}
        if seen:
            lines.append(f"  {SYSTEM_LABELS[system]}: {'; '.join(sorted(seen))}")
    return lines if len(lines) > 1 else []


def _describe_scheduling(scheduling: dict) -> str:
    if scheduling["policy"] == "fifo":
        return f"SCHED_FIFO, priority {scheduling['priority']}"
    return "normal" + (f" ({scheduling['refused']})" if scheduling.get("refused") else "")


def report(result: dict, settings: dict) -> str:
    rows = result["rows"]
    s = settings
    text = [
        f"SFU benchmark: one {s['width']}x{s['height']} {s['fps']} fps VP8 publisher at "
        f"{s['bitrate_bps'] / 1e6:.2f} Mbit/s, {s['seconds']:g} s per point after "
        f"{s['warmup_s']:g} s warm-up, {result['machine']['cores']} cores"
        + (f", servers at nice {s['server_nice']} (higher priority than the load generator)"
           if s.get("server_nice", 0) < 0 else
           f", servers at nice {s['server_nice']}" if s.get("server_nice") else ""),
        "",
        table(rows),
        "",
        *_legend(s),
        "",
        *_generator_summary(rows),
        "",
        goals_table(result["verdicts"]),
    ]
    text += ["", *_scheduling_summary(rows)]
    warnings = [(r, w) for r in rows for w in r.get("warnings", [])]
    if warnings:
        text += ["", "Where the figures are not the system's alone:"]
        text += [f"  {_label(r['system'], r['n'])}: {w}" for r, w in warnings]
    notes = [(r, w) for r in rows for w in r.get("notes", [])]
    if notes:
        text += ["", "Notes:"]
        text += [f"  {_label(r['system'], r['n'])}: {w}" for r, w in notes]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    print(report(result, result["settings"]))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"sfu-{stamp}.json"
    text = json.dumps(_jsonable(result), indent=1)
    path.write_text(text)
    (args.out / "sfu-latest.json").write_text(text)
    print(f"\nwrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} "
          f"and sfu-latest.json", file=sys.stderr)
    return 1 if any("error" in r for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
