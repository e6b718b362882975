"""Annotation round trip: an expert's pointer-up in a real Chromium page to the anchored
annotation back on that page, on loopback.

    python bench/annotation_roundtrip.py             # 200 strokes and 200 points
    python bench/annotation_roundtrip.py --quick     # 15 of each
    python bench/annotation_roundtrip.py --samples 60

Why 200: a p99 is only as good as the samples behind it. Of 60 (the count
until 2026-11-26 13:15) it is the second-largest value, so one stalled sample
decides it; of 200 it is the third-largest. The table also counts the samples
over the goal.

A GoldenHour server (`goldenhour serve`, in a process of its own as deployed,
on loopback), a simulated crew inside the synthetic ambulance in another
(`goldenhour crew --simulate --no-walk`, its spatial map sent, 85k triangles)
and a headless Chromium expert page. (Until 2026-11-26 11:40 the server ran
in this process, where Playwright's client shared its GIL.) The page draws by synthesized pointer events; the figure
is the page's own clock from the pointer-up that ends a drawing to the
anchored `annotation` reply (telestration.js records it). As the baseline, the
same page times a `ping` → `pong` over the same WebSocket in the same run,
once after the drawings (the ratio column) and once right after each drawing
(the same load as the drawings'): what anchoring adds to the bare signaling
round trip. Last, a Python expert client sends the same point annotations and
pings: the server and the network without the browser. The run also reports
the CPU (in cores) the server, the crew and the browser used while the page
drew: on 2 cores it is close to all of them.

Where the time goes: the page records the wall-clock ends of each round trip
and the server logs when it finished anchoring and how long that took
('annotation anchored'); joined on the annotation id, that splits each round
trip into page to server, server, and server back to the page's handler (one
clock, the machine's; to about a millisecond).

Prints a table and writes bench/results/annotation-roundtrip-<time>.json and
-latest.json. Goal (issue 4): p99 < 50 ms. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vision.synthetic import ambulance_scene  # noqa: E402
from tests.browser.conftest import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402
from server.sfu import aiortc_seams  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


GOAL_P99_MS = 50.0


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": percentile(values, 0.5), "p90_ms": percentile(values, 0.9),
            "p99_ms": percentile(values, 0.99), "max_ms": max(values), "mean_ms": statistics.fmean(values),
            "over_goal": sum(v >= GOAL_P99_MS for v in values)}


def cpu_seconds(server_pid: int, crew_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server, the crew, the browser's processes
    and the bench itself (this process and Playwright's driver)."""
    import psutil
    me = psutil.Process()
    out = {"server": 0.0, "crew": 0.0, "browser": 0.0, "bench": sum(me.cpu_times()[:2])}
    for process in me.children(recursive=True):
        try:
            name = process.name()
            used = sum(process.cpu_times()[:2])
        except psutil.Error:
            continue
        if process.pid == server_pid:
            out["server"] = used
        elif process.pid == crew_pid:
            out["crew"] = used
        elif "chrom" in name:
            out["browser"] += used
        else:
            out["bench"] += used
    return out


def browser_thread_seconds() -> dict[str, float]:
    """CPU seconds so far of every Chromium thread, by "process type/thread name"
    (from /proc): where the browser's share goes."""
    import psutil
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for process in psutil.Process().children(recursive=True):
        try:
            if "chrom" not in process.name():
                continue
            kind = next((a.split("=", 1)[1] for a in process.cmdline() if a.startswith("--type=")),
                        "browser")
            tasks = Path(f"/proc/{process.pid}/task")
            for task in tasks.iterdir():
                stat = (task / "stat").read_text()
                name = stat[stat.index("(") + 1:stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2:].split()
                key = f"{kind}/{name}"
                out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        except (psutil.Error, OSError, ValueError):
            continue
    return out


