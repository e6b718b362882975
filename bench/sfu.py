"""SFU benchmark: GoldenHour's encoded pass-through against aiortc's decode/re-encode relay
and a direct call, with one 720p crew camera and N decoding remote experts.

    python bench/sfu.py                      # 30 s per point, N = 1, 4, 16 (the lead's run)
    python bench/sfu.py --quick              # a few seconds, N = 1, 4 (development)
    python bench/sfu.py --seconds 10 --subscribers 1,8 --systems goldenhour,direct

Every system runs as its own process so that its CPU is its own: the GoldenHour
server (`python -m server.cli serve`), the baseline (bench/relay_server.py), the
publisher and the subscribers (bench/sfu_peers.py, 1 to --subscriber-procs
processes). The publisher paints a frame counter and its capture time into
every frame; subscribers decode every frame and read them back, which gives
glass-to-glass latency (receive minus capture, same clock) and lost frames.

Prints a table and the issue's goals, and writes bench/results/sfu-<time>.json
and bench/results/sfu-latest.json. A benchmark, not a test: it never fails on
a missed goal, only on a broken run (exit status 1 when a point failed).

What can bias the figures (points where it does are flagged in the output):
- The load generator shares the machine. aiortc's VP8 encoder costs about 0.9
  core at 720p30 (one thread below 3 cores) and each decoding subscriber about
  0.2-0.3 core, so N=16 needs some 6 free cores to measure the server and not
  the load generator; a direct-call reference is re-measured next to each N
  because other load drifts.
- "+direct" compares percentiles of runs made one after another, with one
  subscriber in the reference and N sharing processes in the system's run.
- Forwarding delay is what the SFU measures itself, from its packet tap to the
  last consumer's send: receive-side (UDP, SRTP) time is outside it.
- The baseline's re-encoders run at the same pinned bitrate; with aiortc's
  default buffered MediaRelay overload shows as growing latency, then as lost
  frames (`--relay-unbuffered` drops instead).
"""

from __future__ import annotations

import argparse
import asyncio
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
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
REPLY_PREFIX = "@@"

