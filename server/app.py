"""The HTTP/WebSocket application: health, signaling, the browser pages, stats."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

import server
from server.config import Config
from server.gc_pauses import GcPauses, freeze_startup_heap
from server.inference.live import LiveInference
from server.inference.registry import ModelRegistry
from server.rooms.room import RoomRegistry
from server.scheduling import use_realtime_priority
from server.sfu import aiortc_seams
from server.sfu.producer import BurstLog, forwarding_delays_s
from server.signaling.session import SignalingSession

WEB_ROOT = Path(__file__).resolve().parent.parent / "clients" / "tablet_web" / "static"


def _delay_summary(delays_s) -> dict:
    """Count, p50, p99 and mean of delays in seconds, in ms (nearest rank)."""
    values = np.asarray(delays_s, dtype=np.float64)
    n = len(values)
    if n == 0:
        return {"n": 0, "p50": None, "p99": None, "mean": None}
    ranks = [min(n - 1, int(0.50 * n)), min(n - 1, int(0.99 * n))]
    p50, p99 = np.partition(values, ranks)[ranks]
    return {"n": n, "p50": _ms(float(p50)), "p99": _ms(float(p99)), "mean": _ms(float(values.mean()))}


def _forwarding_summaries(bursts: tuple) -> tuple[dict, dict]:
    each, last = forwarding_delays_s(*bursts)
    return _delay_summary(each), _delay_summary(last)


#: How long a thread may keep the GIL while another waits for it. With Python's
#: 5 ms, the event loop (busy forwarding media) kept the anchoring thread waiting
#: 5 ms at a time: a 40-point stroke's server time was 28 ms p90 and up to 57 ms
#: on the 2-core bench machine; at 1 ms, 15 ms and 27 ms (bench/annotation_roundtrip.py).
GIL_SWITCH_INTERVAL_S = 0.001


def create_app(config: Config) -> Starlette:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    aiortc_seams.use_loopback_ice(config.ice_loopback or config.ice_loopback_only,
                                  only=config.ice_loopback_only)
    # Models load once, at start; a broken one is logged and skipped.
    inference = LiveInference(ModelRegistry.from_env())
    registry = RoomRegistry(config, inference)
    started = time.time()
    gc_pauses = GcPauses()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Everything loaded so far lives as long as the server: out of the
        # collector's way (server/gc_pauses.py).
        freeze_startup_heap()
        gc_pauses.install()
        # The lifespan runs on the event loop's thread: the one to schedule.
        app.state.scheduling = use_realtime_priority(config.realtime_priority,
                                                      asked=config.realtime_priority_asked)
        try:
            yield
        finally:
            gc_pauses.remove()
            # Close every peer connection, or shutdown (and test teardown) hangs.
            await registry.close()
            await inference.close()

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({
            "status": "ok", "version": server.__version__,
            "uptime_s": round(time.time() - started, 1),
            "rooms": len(registry.rooms),
            "peers": sum(len(r.peers) for r in registry.rooms),
            "gc": gc_pauses.summary(),
            "scheduling": dataclasses.asdict(request.app.state.scheduling),
        })

    async def rooms(request: Request) -> JSONResponse:
        return JSONResponse([{
            "room": r.name, "persistent": r.persistent,
            "peers": [{"peer_id": p.id, "name": p.name, "role": p.role}
                      # How much of its spatial map a crew has sent (anchoring needs it).
                      | ({"spatial_map_triangles": r.annotations.service.map_triangles(p.id)}
                         if p.role == "crew" else {})
                      for p in r.peers],
            "annotations": len(r.annotations.service.annotations),
            "guidance_requested": (msgspec.to_builtins(registry.guidance_requests[r.name])
                                   if r.name in registry.guidance_requests else None),
        } for r in registry.rooms])

    async def stats(request: Request) -> JSONResponse:
        """Media counters and forwarding delay per producer: from an RTP
        packet's arrival at the server's socket to each copy handed to the
        kernel (`forwarding_ms`), and to its last copy (`forwarding_last_copy_ms`);
        and how long a packet waited in the socket before the server read it
        (`socket_wait_ms`, part of both)."""
        out = []
        reset = request.query_params.get("reset") == "1"
        for room in registry.rooms:
            for entry in room.router.stats():
                producer = room.router.producer(entry["producer_id"])
                bursts = producer.sent_bursts.take(reset) if producer else BurstLog().take()
                entry["room"] = room.name
                # Hundreds of thousands of copies: summed up off the event loop.
                entry["forwarding_ms"], entry["forwarding_last_copy_ms"] = \
                    await asyncio.to_thread(_forwarding_summaries, bursts)
                entry["socket_wait_ms"] = _delay_summary(producer.socket_waits_s if producer else [])
                if reset and producer:
                    producer.socket_waits_s.clear()
                out.append(entry)
        return JSONResponse(out)

    async def models(request: Request) -> JSONResponse:
        """The models loaded at start (name, version, modality, the clinical-use
        flag, held-out figures) and the files that were skipped, with why."""
        loaded = inference.registry
        return JSONResponse({
            "models": [{"name": c.name, "version": c.version, "modality": c.modality,
                        "task": c.task, "not_for_clinical_use": c.not_for_clinical_use,
                        "evaluation": msgspec.to_builtins(c.evaluation)}
                       for c in (loaded.get(n).card for n in loaded.names)],
            "problems": [{"file": p.file, "reason": p.reason} for p in loaded.problems],
        })

    async def signaling(websocket: WebSocket) -> None:
        await SignalingSession(websocket, registry, config).run()

    async def index(request: Request) -> RedirectResponse:
        room = config.demo_room or ""
        return RedirectResponse(f"/app/viewer.html?room={room}")

    app = Starlette(routes=[
        Route("/", index),
        Route("/healthz", health),
        Route("/api/rooms", rooms),
        Route("/api/stats", stats),
        Route("/api/models", models),
        WebSocketRoute("/ws", signaling),
        Mount("/app", StaticFiles(directory=WEB_ROOT, html=True), name="app"),
    ], lifespan=lifespan)
    app.state.registry = registry
    app.state.inference = inference
    app.state.config = config
    return app


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