class ServerProcess:
    """`goldenhour serve` on a free loopback port, in a process of its own. Its
    JSON log (stderr) gives the 'annotation anchored' records: id -> (logged
    at, server ms, kind); the log's clock has 1 ms steps."""

    def __init__(self) -> None:
        import socket
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws"
        self.records: dict[str, tuple[float, float, str]] = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "--log-level", "INFO", "serve", "--no-tls",
             "--no-demo-crew", "--loopback-only", "--port", str(port)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") == "annotation anchored":
                self.records[entry["annotation"]] = (
                    entry["ts"], entry["server_ms"], entry["kind"], entry["pose_wait_ms"], entry["anchor_ms"])

    def get(self, path: str) -> object:
        import urllib.request
        with urllib.request.urlopen(self.http + path, timeout=5) as reply:
            return json.loads(reply.read())

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.time() + timeout_s
        while True:
            try:
                self.get("/healthz")
                return
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise SystemExit("the GoldenHour server did not start")
                time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def legs(ends: list[dict], anchored: dict[str, tuple[float, float, str, float, float]]) -> dict[str, dict]:
    """Per annotation kind, p50/p99 of page -> server, server, server -> page (ms),
    and of the server's part: waiting for the frame's pose, anchoring."""
    out: dict[str, dict[str, list[float]]] = {}
    for end in ends:
        found = anchored.get(end["annotation_id"])
        if found is None:
            continue
        logged_s, server_ms, kind, pose_wait_ms, anchor_ms = found
        started_ms = logged_s * 1e3 - server_ms
        split = out.setdefault(kind, {"to_server": [], "server": [], "to_page": [],
                                      "pose_wait": [], "anchoring": []})
        split["to_server"].append(started_ms - end["sent_ms"])
        split["server"].append(server_ms)
        split["pose_wait"].append(pose_wait_ms)
        split["anchoring"].append(anchor_ms)
        split["to_page"].append(end["replied_ms"] - logged_s * 1e3)
    return {kind: {leg: {"p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99)}
                   for leg, v in split.items()} for kind, split in out.items()}


class Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


async def python_client(url: str, n: int) -> tuple[dict, dict]:
    """Annotate points and ping from an aiortc expert client, one request at a time."""
    from clients.sdk.client import GoldenHourClient
    client = GoldenHourClient(url, "bench", "expert", "Bench (Python)")
    await client.connect()
    try:
        await client.wait_until(lambda: any(m.get("type") == "pose" for m in client.data_messages), 20)
        annotate, ping = [], []
        for i in range(n):
            pose = [m for m in client.data_messages if m.get("type") == "pose"][-1]
            started = time.perf_counter()
            await client.request({"type": "annotate", "producer_id": pose["producer_id"],
                                  "rtp_timestamp": pose["rtp_timestamp"], "kind": "point",
                                  "points": [[0.5, 0.5]]})
            annotate.append((time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            await client.request({"type": "ping"})
            ping.append((time.perf_counter() - started) * 1e3)
            if (i + 1) % 20 == 0:
                await client.request({"type": "annotation_clear"})
            await asyncio.sleep(0.2)  # an expert's pace, not a flood
        return summary(annotate), summary(ping)
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=200,
                        help="drawings of each kind (default 200: see the module's docstring)")
    parser.add_argument("--crew-nice", type=int, default=19,
                        help="niceness of the simulated crew process (default 19: lowest priority)")
    parser.add_argument("--trace", type=Path, default=None,
                        help="write a Chrome trace of the point drawings to this file")
    args = parser.parse_args()
    n = 15 if args.quick else args.samples
    from playwright.sync_api import sync_playwright

    # The server's JSON log says, per annotation, how long it waited for the
    # frame's pose and how long anchoring took: where the round trip goes.
    server = ServerProcess()
    server.wait_healthy()
    loop = Loop()
    aiortc_seams.use_loopback_ice(True, only=True)  # the Python client's candidates
    # The crew runs in a process of its own, as a headset would: in the server's
    # process its VP8 encoder and renderer would compete for the GIL. On a real
    # call it runs on the headset, not next to the server and the browser: at
    # the lowest priority (nice 19) it uses only the CPU those two leave, instead
    # of half a core of VP8 encoding that competes with them (--crew-nice 0 for
    # the old arrangement).
    crew = subprocess.Popen(["nice", "-n", str(args.crew_nice),
                             sys.executable, "-m", "server.cli", "--log-level", "WARNING", "crew",
                             "--simulate", "--no-walk", "--url", server.ws, "--room", "bench",
                             "--name", "Bench crew", "--loopback-only"], cwd=REPO)
    scene_triangles = len(ambulance_scene(0).triangles)

    def map_complete() -> bool:
        rooms = [r for r in server.get("/api/rooms") if r["room"] == "bench"]
        crews = [p for p in rooms[0]["peers"] if p["role"] == "crew"] if rooms else []
        return bool(crews) and crews[0]["spatial_map_triangles"] >= scene_triangles

    deadline = time.time() + 120
    while not map_complete():
        if time.time() > deadline or crew.poll() is not None:
            raise SystemExit("the simulated crew did not publish its spatial map in 120 s")
        time.sleep(0.2)
    results: dict[str, dict] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                 args=CHROMIUM_FLAGS)
            context = browser.new_context(permissions=["camera", "microphone"],
                                          viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{server.http}/app/viewer.html?room=bench&role=expert&name=Bench")
            page.wait_for_function(
                "() => window.goldenhour?.telestration?.lastProjection?.poseFrameId != null")
            box = page.evaluate("""() => {  // the picture inside the video element
                const v = document.getElementById('video');
                const c = v.getBoundingClientRect();
                const s = Math.min(v.clientWidth / v.videoWidth, v.clientHeight / v.videoHeight);
                const w = v.videoWidth * s, h = v.videoHeight * s;
                return {x: c.left + (v.clientWidth - w) / 2, y: c.top + (v.clientHeight - h) / 2, w, h};
            }""")
            rng = np.random.default_rng(5)

            def draw(tool: str, count: int) -> list[float]:
                page.click(f"button[data-tool={tool}]")
                before = page.evaluate("() => window.goldenhour.telestration.roundTrips.length")
                for i in range(count):
                    x = box["x"] + box["w"] * rng.uniform(0.35, 0.65)
                    y = box["y"] + box["h"] * rng.uniform(0.35, 0.6)
                    page.mouse.move(x, y)
                    page.mouse.down()
                    if tool == "pen":  # a 40-sample freehand stroke
                        for k in range(40):
                            page.mouse.move(x + 3 * k, y + 8 * np.sin(k / 5))
                    page.mouse.up()
                    # Polled every 50 ms, not on every animation frame (Playwright's
                    # default): the figure is the page's own clock, and a per-frame
                    # poll only adds to the browser's load.
                    page.wait_for_function("""(n) => {
                        const t = window.goldenhour.telestration;
                        if (t.errors.length) throw new Error(t.errors.join('; '));
                        return t.roundTrips.length > n;
                    }""", arg=before + i, polling=50)
                    # A ping from the page right after each drawing: the bare
                    # signaling round trip under the same load.
                    pings_while_drawing.append(page.evaluate("""async () => {
                        const t = performance.now();
                        await window.goldenhour.request({type: 'ping'});
                        return performance.now() - t;
                    }"""))
                    if (i + 1) % 20 == 0:  # keep the room under its 500-annotation cap
                        page.evaluate("() => window.goldenhour.telestration.clearMine()")
                return page.evaluate("(n) => window.goldenhour.telestration.roundTrips.slice(n)", before)

            pings_while_drawing: list[float] = []
            draw("point", 3)  # warm-up: first anchoring pays for lazy builds
            warm = page.evaluate("() => window.goldenhour.telestration.roundTripEnds.length")
            pings_while_drawing.clear()
            cpu_before, wall_before = cpu_seconds(server.proc.pid, crew.pid), time.perf_counter()
            threads_before = browser_thread_seconds()
            if args.trace:
                browser.start_tracing(page=page, categories=[
                    "devtools.timeline", "v8.gc", "toplevel", "blink", "cc", "viz", "media",
                    "disabled-by-default-devtools.timeline", "v8"])
            results["point"] = summary(draw("point", n))
            if args.trace:
                args.trace.write_bytes(browser.stop_tracing())
            results["stroke_40"] = summary(draw("pen", n))
            wall = time.perf_counter() - wall_before
            cpu_after = cpu_seconds(server.proc.pid, crew.pid)
            threads_after = browser_thread_seconds()
            busiest = sorted(((threads_after[k] - threads_before.get(k, 0.0)) / wall, k)
                             for k in threads_after)[::-1][:8]
            results["browser_threads_while_drawing"] = {k: share for share, k in busiest}
            # Share of one core each used while the page drew (the machine has os.cpu_count()).
            results["cpu_share_while_drawing"] = {
                name: (cpu_after[name] - cpu_before[name]) / wall for name in cpu_after}
            pings = page.evaluate("""async (n) => {
                const out = [];
                for (let i = 0; i < n; i++) {
                    const t = performance.now();
                    await window.goldenhour.request({type: 'ping'});
                    out.push(performance.now() - t);
                }
                return out;
            }""", n)
            results["ping_baseline"] = summary(pings)
            ends = page.evaluate("(n) => window.goldenhour.telestration.roundTripEnds.slice(n)", warm)
            results["legs"] = legs(ends, server.records)
            results["ping_while_drawing"] = summary(pings_while_drawing)
            # Collector pauses stop the whole server: were there long ones?
            results["server_gc"] = server.get("/healthz")["gc"]
            browser.close()
        # The same requests from a Python client (no browser): the server and the
        # network alone, to tell their share from the page's.
        results["python_point"], results["python_ping"] = loop.run(python_client(server.ws, n), 120)
    finally:
        crew.terminate()
        crew.wait(10)
        server.close()

    print(f"\nannotation round trip: pointer-up to anchored annotation on the same page "
          f"(loopback, {os.cpu_count()} cores)\n")
    print(f"{'':28s}{'n':>5s}{'p50 ms':>9s}{'p90 ms':>9s}{'p99 ms':>9s}{'max ms':>9s}{'p50/ping':>10s}"
          f"{'>= 50 ms':>10s}")
    base = results["ping_baseline"]["p50_ms"]
    for label, key in [("point", "point"), ("freehand stroke (40 samples)", "stroke_40"),
                       ("baseline: ping/pong", "ping_baseline"),
                       ("ping/pong between drawings", "ping_while_drawing"),
                       ("point, Python client", "python_point"),
                       ("ping/pong, Python client", "python_ping")]:
        r = results[key]
        r["ratio_to_ping_p50"] = r["p50_ms"] / base if base else None
        print(f"{label:28s}{r['n']:5d}{r['p50_ms']:9.1f}{r['p90_ms']:9.1f}{r['p99_ms']:9.1f}"
              f"{r['max_ms']:9.1f}{r['ratio_to_ping_p50']:10.1f}{r['over_goal']:10d}")
    goal_met = all(results[k]["p99_ms"] < GOAL_P99_MS for k in ("point", "stroke_40"))
    print("\nwhere it goes, p50 / p99 ms: page to server (the page's send, the network, the "
          "server's loop) | server | server to the page's handler | the server's part: waiting for the "
          "frame's pose, anchoring")
    for kind, split in results["legs"].items():
        print(f"  {kind:8s}" + " | ".join(
            f"{leg} {v['p50_ms']:.1f} / {v['p99_ms']:.1f}" for leg, v in split.items()))
    shares = results["cpu_share_while_drawing"]
    print("\nCPU while the page drew, in cores: " + ", ".join(
        f"{name} {share:.2f}" for name, share in shares.items())
        + f" (crew at nice {args.crew_nice})")
    print("  the browser's busiest threads: " + ", ".join(
        f"{name} {share:.2f}" for name, share in results["browser_threads_while_drawing"].items()))
    gc_state = results["server_gc"]
    print("the server's garbage collector since it started: " + ", ".join(
        f"{gen} {gc_state[gen]['collections']} collections (longest recent "
        f"{gc_state[gen]['recent_max_ms']} ms)" for gen in ("gen1", "gen2")))
    print(f"\ngoal p99 < 50 ms (the page): {'met' if goal_met else 'NOT met'}. The Python client's "
          "rows are the server and network alone; the rest is the browser's (the server's own share "
          "is in its log: 'annotation anchored' with pose_wait_ms, anchor_ms and server_ms)")
    report = {"benchmark": "annotation_roundtrip", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "crew_nice": args.crew_nice,
              "results": results, "goal_p99_ms": GOAL_P99_MS, "goal_met": goal_met}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"annotation-roundtrip-{stamp}.json", "annotation-roundtrip-latest.json"):
        (RESULTS_DIR / name).write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS_DIR / f'annotation-roundtrip-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
