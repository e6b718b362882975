"""The server keeps its start-up heap out of the garbage collector's way and
reports the collector's pauses (server/gc_pauses.py)."""

from __future__ import annotations

import gc

import httpx
import pytest

from server.gc_pauses import GcPauses
from tests.conftest import loopback_config, start_server


@pytest.mark.asyncio
async def test_a_running_server_has_frozen_its_startup_heap_and_reports_pauses() -> None:
    gc.unfreeze()  # whatever an earlier test left frozen
    async with start_server(loopback_config()) as server:
        frozen = gc.get_freeze_count()
        async with httpx.AsyncClient() as http:
            before = (await http.get(f"{server.http}/healthz")).json()["gc"]
            gc.collect()
            after = (await http.get(f"{server.http}/healthz")).json()["gc"]
    # aiortc, numpy, open3d and the app: far more than a bare interpreter's heap.
    assert frozen > 50_000
    # Frozen objects can still be freed (by reference counting), never collected.
    assert 0.9 * frozen < before["frozen_objects"] <= frozen
    assert after["gen2"]["collections"] == before["gen2"]["collections"] + 1
    assert after["gen2"]["recent_max_ms"] is not None and after["gen2"]["recent_max_ms"] >= 0


def test_pauses_stop_being_recorded_once_removed() -> None:
    pauses = GcPauses()
    pauses.install()
    gc.collect(1)
    pauses.remove()
    gc.collect(1)
    assert pauses.counts[1] == 1 and len(pauses.recent[1]) == 1
    assert pauses._callback not in gc.callbacks