SYSTEMS = ("direct", "goldenhour", "relay")
SYSTEM_LABELS = {"goldenhour": "GoldenHour SFU", "relay": "aiortc MediaRelay",
                 "direct": "direct call"}

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

    def __init__(self, name: str, argv: list[str], log_path: Path, control: bool) -> None:
        self.name = name
        self.argv = argv
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
            [str(REPO), str(BENCH_DIR)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
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
    subscriber_procs: int
    relay_unbuffered: bool
    max_server_rss_mb: float
    late_join_timeout_s: float


async def run_point(system: str, n: int, settings: Settings, log_dir: Path) -> dict:
    """Run one system with n subscribers; returns the raw figures (see `summarise`).

    For the direct call n is the N it is the reference for: it always has one
    subscriber.
    """
    point: dict = {"system": system, "n": n, "warnings": []}
    setup_started = time.monotonic()
    children: list[Child] = []
    python = sys.executable
    tag = f"{system}-n{n}"

    def child(name: str, argv: list[str], control: bool) -> Child:
        made = Child(name, argv, log_dir / f"{tag}-{name}.log", control)
        children.append(made)
        return made

    try:
        server: Child | None = None
        if system != "direct":
            port = free_port()
            if system == "goldenhour":
                argv = [python, "-m", "server.cli", "--log-level", "WARNING", "serve",
                        "--no-tls", "--no-demo-crew", "--loopback-only", "--port", str(port)]
            else:
                argv = [python, str(BENCH_DIR / "relay_server.py"), "--port", str(port),
                        "--bitrate", str(settings.bitrate_bps)]
                if settings.relay_unbuffered:
                    argv.append("--unbuffered")
            server = child("server", argv, control=False)
            http_url = f"http://127.0.0.1:{port}"
            media_url = f"ws://127.0.0.1:{port}/ws" if system == "goldenhour" else http_url

        publisher = child("publisher", [
            python, str(BENCH_DIR / "sfu_peers.py"), "publisher",
            "--bitrate", str(settings.bitrate_bps), "--width", str(settings.width),
            "--height", str(settings.height), "--fps", str(settings.fps)], control=True)
        procs = 1 if system == "direct" else max(1, min(settings.subscriber_procs, n))
        workers = [child(f"subscribers{k}", [python, str(BENCH_DIR / "sfu_peers.py"),
                                             "subscribers"], control=True)
                   for k in range(procs)]

        async def start_server() -> None:
            if server is not None:
                await server.start()
                await _wait_healthy(server, f"{http_url}/healthz")

        # Python, aiortc and PyAV take seconds to import on a busy machine:
        # start every process at once; media starts only when all are up.
        started = await asyncio.gather(start_server(), publisher.start(),
                                       *(w.start() for w in workers), return_exceptions=True)
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            raise failed[0]

        if system == "direct":
            offer = await publisher.call({"op": "offer"})
            answer = await workers[0].call({"op": "answer_direct", "sdp": offer["sdp"]})
            await publisher.call({"op": "answer", "sdp": answer["sdp"]})
            ready = [await workers[0].call({"op": "wait_direct", "name": "direct"})]
        else:
            await publisher.call({"op": "start", "system": system, "url": media_url})
            names = [f"sub-{i:02d}" for i in range(n)]
            ready = await asyncio.gather(*(
                w.call({"op": "start", "system": system, "url": media_url,
                        "names": names[k::procs]}) for k, w in enumerate(workers)))
        point["subscribers_ready_s"] = max(r["ready_s"] for r in ready)

        point["setup_s"] = round(time.monotonic() - setup_started, 1)
        await asyncio.sleep(settings.warmup_s)

        # --- the measurement window -------------------------------------------
        if system == "goldenhour":
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
        if system == "goldenhour":
            point["sfu_stats"] = await http_get_json(f"{http_url}/api/stats")
        point["window"] = {"t0_ms": t0_ms, "t1_ms": t1_ms, "seconds": (t1_ms - t0_ms) / 1000}
        point["server_peak_rss_mb"] = round(peak_rss, 1) if server is not None else None

        # Frames captured late in the window may still be on their way.
        await asyncio.sleep(settings.drain_s)
        window = {"t0_ms": t0_ms, "t1_ms": t1_ms}
        captured = await publisher.call({"op": "captured", **window})
        reports = await asyncio.gather(*(w.call({"op": "report", **window}) for w in workers))
        point["expected_frame_ids"] = captured["frame_ids"]
        point["subscribers"] = [s for r in reports for s in r["subscribers"]]
        point["publisher"] = _publisher_rates(mark0, mark1)
        point["cpu"] = _cpu(cpu0, cpu1, server, publisher, workers)

        if system != "direct":
            late = await workers[0].call({"op": "late_join", "system": system,
                                          "url": media_url, "name": "late-joiner",
                                          "timeout_s": settings.late_join_timeout_s},
                                         timeout_s=settings.late_join_timeout_s + 30)
            point["late_joiner_first_frame_s"] = late["first_frame_s"]
            point["stream_age_at_late_join_s"] = round(
                settings.warmup_s + point["window"]["seconds"] + settings.drain_s, 1)
    except Exception as exc:
        point["error"] = f"{type(exc).__name__}: {exc}"
        point["logs"] = {c.name: _tail(c.log_path) for c in children}
    finally:
        # Subscribers first, then the publisher, then the server: every peer
        # says goodbye while the other side still listens.
        teardown_started = time.monotonic()
        order = [[c for c in children if c.name.startswith("subscribers")],
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
         workers: list[Child]) -> dict:
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
        "subscriber_proc_cores": [_round(cores(w.name), 3) for w in workers],
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
    out = {k: point[k] for k in ("system", "n", "setup_s", "teardown_s") if k in point}
    out["subscribers"] = 1 if point["system"] == "direct" else point["n"]
    if "error" in point:
        out["error"] = point["error"]
        return out
    expected = point["expected_frame_ids"]
    expected_set = set(expected)
    latencies: list[float] = []
    lost = []
    per_subscriber = []
    unreadable = 0
    for sub in point["subscribers"]:
        received = {i: lat for i, lat in zip(sub["frame_ids"], sub["latency_ms"])
                    if i in expected_set}
        missing = len(expected_set) - len(received)
        lost.append(missing)
        mine = list(received.values()) + [math.inf] * missing
        latencies.extend(mine)
        unreadable += sub["unreadable"]
        # Per subscriber, to see whether one subscriber process lagged the rest.
        per_subscriber.append({"name": sub["name"], "lost": missing,
                               "p50_ms": percentile(mine, 0.5),
                               "p95_ms": percentile(mine, 0.95)})
    out["frames_expected_per_subscriber"] = len(expected)
    out["frames_lost_per_subscriber"] = lost
    out["per_subscriber"] = per_subscriber
    out["frames_lost"] = sum(lost)
    out["frames_unreadable"] = unreadable
    out["glass_to_glass_ms"] = {f"p{q}": percentile(latencies, q / 100) for q in (50, 95, 99)}
    out["forwarding_ms"] = None
    if point["system"] == "goldenhour":
        video = [s for s in point.get("sfu_stats", []) if s.get("kind") == "video"]
        if video:
            fwd = video[0]["forwarding_ms"]
            out["forwarding_ms"] = {"p50": fwd["p50"], "p99": fwd["p99"], "n": fwd["n"]}
    out["cpu"] = point["cpu"]
    out["server_cpu_cores"] = point["cpu"]["server_cores"]
    out["publisher"] = point["publisher"]
    out["late_joiner_first_frame_s"] = point.get("late_joiner_first_frame_s")
    out["stream_age_at_late_join_s"] = point.get("stream_age_at_late_join_s")
    out["subscribers_ready_s"] = point.get("subscribers_ready_s")
    out["server_peak_rss_mb"] = point.get("server_peak_rss_mb")
    out["window_s"] = round(point["window"]["seconds"], 2)
    load_warnings = _load_warnings(out, settings)
    out["warnings"] = list(point["warnings"]) + load_warnings
    #: The machine or the load generator, not the system, set this point's figures.
    out["load_bound"] = bool(load_warnings) or bool(point.get("aborted"))
    return out


def _load_warnings(out: dict, settings: Settings) -> list[str]:
    """Say where the machine or the load generator, not the system under test, set a figure.

    Only conditions that bias the figures count; others go in the point's notes.
    """
    warnings = []
    cpu = out["cpu"]
    if cpu["system_busy_cores"] >= SATURATED_BUSY_SHARE * cpu["machine_cores"]:
        warnings.append(f"machine saturated ({cpu['system_busy_cores']:.2f} of "
                        f"{cpu['machine_cores']} cores busy): latency, loss and server CPU "
                        "include contention; the load generator is a bottleneck here")
    for k, cores in enumerate(cpu["subscriber_proc_cores"]):
        if cores is not None and cores >= PROCESS_BOUND_CORES:
            warnings.append(f"subscriber process {k} used {cores:.2f} core: its decoding "
                            "is core/GIL bound and adds latency of its own")
    if cpu["publisher_cores"] is not None and cpu["publisher_cores"] >= PROCESS_BOUND_CORES:
        warnings.append(f"publisher used {cpu['publisher_cores']:.2f} core (encoder bound)")
    fps = out["publisher"]["fps"]
    if fps < 0.97 * settings.fps:
        warnings.append(f"publisher produced {fps:.1f} fps, not {settings.fps}")
    kbps = out["publisher"]["payload_kbps"]
    if abs(kbps * 1000 - settings.bitrate_bps) > 0.2 * settings.bitrate_bps:
        warnings.append(f"publisher sent {kbps / 1000:.2f} Mbit/s of payload, "
                        f"target {settings.bitrate_bps / 1e6:.2f}")
    if cpu["other_cores"] >= 0.2:
        # Contention from others biases the point when it is short of CPU.
        (warnings if warnings else out.setdefault("notes", [])).append(
            f"processes not started by this benchmark used {cpu['other_cores']:.2f} cores "
            "during the window")
    if out["frames_unreadable"]:
        out.setdefault("notes", []).append(
            f"{out['frames_unreadable']} decoded frames had an unreadable code")
    return warnings


def compare(rows: list[dict]) -> dict:
    """Added-over-direct latency and marginal CPU per subscriber, per system."""
    directs = [r for r in rows if r["system"] == "direct" and "error" not in r]
    for row in rows:
        row["added_over_direct_ms"] = None
        if not directs or "error" in row or row["system"] == "direct":
            continue
        # The reference measured next to this N, else the nearest one.
        direct = min(directs, key=lambda d: abs(d["n"] - row["n"]))
        row["added_over_direct_ms"] = {
            q: (None if row["glass_to_glass_ms"][q] is None
                or direct["glass_to_glass_ms"][q] is None
                else row["glass_to_glass_ms"][q] - direct["glass_to_glass_ms"][q])
            for q in ("p50", "p95", "p99")}
    marginal: dict = {}
    for system in ("goldenhour", "relay"):
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
    for system in ("goldenhour", "relay"):
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
    header = ["N", "system", "fwd p50/p99 ms", "g2g p50/p95/p99 ms", "+direct p50/p95",
              "lost", "srv CPU", "+CPU/sub", "late join", "pub fps/Mbps", "CPU gen/other/all"]
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
        fwd = r["forwarding_ms"]
        g = r["glass_to_glass_ms"]
        added = r["added_over_direct_ms"]
        marginal = r.get("marginal_cpu_pct_per_subscriber")
        late = r["late_joiner_first_frame_s"]
        cpu = r["cpu"]
        generator = (cpu["publisher_cores"] or 0) + sum(c or 0 for c in
                                                       cpu["subscriber_proc_cores"])
        lines.append([
            str(r["n"]), system,
            "n/a" if fwd is None else f"{_ms(fwd['p50'])}/{_ms(fwd['p99'])}",
            f"{_ms(g['p50'])}/{_ms(g['p95'])}/{_ms(g['p99'])}",
            "ref" if r["system"] == "direct" else
            ("n/a" if added is None else f"{_ms(added['p50'], True)}/{_ms(added['p95'], True)}"),
            f"{r['frames_lost']}/{r['frames_expected_per_subscriber'] * r['subscribers']}",
            "n/a" if r["server_cpu_cores"] is None else f"{100 * r['server_cpu_cores']:.1f}%",
            "-" if marginal is None else f"{marginal:.2f}%",
            "n/a" if r["system"] == "direct" else
            ("never" if late is None else f"{late:.2f} s"),
            f"{r['publisher']['fps']:.1f}/{r['publisher']['payload_kbps'] / 1000:.2f}",
            f"{generator:.2f}/{cpu['other_cores']:.2f}/{cpu['system_busy_cores']:.2f}",
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
    "late_joiner_first_frame_s": ("late joiner: join to first frame", "s", "<="),
    "frames_lost": ("frames lost (every frame delivered)", "frames", "="),
}


def goals_table(verdicts: list[dict]) -> str:
    systems = [s for s in ("goldenhour", "relay") if any(v["system"] == s for v in verdicts)]
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
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated, from {', '.join(SYSTEMS)}")
    parser.add_argument("--quick", action="store_true",
                        help="development run: a few seconds per point, N = 1,4")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of streaming before each window (default 3; 1 quick)")
    parser.add_argument("--drain", type=float, default=2.0,
                        help="seconds to wait for the window's last frames; a frame not "
                             "decoded by then counts as lost")
    parser.add_argument("--bitrate", type=float, default=2.5e6, help="publisher VP8 bit/s")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--subscriber-procs", type=int, default=None,
                        help="most subscriber processes, subscribers spread over them "
                             "(default: as many as cores, at least 4)")
    parser.add_argument("--relay-unbuffered", action="store_true",
                        help="baseline with MediaRelay(buffered=False) (drops instead of queues)")
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
        args.subscriber_procs = max(4, psutil.cpu_count() or 1)
    if args.subscribers is None:
        args.subscribers = "1,4" if args.quick else "1,4,16"
    args.n_values = sorted({int(v) for v in args.subscribers.split(",") if v.strip()})
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.system_list) - set(SYSTEMS)
    if unknown or not args.n_values or min(args.n_values) < 1:
        parser.error(f"bad --systems {sorted(unknown)} or --subscribers {args.subscribers!r}")
    return args


