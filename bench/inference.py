"""Inference benchmark: the shipped models as the server runs them, against a
naive baseline in the same run.

    .venv/bin/python bench/inference.py [--seconds 10] [--quick]

GoldenHour: sessions with options for a small machine (server/inference/
registry.py), inference on its own thread, live frames latest-wins. Baseline:
onnxruntime's default session options, inference called on the event loop.

Measures, for the ultrasound model: latency per frame (preprocess, model,
contours) p50/p99, frames dropped under a 30 fps input, and event-loop stall
(the longest time a 1 ms ticker could not run); for the head-CT model: time
per slice, and per slice in a 32-slice series. Prints a table and writes
bench/results/inference-latest.json (and a timestamped copy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.phantoms import head_ct, ultrasound
from server.inference.gating import CtSlice
from server.inference.preprocess import ultrasound_tensor
from server.inference.registry import DEFAULT_MODELS_DIR, LoadedModel, ModelRegistry
from server.inference.runtime import (
    InferenceRuntime,
    LatestFrameRunner,
    LiveFrame,
    head_ct_now,
    ultrasound_now,
)

GOALS = {"us_p99_ms": 15.0, "ct_ms_per_slice": 40.0, "stall_ms": 10.0}


def naive(model: LoadedModel) -> LoadedModel:
    """The same model in a session with onnxruntime's default options."""
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    return LoadedModel(model.card, model.path, session)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class StallMeter:
    """A task that asks to wake every millisecond and records how late it woke:
    the longest lateness is the longest time the event loop could not run."""

    def __init__(self) -> None:
        self.worst_s = 0.0
        self.lates: list[float] = []
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            late = time.perf_counter() - before - 0.001
            self.lates.append(late)
            self.worst_s = max(self.worst_s, late)


def us_frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(4242)
    return [ultrasound.generate(rng, 256).image for _ in range(n)]


def latency_ms(fn, frames: list, repeat: int = 1) -> list[float]:
    out = []
    for _ in range(repeat):
        for frame in frames:
            started = time.perf_counter()
            fn(frame)
            out.append((time.perf_counter() - started) * 1000)
    return out


async def live_30fps(model: LoadedModel, frames: list[np.ndarray], seconds: float,
                     on_loop: bool) -> dict:
    """Feed frames at 30 fps for `seconds`; run them GoldenHour's way (thread,
    latest wins) or the naive way (on the loop, every frame in turn)."""
    runtime = InferenceRuntime()
    stall = StallMeter()
    latencies: list[float] = []
    done = 0

    def on_result(result, frame: LiveFrame) -> None:
        nonlocal done
        done += 1
        latencies.append((time.perf_counter() - frame.received_at) * 1000)

    runner = LatestFrameRunner(runtime, model, on_result, {"source": "bench"})
    runner.start()
    stall.start()
    interval = 1 / 30
    start = time.perf_counter()
    n = int(seconds * 30)
    late_frames = 0
    for i in range(n):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -interval:
            late_frames += 1  # the loop could not even take this frame on time
        frame = LiveFrame(frames[i % len(frames)], i * 3000, time.perf_counter())
        if on_loop:
            ultrasound_now(model, frame.grey, {"source": "bench"})
            on_result(None, frame)
        else:
            runner.submit(frame)
    await asyncio.sleep(0.2)
    await stall.stop()
    await runner.stop()
    runtime.close()
    dropped = runner.dropped if not on_loop else late_frames
    return {"frames_in": n, "frames_done": done, "frames_dropped": dropped,
            "latency_p50_ms": percentile(latencies, 0.5), "latency_p99_ms":
            percentile(latencies, 0.99), "stall_max_ms": stall.worst_s * 1000,
            "stall_p99_ms": percentile(stall.lates, 0.99) * 1000}


def ct_slices(n: int) -> list[CtSlice]:
    rng = np.random.default_rng(4343)
    out = []
    for _ in range(n):
        case = head_ct.generate(rng)
        out.append(CtSlice(case.hu, (case.pixel_spacing_mm,) * 2, {"source": "bench"}))
    return out


