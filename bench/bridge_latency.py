"""Headset bridge latency: what the bridge adds between a headset frame received and its
first RTP packet sent, passing the headset's H.264 through against decoding and re-encoding it.

    python bench/bridge_latency.py              # 15 s per run, 1280x720 and 640x360, pass/transcode/pass
    python bench/bridge_latency.py --quick      # 5 s per run, 1280x720 only
    python bench/bridge_latency.py --seconds 30 --sizes 1280x720 --order pass,transcode,pass,transcode

Three processes, so that the bridge's CPU is its own: a GoldenHour server
(`python -m server.cli serve`, loopback only), the "world" (this file with
--world: a SimulatedHeadset serving hl2ss's wire format, and once the bridge
is published an expert subscriber whose receiver is tapped, so it counts the
frames the SFU forwards without decoding them), and this process, which runs
only the bridge: Hl2ssHeadset -> Bridge publishing into a room of its own.

The figure is the bridge's own `added_latency_ms`: per frame, from the last
byte of the headset's PV packet read by the bridge to the first RTP packet of
that frame handed to aiortc's transport. The baseline, in the same run, is the
same bridge with `transcode=True`: the H.264 is decoded and aiortc re-encodes
it (libx264 with aiortc's settings: preset medium, tune zerolatency, 1 Mbit/s
at first, then what the server's REMB allows up to 3 Mbit/s). Runs alternate (pass-through first and last by
default) so that drift of the machine shows as a difference between the
pass-through runs, which the report prints.

The headset keeps still (no walk): its picture is rendered once and cached, so
the headset's cost per frame is its libx264 encode (a few ms) and rendering
(tens of ms per new pose) does not compete for the cores. Each run waits for
the spatial map to be stored on the server (85k triangles, uploaded once)
and then warms up before its window. The microphone flows too (Opus in both
modes).

Runs that the machine rather than the bridge may have set (all cores busy,
the bridge process bound by one core, frames dropped) are starred and say why.
The figures include whatever else the machine runs: the load average is in
the JSON.

Prints a table and writes bench/results/bridge-latency-<time>.json and
-latest.json. A benchmark, not a test: exit status 1 only when a run broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sfu import REPLY_PREFIX, Child, free_port, http_get_json

RESULTS_DIR = REPO / "bench" / "results"
MODES = ("pass", "transcode")
MODE_LABELS = {"pass": "pass-through", "transcode": "decode/re-encode"}
#: The headset's H.264 bitrate by frame height (hl2ss's default is 2.5 Mbit/s at 720p).
BITRATE_BPS = {720: 2_500_000, 360: 1_000_000}
#: Two pass-through runs whose p50 differ by more than this share: the machine drifted.
DRIFT_SHARE = 0.25
#: Above this share of all cores busy, the machine (not the bridge) sets the figures.
SATURATED_BUSY_SHARE = 0.85
#: A bridge process using this much of one core is bound by its core (or its GIL).
PROCESS_BOUND_CORES = 0.90

log = logging.getLogger("bench.bridge_latency")


# --- the world process: a simulated headset and an expert watching --------------

class World:
    """The headset the bridge reads and the expert it publishes to (child process)."""

    def __init__(self) -> None:
        from clients.hololens_bridge.simulated_headset import SimulatedHeadset
        self.headset = SimulatedHeadset()
        self.expert = None
        self.rtp_packets = 0
        self.rtp_frames = 0
        self._last_timestamp: int | None = None

    async def handle(self, cmd: dict) -> dict:
        if cmd["op"] == "start":
            await self.headset.start()
            return {"ports": self.headset.ports, "triangles": len(self.headset.scene.triangles)}
        if cmd["op"] == "expert":
            return await self._watch(cmd["url"], cmd["room"])
        if cmd["op"] == "mark":
            times = psutil.Process().cpu_times()
            return {"rtp_packets": self.rtp_packets, "rtp_frames": self.rtp_frames,
                    "pv_frames_sent": self.headset.stats.pv_frames_sent,
                    "cpu_s": times.user + times.system}
        raise ValueError(f"unknown op {cmd['op']!r}")

    async def _watch(self, url: str, room: str) -> dict:
        """Join as an expert, so that the SFU forwards, and count what arrives undecoded:
        a decoder here would take a core's share from the machine the bridge runs on."""
        from clients.sdk.client import GoldenHourClient
        from server.sfu import aiortc_seams
        started = time.monotonic()
        self.expert = GoldenHourClient(url, room, "expert", "Bench expert")
        await self.expert.connect()
        remote = await self.expert.wait_for_track("video", 20)

        async def on_packet(packet) -> None:
            self.rtp_packets += 1
            if packet.timestamp != self._last_timestamp:
                self._last_timestamp = packet.timestamp
                self.rtp_frames += 1

        aiortc_seams.tap_receiver(remote.receiver, on_packet)
        await self.expert.wait_until(lambda: self.rtp_frames > 0, 20)
        return {"ready_s": round(time.monotonic() - started, 2)}

    async def close(self) -> None:
        if self.expert is not None:
            await self.expert.close()
        await self.headset.stop()


