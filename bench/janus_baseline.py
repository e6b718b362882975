"""Janus (videoroom) as a C SFU baseline for bench/sfu.py, in the same run.

Named janus_baseline because PyPI has a `janus` (asyncio queues) that a
dependency may install.

The issue's bar is Janus measured on this machine; measuring it with our own
load generator, next to GoldenHour, makes the comparison one of like with
like. Debian's `janus` package (1.1.2) is used as installed; nothing here
downloads anything. Where `janus` is not installed, bench/sfu.py leaves the
system out and says so.

Janus never offers a loopback ICE candidate (libnice skips loopback
interfaces), so the benchmark, already alone in a network namespace of its
own, adds a veth pair there with JANUS_ADDRESS; the Janus peers use that
address and nothing else. A packet to a local address takes the same path
through the kernel as one to 127.0.0.1 (the local routing table sends both
over the loopback device), so the kernel's cost per copy is the same as for
the other servers.

The client speaks Janus's HTTP API (janus.conf.meetecho.com/docs/rest):
one session per process, a long poll for its events, a videoroom handle per
publisher or subscriber.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import socket
import string
import subprocess
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("bench.janus")

#: The address Janus and its peers use (a veth end in the benchmark's namespace).
JANUS_ADDRESS = "10.77.0.1"
INTERFACE = "ghbench0"
ROOM = 1234
#: Debian's multiarch directory for Janus's plugins and transports.
PLUGIN_DIR = next(Path("/usr/lib").glob("*/janus/plugins"), Path("/usr/lib/janus/plugins")).parent

_DISABLED_PLUGINS = ("audiobridge", "duktape", "echotest", "lua", "nosip", "recordplay", "sip",
                     "streaming", "textroom", "videocall", "voicemail")
_DISABLED_TRANSPORTS = ("mqtt", "nanomsg", "pfunix", "rabbitmq", "websockets")


def unusable_because() -> str | None:
    """Why Janus cannot be measured here, or None if it can."""
    if shutil.which("janus") is None or not (PLUGIN_DIR / "plugins").is_dir():
        return "Janus is not installed (apt-get install janus)"
    others = {name for _, name in socket.if_nameindex()} - {"lo", INTERFACE, INTERFACE + "p"}
    if others:
        # Never add an interface to a network with interfaces of its own
        # (the machine's): only to a namespace made for the benchmark.
        return ("Janus needs a network namespace of the benchmark's own: run it as root "
                "under `unshare -n sh -c 'ip link set lo up && ...'` (make bench does)")
    return None


def prepare_network() -> None:
    """Give this network namespace an interface Janus will gather on (idempotent).

    Needs CAP_NET_ADMIN in the namespace: bench/sfu.py runs under `unshare -n`."""
    reason = unusable_because()
    if reason is not None:
        raise RuntimeError(reason)
    shown = subprocess.run(["ip", "-o", "addr", "show", "dev", INTERFACE],
                           capture_output=True, text=True, check=False)
    if JANUS_ADDRESS in shown.stdout:
        return
    for argv in (["ip", "link", "add", INTERFACE, "type", "veth", "peer", "name", INTERFACE + "p"],
                 ["ip", "addr", "add", f"{JANUS_ADDRESS}/32", "dev", INTERFACE],
                 ["ip", "link", "set", INTERFACE + "p", "up"],
                 ["ip", "link", "set", INTERFACE, "up"]):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"janus: `{' '.join(argv)}` failed ({done.stderr.strip()}); run the "
                               "benchmark as root inside `unshare -n` (see bench/sfu.py)")


def remove_network() -> None:
    """Take prepare_network's interfaces away again (deleting one end of a
    veth pair deletes both); nothing if there are none."""
    subprocess.run(["ip", "link", "del", INTERFACE], capture_output=True, check=False)


def write_config(folder: Path, http_port: int, event_loops: int | None = None) -> Path:
    """Janus's configuration for the benchmark: the videoroom plugin and the
    HTTP transport on loopback, ICE on INTERFACE only. Returns janus.jcfg.

    `event_loops` (default: one per core, Janus's advice for many handles):
    by default Janus gives every handle a thread of its own, and each copy of
    a packet is handed from the publisher's thread to the subscriber's. At
    N=16 on this 2-core machine that cost 26.6% of a core against 15.7%
    with two shared loops and 14.8% with one (10 s runs, 2026-11-26 21:15,
    the same within their noise): the baseline is Janus as advised for many
    handles, not at its default."""
    if event_loops is None:
        event_loops = os.cpu_count() or 1
    folder.mkdir(parents=True, exist_ok=True)
    plugins = ",".join(f"libjanus_{name}.so" for name in _DISABLED_PLUGINS)
    transports = ",".join(f"libjanus_{name}.so" for name in _DISABLED_TRANSPORTS)
    (folder / "janus.jcfg").write_text(f"""general: {{
	configs_folder = "{folder}"
	plugins_folder = "{PLUGIN_DIR / 'plugins'}"
	transports_folder = "{PLUGIN_DIR / 'transports'}"
	events_folder = "{PLUGIN_DIR / 'events'}"
	loggers_folder = "{PLUGIN_DIR / 'loggers'}"
	debug_level = 3
	session_timeout = 120
	event_loops = {event_loops}
}}
media: {{
	rtp_port_range = "20000-40000"
}}
nat: {{
	ice_enforce_list = "{INTERFACE}"
	ignore_mdns = true
}}
plugins: {{
	disable = "{plugins}"
}}
transports: {{
	disable = "{transports}"
}}
events: {{
	broadcast = false
}}
""")
    (folder / "janus.transport.http.jcfg").write_text(f"""general: {{
	json = "compact"
	base_path = "/janus"
	http = true
	port = {http_port}
	ip = "127.0.0.1"
	https = false
}}
admin: {{
	admin_http = false
}}
""")
    # One publisher, no bitrate cap from the room (the publisher is pinned
    # anyway), no periodic keyframe requests: as GoldenHour runs.
    (folder / "janus.plugin.videoroom.jcfg").write_text(f"""general: {{
}}
room-{ROOM}: {{
	description = "GoldenHour bench"
	publishers = 1
	bitrate = 0
	fir_freq = 0
	videocodec = "vp8"
	audiocodec = "opus"
}}
""")
    return folder / "janus.jcfg"


def _transaction() -> str:
    return "".join(random.choices(string.ascii_letters, k=12))


def _http(url: str, body: dict | None, timeout_s: float) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def _in_thread(call: Callable[..., dict], *args: object) -> asyncio.Future[dict]:
    """Run a blocking HTTP call in a daemon thread of its own.

    Each session's long poll blocks for up to 30 s and Janus does not end it
    when the session is destroyed: in a pool (asyncio's has 6 threads here)
    16 subscribers' polls starved each other's requests, and the pool's
    threads are joined at exit, which held every process 8 s at teardown."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[dict] = loop.create_future()

    def run() -> None:
        try:
            result = call(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=run, name="janus-http", daemon=True).start()
    return future


def _settle(future: asyncio.Future[dict], result: dict | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class JanusError(RuntimeError):
    pass


class JanusSession:
    """One Janus session over HTTP: requests, and a long poll for the events
    that answer the asynchronous ones (matched on their transaction)."""

    def __init__(self, url: str) -> None:
        self._url = url.rstrip("/")
        self._session_url = ""
        self._waiting: dict[str, asyncio.Future[dict]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self) -> None:
        created = await self._post(self._url, {"janus": "create"})
        self._session_url = f"{self._url}/{created['data']['id']}"
        self._poller = asyncio.create_task(self._poll())

    async def attach(self) -> int:
        attached = await self._post(self._session_url,
                                    {"janus": "attach", "plugin": "janus.plugin.videoroom"})
        return attached["data"]["id"]

    async def request(self, handle: int, body: dict) -> dict:
        """A synchronous videoroom request (listparticipants): its plugin data."""
        reply = await self._post(f"{self._session_url}/{handle}", {"janus": "message", "body": body})
        return reply["plugindata"]["data"]

    async def message(self, handle: int, body: dict, jsep: dict | None = None,
                      timeout_s: float = 20.0) -> dict:
        """An asynchronous videoroom request: the event that answers it."""
        transaction = _transaction()
        answered = self._waiting[transaction] = asyncio.get_running_loop().create_future()
        message = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            message["jsep"] = jsep
        try:
            await self._post(f"{self._session_url}/{handle}", message, transaction)
            event = await asyncio.wait_for(answered, timeout_s)
        finally:
            self._waiting.pop(transaction, None)
        data = event.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"janus: {body.get('request')}: {data['error']}")
        return event

    async def _post(self, url: str, body: dict, transaction: str | None = None) -> dict:
        body = {**body, "transaction": transaction or _transaction()}
        reply = await _in_thread(_http, url, body, 10.0)
        if reply.get("janus") == "error":
            raise JanusError(f"janus: {body['janus']}: {reply['error']}")
        return reply

    async def _poll(self) -> None:
        while not self._closed:
            try:
                events = await _in_thread(_http, f"{self._session_url}?maxev=10", None, 40.0)
            except Exception:
                # A refused connection, a garbled reply: poll again, or the
                # requests waiting on their events would all time out.
                if self._closed:
                    return
                log.warning("janus: long poll failed", exc_info=True)
                await asyncio.sleep(0.1)
                continue
            for event in events if isinstance(events, list) else [events]:
                waiting = self._waiting.get(event.get("transaction", ""))
                if waiting is not None and not waiting.done() and event.get("janus") == "event":
                    waiting.set_result(event)

    async def close(self) -> None:
        self._closed = True
        if self._session_url:
            try:
                await self._post(self._session_url, {"janus": "destroy"})
            except (OSError, JanusError):
                pass
        if self._poller is not None:
            self._poller.cancel()