def ct_timing(model: LoadedModel, slices: list[CtSlice], repeat: int) -> dict:
    single = []
    for _ in range(repeat):
        for s in slices[:16]:
            started = time.perf_counter()
            head_ct_now(model, [s])
            single.append((time.perf_counter() - started) * 1000)
    series = []
    for _ in range(max(1, repeat)):
        started = time.perf_counter()
        head_ct_now(model, slices[:32])
        series.append((time.perf_counter() - started) * 1000)
    return {"slice_p50_ms": percentile(single, 0.5), "slice_p99_ms": percentile(single, 0.99),
            "series32_ms": statistics.median(series),
            "series32_ms_per_slice": statistics.median(series) / 32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="live run length")
    parser.add_argument("--quick", action="store_true", help="3 s live runs, fewer repeats")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    repeat = 1 if args.quick else 3
    registry = ModelRegistry.load(DEFAULT_MODELS_DIR)
    fast, ct = registry.get("fast_free_fluid"), registry.get("head_ct_ich")
    assert fast is not None and ct is not None, registry.problems
    frames = us_frames(60)
    slices = ct_slices(32)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "onnxruntime": ort.__version__,
                                 "load_avg_at_start": os.getloadavg()},
                     "goals": GOALS}
    for label, model in (("goldenhour", fast), ("baseline", naive(fast))):
        def one(frame: np.ndarray, m: LoadedModel = model) -> None:
            ultrasound_now(m, frame, {})
        latency_ms(one, frames[:10])  # warm up
        lat = latency_ms(one, frames, repeat)
        model_only = latency_ms(lambda f, m=model: m.run(
            ultrasound_tensor(f, m.card.preprocessing)[None]), frames, repeat)
        live = asyncio.run(live_30fps(model, frames, seconds, on_loop=(label == "baseline")))
        results[f"us_{label}"] = {"frame_p50_ms": percentile(lat, 0.5),
                                  "frame_p99_ms": percentile(lat, 0.99),
                                  "model_only_p50_ms": percentile(model_only, 0.5),
                                  "live_30fps": live}
    for label, model in (("goldenhour", ct), ("baseline", naive(ct))):
        head_ct_now(model, slices[:2])  # warm up
        results[f"ct_{label}"] = ct_timing(model, slices, repeat)
    results["load_avg_at_end"] = os.getloadavg()
    _report(results)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    (out / f"inference-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text)
    (out / "inference-latest.json").write_text(text)


def _report(r: dict) -> None:
    g, b = r["us_goldenhour"], r["us_baseline"]
    cg, cb = r["ct_goldenhour"], r["ct_baseline"]

    def ratio(a: float, c: float) -> str:
        return f"{c / a:5.2f}x" if a > 0 else "  n/a"

    rows = [
        ("US frame p50 (ms)", g["frame_p50_ms"], b["frame_p50_ms"]),
        ("US frame p99 (ms)", g["frame_p99_ms"], b["frame_p99_ms"]),
        ("US model only p50 (ms)", g["model_only_p50_ms"], b["model_only_p50_ms"]),
        ("US live p50 frame->result (ms)", g["live_30fps"]["latency_p50_ms"],
         b["live_30fps"]["latency_p50_ms"]),
        ("US live p99 frame->result (ms)", g["live_30fps"]["latency_p99_ms"],
         b["live_30fps"]["latency_p99_ms"]),
        ("US frames dropped / in at 30 fps", g["live_30fps"]["frames_dropped"],
         b["live_30fps"]["frames_dropped"]),
        ("event-loop stall max (ms)", g["live_30fps"]["stall_max_ms"],
         b["live_30fps"]["stall_max_ms"]),
        ("event-loop stall p99 (ms)", g["live_30fps"]["stall_p99_ms"],
         b["live_30fps"]["stall_p99_ms"]),
        ("CT one slice p50 (ms)", cg["slice_p50_ms"], cb["slice_p50_ms"]),
        ("CT one slice p99 (ms)", cg["slice_p99_ms"], cb["slice_p99_ms"]),
        ("CT 32-slice series (ms)", cg["series32_ms"], cb["series32_ms"]),
        ("CT per slice in a series (ms)", cg["series32_ms_per_slice"],
         cb["series32_ms_per_slice"]),
    ]
    print(f"{'':34} {'GoldenHour':>11} {'baseline':>11} {'baseline/GH':>11}")
    for name, a, c in rows:
        print(f"{name:34} {a:11.2f} {c:11.2f} {ratio(a, c):>11}")
    print(f"(frames in per live run: {g['live_30fps']['frames_in']}; baseline 'dropped' = frames "
          f"the blocked loop took over a frame late)")
    print(f"goals: US p99 <= {GOALS['us_p99_ms']} ms, CT <= {GOALS['ct_ms_per_slice']} ms/slice, "
          f"stall <= {GOALS['stall_ms']} ms; load average {r['machine']['load_avg_at_start']}")


if __name__ == "__main__":
    main()