def reply(message: dict) -> None:
    sys.stdout.write(REPLY_PREFIX + json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def serve_world(args: argparse.Namespace) -> None:
    from server.sfu import aiortc_seams
    aiortc_seams.use_loopback_ice(True, only=True)
    world = World()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    reply({"ready": True})
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["op"] == "stop":
                return
            try:
                reply(await world.handle(cmd))
            except Exception as exc:  # the orchestrator decides what a failure means
                log.exception("command %s failed", cmd.get("op"))
                reply({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        await asyncio.wait_for(world.close(), 10)


# --- the bench process: the bridge, measured ----------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": percentile(values, 0.5), "p90_ms": percentile(values, 0.9),
            "p99_ms": percentile(values, 0.99), "max_ms": max(values),
            "mean_ms": statistics.fmean(values)}


def headset_bitrate_bps(width: int, height: int) -> int:
    return BITRATE_BPS.get(height, int(2_500_000 * width * height / (1280 * 720)))


def system_busy_s() -> float:
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


def process_cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def run_one(mode: str, width: int, height: int, fps: int, index: int, server: Child,
                  ws_url: str, args: argparse.Namespace, log_dir: Path) -> dict:
    """One bridge in one mode for one window; the raw figures of that run."""
    from clients.hololens_bridge import hl2ss_wire as wire
    from clients.hololens_bridge.bridge import Bridge
    from clients.hololens_bridge.headset import Hl2ssHeadset

    tag = f"{index:02d}-{mode}-{width}x{height}"
    run: dict = {"mode": mode, "width": width, "height": height, "fps": fps, "index": index}
    world = Child("world", [sys.executable, str(Path(__file__).resolve()), "--world"],
                  log_dir / f"{tag}-world.log", control=True)
    bridge: Bridge | None = None
    setup_started = time.monotonic()
    try:
        await world.start()
        started = await world.call({"op": "start"})
        bitrate = headset_bitrate_bps(width, height)
        source = Hl2ssHeadset("127.0.0.1", started["ports"],
                              pv=wire.PvConfig(width, height, fps, bitrate=bitrate), map_interval_s=2.0)
        room = f"bridge-{tag}"
        bridge = Bridge(source, ws_url, room, "Bench headset", transcode=(mode == "transcode"))
        await bridge.start()
        await asyncio.wait_for(bridge.connected.wait(), 30)
        run["expert_ready_s"] = (await world.call({"op": "expert", "url": ws_url, "room": room}))["ready_s"]
        # The first map upload is 85 requests of a thousand triangles each: not in the window.
        deadline = time.monotonic() + 60
        while sum(bridge.map_triangles_stored.values()) < started["triangles"]:
            if time.monotonic() > deadline:
                raise TimeoutError("the spatial map was not stored within 60 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(args.warmup)
        run["setup_s"] = round(time.monotonic() - setup_started, 1)

        # --- the window ---------------------------------------------------------
        me, server_ps = psutil.Process(), server.ps
        assert bridge.video is not None and server_ps is not None and world.ps is not None
        video, sessions = bridge.video, bridge.sessions
        world0 = await world.call({"op": "mark"})
        t0, busy0 = time.monotonic(), system_busy_s()
        cpu0 = (process_cpu_s(me), process_cpu_s(server_ps))
        n0, received0 = len(bridge.added_latency_ms), bridge.frames_received
        pushed0, dropped0 = video.frames_pushed, video.frames_dropped
        load0 = os.getloadavg()
        await asyncio.sleep(args.seconds)
        n1, received1 = len(bridge.added_latency_ms), bridge.frames_received
        pushed1, dropped1 = video.frames_pushed, video.frames_dropped
        cpu1 = (process_cpu_s(me), process_cpu_s(server_ps))
        t1, busy1 = time.monotonic(), system_busy_s()
        world1 = await world.call({"op": "mark"})
        if bridge.sessions != sessions or bridge.video is not video:
            raise RuntimeError("the bridge reconnected during the window")
        if n1 < n0 + 1 or n1 > 10_000:  # the bridge trims its list past 10,000 entries
            raise RuntimeError(f"no usable latency entries in the window ({n0} -> {n1})")
        wall = t1 - t0
        latencies = bridge.added_latency_ms[n0:n1]
        run.update({
            "window_s": round(wall, 2),
            "latency": summary(latencies),
            "_raw": latencies,  # pooled per mode by the report, then dropped
            "frames": {"headset_sent": world1["pv_frames_sent"] - world0["pv_frames_sent"],
                       "bridge_received": received1 - received0,
                       "pushed_to_sender": pushed1 - pushed0,
                       "dropped_by_bridge": dropped1 - dropped0,
                       "rtp_sent": n1 - n0,
                       "expert_received": world1["rtp_frames"] - world0["rtp_frames"]},
            "cpu_cores": {"bridge_process": (cpu1[0] - cpu0[0]) / wall,
                          "server": (cpu1[1] - cpu0[1]) / wall,
                          "world": (world1["cpu_s"] - world0["cpu_s"]) / wall,
                          "machine_busy_share": (busy1 - busy0) / wall / (os.cpu_count() or 1)},
            "load_average_1m": [load0[0], os.getloadavg()[0]],
        })
        run["warnings"] = load_warnings(run)
    except Exception as exc:  # noqa: BLE001 - a broken run is reported, the others still run
        run["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        # The bridge leaves first, then the expert and the headset go: no reconnect storms.
        if bridge is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bridge.stop(), 20)
        await world.stop()
    return run


def load_warnings(run: dict) -> list[str]:
    """What, besides the bridge's own work, may have set this run's figures."""
    cpu, frames, warnings = run["cpu_cores"], run["frames"], []
    if cpu["machine_busy_share"] >= SATURATED_BUSY_SHARE:
        warnings.append(f"machine {cpu['machine_busy_share']:.0%} busy: queueing for a core is in the figures")
    if cpu["bridge_process"] >= PROCESS_BOUND_CORES:
        warnings.append(f"bridge process at {cpu['bridge_process']:.2f} cores: bound by its core or GIL")
    if frames["dropped_by_bridge"]:
        warnings.append(f"{frames['dropped_by_bridge']} frames dropped by the bridge's queue "
                        "(then every frame to the next keyframe): the sender could not keep up")
    return warnings


def pooled(runs: list[dict], mode: str, width: int, height: int) -> list[float]:
    """Every frame's latency of the runs in one mode and size."""
    return [v for r in runs if r["mode"] == mode and (r["width"], r["height"]) == (width, height)
            and "_raw" in r for v in r["_raw"]]


async def bench(args: argparse.Namespace, sizes: list[tuple[int, int]], order: list[str]) -> dict:
    from server.sfu import aiortc_seams
    aiortc_seams.use_loopback_ice(True, only=True)
    log_dir = Path(tempfile.mkdtemp(prefix="bridge-latency-"))
    port = free_port()
    server = Child("server", [sys.executable, "-m", "server.cli", "--log-level", "WARNING", "serve",
                              "--no-tls", "--no-demo-crew", "--loopback-only", "--port", str(port)],
                   log_dir / "server.log", control=False)
    runs: list[dict] = []
    load_before = os.getloadavg()
    try:
        await server.start()
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, ValueError):
                await http_get_json(f"http://127.0.0.1:{port}/healthz", timeout_s=1.0)
                break
            if not server.alive or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start (see {log_dir / 'server.log'})")
            await asyncio.sleep(0.1)
        index = 0
        for width, height in sizes:
            for mode in order:
                index += 1
                print(f"  run {index}: {MODE_LABELS[mode]} {width}x{height} ...", flush=True)
                run = await run_one(mode, width, height, args.fps, index, server,
                                    f"ws://127.0.0.1:{port}/ws", args, log_dir)
                runs.append(run)
                if "error" in run:
                    print(f"    failed: {run['error']} (logs in {log_dir})", flush=True)
    finally:
        await server.stop()
    return {"runs": runs, "log_dir": str(log_dir), "load_average_before": list(load_before)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s per run, 1280x720 only")
    parser.add_argument("--seconds", type=float, default=None, help="window per run (default 15, quick 5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds after the map is stored")
    parser.add_argument("--sizes", default=None, help="default 1280x720,640x360 (quick: 1280x720)")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--order", default="pass,transcode,pass",
                        help="modes in the order they run, per size")
    parser.add_argument("--world", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"[{'world' if args.world else 'bridge'} %(process)d] "
                               "%(levelname)s %(name)s: %(message)s")
    if args.world:
        asyncio.run(serve_world(args))
        return 0
    args.seconds = args.seconds or (5.0 if args.quick else 15.0)
    sizes = [tuple(int(v) for v in s.split("x"))
             for s in (args.sizes or ("1280x720" if args.quick else "1280x720,640x360")).split(",")]
    order = args.order.split(",")
    if set(order) - set(MODES) or not set(MODES) <= set(order):
        parser.error(f"--order must name both of {', '.join(MODES)}")

    outcome = asyncio.run(bench(args, sizes, order))  # type: ignore[arg-type]
    runs = outcome["runs"]
    cores = os.cpu_count()

    print(f"\nbridge added latency: headset packet received -> first RTP packet sent "
          f"(loopback, {cores} cores, {args.seconds:.0f} s per run)\n")
    header = (f"{'run':4s}{'mode':18s}{'size':>10s}{'frames':>8s}{'in':>6s}{'drop':>6s}"
              f"{'p50 ms':>8s}{'p90 ms':>8s}{'p99 ms':>8s}{'max ms':>8s}{'bridge':>8s}{'busy':>6s}")
    print(header)
    for r in runs:
        size = f"{r['width']}x{r['height']}"
        if "error" in r:
            print(f"{r['index']:<4d}{MODE_LABELS[r['mode']]:18s}{size:>10s}  failed: {r['error']}")
            continue
        lat, fr, cpu = r["latency"], r["frames"], r["cpu_cores"]
        print(f"{r['index']:<4d}{MODE_LABELS[r['mode']]:18s}{size:>10s}{fr['rtp_sent']:8d}"
              f"{fr['bridge_received']:6d}{fr['dropped_by_bridge']:6d}{lat['p50_ms']:8.2f}"
              f"{lat['p90_ms']:8.2f}{lat['p99_ms']:8.2f}{lat['max_ms']:8.2f}"
              f"{cpu['bridge_process'] * 100:7.0f}%{cpu['machine_busy_share'] * 100:5.0f}%"
              f"{'  *' if r['warnings'] else ''}")

    comparisons = []
    print(f"\n{'size':10s}{'mode (runs pooled)':22s}{'n':>6s}{'p50 ms':>8s}{'p90 ms':>8s}"
          f"{'p99 ms':>8s}{'max ms':>8s}{'x pass p50':>11s}{'x p99':>7s}")
    for width, height in sizes:
        both = {mode: summary(pooled(runs, mode, width, height)) for mode in MODES}
        if not all(both[m]["n"] for m in MODES):
            continue
        base = both["pass"]
        comparison = {"width": width, "height": height, **{m: both[m] for m in MODES},
                      "ratio_p50": both["transcode"]["p50_ms"] / base["p50_ms"],
                      "ratio_p99": both["transcode"]["p99_ms"] / base["p99_ms"]}
        passes = [r["latency"]["p50_ms"] for r in runs if r["mode"] == "pass" and "error" not in r
                  and (r["width"], r["height"]) == (width, height)]
        comparison["pass_p50_per_run_ms"] = passes
        comparison["drifted"] = len(passes) > 1 and (max(passes) - min(passes)) > DRIFT_SHARE * min(passes)
        comparisons.append(comparison)
        for mode in MODES:
            s = both[mode]
            ratios = (f"{s['p50_ms'] / base['p50_ms']:11.1f}{s['p99_ms'] / base['p99_ms']:7.1f}")
            print(f"{f'{width}x{height}':10s}{MODE_LABELS[mode]:22s}{s['n']:6d}{s['p50_ms']:8.2f}"
                  f"{s['p90_ms']:8.2f}{s['p99_ms']:8.2f}{s['max_ms']:8.2f}{ratios}")
        if comparison["drifted"]:
            print(f"  drift: pass-through p50 per run {', '.join(f'{p:.2f}' for p in passes)} ms")

    flagged = [r for r in runs if r.get("warnings")]
    if flagged:
        print()
    for r in flagged:
        print(f"* run {r['index']}: {'; '.join(r['warnings'])}")
    print("\nframes: RTP frames sent in the window; in: PV frames the bridge read; drop: dropped "
          "by the bridge's queue.\nbridge: this process's CPU (bridge only; headset and expert "
          "run in another process), % of one core;\nbusy: the whole machine, % of all cores.")
    for r in runs:
        r.pop("_raw", None)
    report = {"benchmark": "bridge_latency", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "machine": {"cpus": cores, "python": platform.python_version(),
                          "load_average_before": outcome["load_average_before"],
                          "load_average_after": list(os.getloadavg())},
              "settings": {"seconds": args.seconds, "warmup_s": args.warmup, "fps": args.fps,
                           "sizes": [f"{w}x{h}" for w, h in sizes], "order": order,
                           "headset_bitrate_bps": {f"{w}x{h}": headset_bitrate_bps(w, h)
                                                      for w, h in sizes}},
              "measures": "Bridge.added_latency_ms: headset PV packet's last byte read -> first "
                          "RTP packet of that frame handed to aiortc's transport",
              "runs": runs, "comparisons": comparisons, "logs": outcome["log_dir"]}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"bridge-latency-{stamp}.json", "bridge-latency-latest.json"):
        (RESULTS_DIR / name).write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS_DIR / f'bridge-latency-{stamp}.json'}")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
