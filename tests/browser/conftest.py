"""Worlds for the real-browser tests: a GoldenHour server, simulated crews and
aiortc peers on an event loop in a background thread, and Debian's headless
Chromium driven through Playwright's sync API from the test's own thread.

The tests are plain sync functions: sync Playwright refuses to run inside a
running event loop, and the rest of the suite's pytest-asyncio loops are never
running while a sync test runs. Run them where only loopback exists
(scripts/test.sh does: `unshare -n`), or Chromium may pair its LAN address with
the server's 127.0.0.1 (docs: /work/shared/notes/machine-facts.md).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest

from clients.hololens_bridge.scene_crew import SceneCrew
from clients.hololens_bridge.simulated import SimulatedCrew
from clients.sdk.client import GoldenHourClient
from tests.conftest import RunningServer, start_server, loopback_config

T = TypeVar("T")

CHROMIUM = Path(os.environ.get("GOLDENHOUR_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # Chromium gathers 127.0.0.1 only with this flag (and media permission).
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
#: Budget for one page to join, connect and show its first frames (ms). A
#: session takes about 1.5 s here; the rest is headroom for a loaded 2-core box.
PAGE_TIMEOUT_MS = 15_000

_room_numbers = itertools.count(1)


class LoopThread:
    """An asyncio event loop running in a daemon thread, driven from sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="goldenhour-loop", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        """Run a coroutine on the loop and wait for its result here."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        async def cancel_stragglers() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_stragglers())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def live_server(loop_thread: LoopThread) -> Iterator[RunningServer]:
    """One GoldenHour server for the session; each test uses rooms of its own."""
    context = start_server(loopback_config())
    running = loop_thread.run(context.__aenter__())
    yield running
    loop_thread.run(context.__aexit__(None, None, None), timeout=30)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def room() -> str:
    """A fresh room name; a crew creates it by joining with `create: true`."""
    return f"browser-{os.getpid()}-{next(_room_numbers)}"


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


class PageOpener:
    """Opens viewer pages, each in a browser context of its own (like separate
    devices), with camera and microphone granted: Chromium offers loopback ICE
    candidates only to a page holding that permission."""

    def __init__(self, browser: Any, server: RunningServer) -> None:
        self._browser = browser
        self._server = server
        self._contexts: list[Any] = []
        self.console: list[str] = []

    def __call__(self, room: str, role: str, name: str | None = None,
                 codec: str | None = None, tablet: bool = False) -> Any:
        """The viewer page, joining `room` as `role` as soon as it loads; `tablet`
        opens it on a 1024x768 touch screen."""
        query = {"room": room, "role": role, "name": name or f"{role} page"}
        if codec:
            query["codec"] = codec
        return self.blank(f"/app/viewer.html?{urlencode(query)}", label=role, tablet=tablet)

    def blank(self, path: str, label: str = "page", tablet: bool = False) -> Any:
        """Any page of the server, e.g. one to import a module into."""
        screen = ({"viewport": {"width": 1024, "height": 768}, "has_touch": True, "is_mobile": True}
                  if tablet else {"viewport": {"width": 1280, "height": 800}})
        context = self._browser.new_context(permissions=["camera", "microphone"], **screen)
        self._contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.on("console", lambda msg: self.console.append(f"[{label}] {msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: self.console.append(f"[{label}] pageerror: {exc}"))
        page.goto(f"{self._server.http}{path}")
        return page

    def close(self) -> None:
        for context in self._contexts:
            context.close()
        self._contexts.clear()


@pytest.fixture
def open_page(chromium: Any, live_server: RunningServer) -> Iterator[PageOpener]:
    opener = PageOpener(chromium, live_server)
    yield opener
    opener.close()


class LoopPeers:
    """Simulated crews and aiortc clients started on the loop thread by one test,
    closed when it ends."""

    def __init__(self, loop_thread: LoopThread, server: RunningServer) -> None:
        self._loop = loop_thread
        self._server = server
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return self._loop.run(coroutine, timeout)

    def crew(self, room: str, video_codec: str | None = None, ultrasound=None) -> SimulatedCrew:
        """A simulated headset publishing into `room` (created if need be), with
        an ultrasound probe as a second video track if one is given."""
        client = GoldenHourClient(self._server.ws, room, "crew", "Simulated crew", create=True)
        # 640x360 keeps aiortc's encoder light on a shared 2-core machine;
        # the frame code's blocks are then 8 px, still far above codec blur.
        crew = SimulatedCrew(client, width=640, height=360, fps=30, video_codec=video_codec,
                             ultrasound=ultrasound)
        self._closers.append(crew.stop)
        self.run(crew.start())
        return crew

    def scene_crew(self, room: str) -> SceneCrew:
        """A simulated headset inside the synthetic ambulance (camera renders the
        scene, spatial map sent), publishing into `room`."""
        client = GoldenHourClient(self._server.ws, room, "crew", "Scene crew", create=True)
        crew = SceneCrew(client, width=640, height=360, fps=30)
        self._closers.append(crew.stop)
        self.run(crew.start(), timeout=60)
        return crew

    def client(self, room: str, role: str, name: str) -> GoldenHourClient:
        """A Python peer, joined to `room`."""
        client = GoldenHourClient(self._server.ws, room, role, name)
        self._closers.append(client.close)
        self.run(client.connect())
        return client

    def close(self) -> None:
        for close in reversed(self._closers):
            self.run(close())
        self._closers.clear()


@pytest.fixture
def loop_peers(loop_thread: LoopThread, live_server: RunningServer) -> Iterator[LoopPeers]:
    peers = LoopPeers(loop_thread, live_server)
    yield peers
    peers.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On failure, add the pages' console output to the report."""
    outcome = yield
    report = outcome.get_result()
    opener = item.funcargs.get("open_page") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(opener, PageOpener) and opener.console:
        report.sections.append(("browser console", "\n".join(opener.console[-200:])))