async def run(args: argparse.Namespace) -> dict:
    settings = Settings(seconds=args.seconds, warmup_s=args.warmup, drain_s=args.drain,
                        bitrate_bps=int(args.bitrate), width=args.width, height=args.height,
                        fps=args.fps, subscriber_procs=args.subscriber_procs,
                        relay_unbuffered=args.relay_unbuffered,
                        max_server_rss_mb=args.max_server_rss_mb, late_join_timeout_s=10.0)
    # A direct call is measured next to every N (the machine's other load
    # drifts), and each system's "added over direct" uses the one of its N.
    plan = [(system, n) for n in args.n_values for system in SYSTEMS
            if system in args.system_list]
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
    terms = [
        ("fwd", "RTP packet in to last copy out inside the SFU (its /api/stats); n/a where "
                "the server has no such counter."),
        ("g2g", "decoded at the subscriber minus the capture time painted into the frame, "
                "pooled over all subscribers; a frame captured in the window and not decoded "
                f"{s['drain_s']:g} s after it ends counts as lost and ranks last ('lost')."),
        ("+direct", "g2g percentile minus the same percentile of the direct call measured "
                    "next to this N (a difference of percentiles, not a percentile of "
                    "differences)."),
        ("lost", "frames missing at subscribers / frames expected (all subscribers)."),
        ("srv CPU", "server process CPU seconds per second (100% = one core)."),
        ("+CPU/sub", "server CPU slope from the previous N, per added subscriber."),
        ("late join", "a new subscriber joining after the stream has run "
                      f"{s['warmup_s'] + s['seconds'] + s['drain_s']:g} s: join to first "
                      "readable frame."),
        ("pub", "the publisher's frame rate and VP8 payload bitrate in the window."),
        ("CPU", "cores used by the load generator (publisher + subscribers) / by processes "
                "this benchmark did not start / by everything on the machine."),
    ]
    lines = []
    for term, text in terms:
        lines += textwrap.wrap(text, 100, initial_indent=f"{term:>9}: ",
                               subsequent_indent=" " * 11)
    return lines


def report(result: dict, settings: dict) -> str:
    rows = result["rows"]
    s = settings
    text = [
        f"SFU benchmark: one {s['width']}x{s['height']} {s['fps']} fps VP8 publisher at "
        f"{s['bitrate_bps'] / 1e6:.2f} Mbit/s, {s['seconds']:g} s per point after "
        f"{s['warmup_s']:g} s warm-up, {result['machine']['cores']} cores",
        "",
        table(rows),
        "",
        *_legend(s),
        "",
        goals_table(result["verdicts"]),
    ]
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
