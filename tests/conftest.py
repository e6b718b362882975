"""Worlds that many tests share: a running server on loopback, crews, experts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import uvicorn

from server.app import create_app
from server.config import Config


@dataclass
class RunningServer:
    app: object
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


def loopback_config(**overrides: object) -> Config:
    """A server on loopback only: plain HTTP, ICE candidates on 127.0.0.1 alone."""
    values = dict(host="127.0.0.1", port=0, tls=False, ice_loopback_only=True,
                  demo_room="demo")
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    """A GoldenHour server in this test's event loop, on a free loopback port."""
    async with start_server(loopback_config()) as running:
        yield running


class start_server:
    def __init__(self, config: Config) -> None:
        self._config = config

    async def __aenter__(self) -> RunningServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        app = create_app(self._config)
        self._server = uvicorn.Server(uvicorn.Config(app, log_config=None, ws="websockets-sansio",
                                                     lifespan="on"))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        return RunningServer(app=app, port=sock.getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        await asyncio.wait_for(self._task, 20)
        self._sock.close()


# --- worlds: a crew streaming into a room, experts watching -------------------

from clients.hololens_bridge.simulated import SimulatedCrew  # noqa: E402
from clients.sdk import framecode  # noqa: E402
from clients.sdk.client import GoldenHourClient  # noqa: E402

#: Small enough for two cores, large enough for 8-pixel frame-code blocks.
TEST_WIDTH, TEST_HEIGHT = 640, 360


class World:
    """A running server and the clients a test made; closes them all at the end."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self._clients: list[GoldenHourClient] = []

    def client(self, role: str, name: str, room: str = "demo", **kwargs: object) -> GoldenHourClient:
        client = GoldenHourClient(self.server.ws, room, role, name, **kwargs)  # type: ignore
        self._clients.append(client)
        return client

    async def crew(self, room: str = "demo", name: str = "medic", width: int = TEST_WIDTH,
                   height: int = TEST_HEIGHT, **kwargs: object) -> SimulatedCrew:
        crew = SimulatedCrew(self.client("crew", name, room, create=True), width, height,
                             **kwargs)  # type: ignore[arg-type]
        await crew.start()
        return crew

    async def expert(self, name: str, room: str = "demo", **kwargs: object) -> GoldenHourClient:
        expert = self.client("expert", name, room, **kwargs)
        await expert.connect()
        return expert

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients), return_exceptions=True)


@pytest.fixture
async def world(server: RunningServer) -> AsyncIterator[World]:
    w = World(server)
    yield w
    await w.close()


async def read_frame_codes(track: object, count: int, timeout: float = 10.0,
                           ) -> list[framecode.FrameCode]:
    """Decode `count` video frames from a received track and read their codes."""
    codes = []
    async with asyncio.timeout(timeout):
        while len(codes) < count:
            codes.append(frame_code(await track.recv()))  # type: ignore[attr-defined]
    return codes


def frame_code(frame: object) -> framecode.FrameCode:
    """The code painted into a decoded video frame (which must carry one)."""
    code = framecode.read(frame.to_ndarray(format="gray"))  # type: ignore[attr-defined]
    assert code is not None, "a decoded frame carries no readable frame code"
    return code


@pytest.fixture(scope="module")
def scene():
    """The synthetic ambulance with its patient (seed 0), built once per test module."""
    from vision.synthetic import ambulance_scene
    return ambulance_scene(0)


@pytest.fixture(scope="module")
def exact_map(scene):
    """The scene's exact mesh as a spatial map, as a headset's would be."""
    from vision.spatial_map import SpatialMap
    spatial_map = SpatialMap()
    spatial_map.replace(scene.vertices_world_m, scene.triangles)
    return spatial_map.snapshot()
