"""Keep Python's garbage collector from stopping the server for long.

The server's heap after start-up holds hundreds of thousands of long-lived
objects (aiortc, open3d, onnxruntime, numpy, the app). A full (generation 2)
collection walks all of them while the event loop waits: 115-184 ms on the
2-core bench machine, in the middle of forwarding media and answering
annotations (bench/annotation_roundtrip.py, 2026-11-26). Freezing that
start-up heap (`gc.freeze`, Python 3.7+) moves it out of the collector's
sight, so later full collections walk only what the server made since: 23 ms
there. Nothing frozen is ever freed, which is what start-up objects are for.

`GcPauses` records how long each collection of the older generations stopped
the process, for /healthz: an operator can tell a stall of the collector from
one of the network.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any


def freeze_startup_heap() -> int:
    """Collect once, then freeze what survives; returns the number of frozen objects."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauses:
    """Durations of the collector's pauses of generations 1 and 2, while installed."""

    def __init__(self, keep: int = 256) -> None:
        self._started = 0.0
        self.recent: dict[int, deque[float]] = {1: deque(maxlen=keep), 2: deque(maxlen=keep)}
        self.counts = {1: 0, 2: 0}

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        if generation:
            self.counts[generation] += 1
            self.recent[generation].append(time.perf_counter() - self._started)

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"frozen_objects": gc.get_freeze_count()}
        for generation, durations in self.recent.items():
            out[f"gen{generation}"] = {
                "collections": self.counts[generation],
                "recent_max_ms": round(max(durations) * 1e3, 2) if durations else None,
            }
        return out
