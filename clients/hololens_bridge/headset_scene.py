"""The headset's holograms kept equal to the room's annotations, through hl2ss's Unity queue.

`HologramSync` remembers which headset objects (keys) draw which annotation.
Each `sync()` sends, in one display list (applied by the headset in one
rendered frame), exactly the difference between what the headset shows and
what the room holds: removals of what the room no longer has, creations of
what it newly has, and remove-then-create for anything that changed. After
the headset connection is (re)opened the first sync starts with `remove_all`,
so a restarted bridge never leaves orphans; after a server reconnect the
same annotation ids map to the same objects, so nothing is drawn twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import struct
from collections.abc import Callable, Iterable

import numpy as np

from clients.hololens_bridge import hl2ss_wire as wire
from clients.hololens_bridge.holograms import (Hologram, commands_for, holograms_for, image_bytes,
                                               panel_commands)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
#: A batch is applied within one rendered frame; seconds of silence mean a dead link.
REPLY_TIMEOUT_S = 5.0


class UnityQueue:
    """A connection to the headset's Unity message queue (hl2ss port 3816):
    messages go out back to back, one uint32 result per message comes back."""

    def __init__(self, host: str, port: int = wire.Port.UNITY_MESSAGE_QUEUE) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        #: True until the first batch after (re)connecting has been sent.
        self.fresh = True

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        # hl2ss's standalone app has no Unity queue; a firewall may drop the SYN: do not hang.
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_S)
        self.fresh = True

    async def send(self, commands: list[wire.Command]) -> list[int]:
        """Send messages and return their results, in order."""
        if not commands:
            return []
        async with self._lock:
            if not self.connected:
                await self.connect()
            assert self._reader is not None and self._writer is not None
            try:
                self._writer.write(b"".join(c.encode() for c in commands))
                await self._writer.drain()
                data = await asyncio.wait_for(self._reader.readexactly(4 * len(commands)),
                                              REPLY_TIMEOUT_S)
            except BaseException:
                # Half a batch may have been applied: the next connection starts clean.
                self._drop()
                raise
            return list(struct.unpack(f"<{len(commands)}I", data))

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self._writer = None


def fingerprint(annotation: dict) -> str:
    """What an annotation's holograms depend on (not when or how fast it was anchored)."""
    keys = ("kind", "color", "text", "client_ref", "author_name", "points_world_m",
            "measurements", "panel_width_m", "panel_height_m")
    content = {k: annotation.get(k) for k in keys}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode())
    digest.update(image_bytes(annotation))
    return digest.hexdigest()


class HologramSync:
    """Our annotation ids -> the headset's object keys, and the commands that
    make the headset match the room."""

    def __init__(self, queue: UnityQueue,
                 make_holograms: Callable[[dict, np.ndarray], list[Hologram]] = holograms_for) -> None:
        self.queue = queue
        self._make = make_holograms
        #: annotation id -> (fingerprint, the headset keys that draw it)
        self.shown: dict[str, tuple[str, list[int]]] = {}
        #: panel name -> headset key of its head-locked quad (AI results)
        self.panels: dict[str, int] = {}
        #: Called when a panel's batch had to clear the headset first.
        self.on_reset: Callable[[], None] | None = None
        self._lock = asyncio.Lock()
        self.batches_sent = 0

    async def sync(self, annotations: dict[str, dict], viewer_world_m: Iterable[float]) -> None:
        """Make the headset show exactly `annotations` (annotation id -> message).
        `shown` changes only once the headset has answered the whole batch; a
        failed batch drops the connection, and the next sync starts clean."""
        async with self._lock:
            viewer = np.asarray(list(viewer_world_m), dtype=np.float64)
            commands: list[wire.Command] = [wire.begin_display_list()]
            reset = self.queue.fresh or not self.queue.connected
            # A (re)opened headset connection: its objects may be from an earlier
            # bridge whose keys we do not know. Start clean.
            before = {} if reset else dict(self.shown)
            if reset:
                commands.append(wire.remove_all())
            after = dict(before)
            for aid in [a for a in before if a not in annotations]:
                commands.extend(wire.remove(key) for key in after.pop(aid)[1])
            groups: list[tuple[str, str, list[int]]] = []  # id, fingerprint, create indices
            for aid, annotation in annotations.items():
                fp = fingerprint(annotation)
                old = after.get(aid)
                if old is not None and old[0] == fp:
                    continue
                if old is not None:
                    commands.extend(wire.remove(key) for key in after.pop(aid)[1])
                creates = []
                for hologram in self._make(annotation, viewer):
                    creates.append(len(commands))
                    commands.extend(commands_for(hologram))
                groups.append((aid, fp, creates))
            if len(commands) == 1:
                return
            commands.append(wire.end_display_list())
            results = await self.queue.send(commands)
            self.queue.fresh = False
            self.batches_sent += 1
            if reset:
                self.panels.clear()
            for aid, fp, creates in groups:
                keys = [results[i] for i in creates]
                if any(key == 0 for key in keys):
                    log.warning("headset refused a hologram", extra={"annotation_id": aid})
                after[aid] = (fp, [k for k in keys if k != 0])
            self.shown = after

    async def show_panel(self, name: str, png: bytes) -> None:
        """Show (or refresh) a head-locked picture panel: an AI result for the crew."""
        async with self._lock:
            key = self.panels.get(name)
            if key is not None and self.queue.connected and not self.queue.fresh:
                await self.queue.send([wire.set_texture(key, png)])
                return
            commands = [wire.begin_display_list()]
            reset = self.queue.fresh or not self.queue.connected
            if reset:
                commands.append(wire.remove_all())
            first = len(commands)
            commands += panel_commands(png) + [wire.end_display_list()]
            results = await self.queue.send(commands)
            self.queue.fresh = False
            if reset:
                self.shown, self.panels = {}, {}
                if self.on_reset is not None:
                    self.on_reset()  # the annotations must be drawn again
            if results[first]:
                self.panels[name] = results[first]
