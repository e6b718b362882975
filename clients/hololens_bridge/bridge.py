"""The headset bridge: a headset's streams in, a `crew` peer out, holograms back.

It reads the headset (hl2ss, the simulated headset, or a replay), publishes
to the server as a crew peer — the headset's own H.264 passed through, a pose
per frame keyed by the RTP timestamp it leaves with, the microphone, the
spatial map as map blocks — and keeps the headset's holograms equal to the
room's anchored annotations. If the server or the network drops, it
reconnects with backoff, republishes, re-sends the map, and the holograms are
reconciled with the server's current state (docs/hololens.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import numpy as np

from clients.hololens_bridge import hl2ss_wire as wire
from clients.hololens_bridge.bitrate import BitrateLadder
from clients.hololens_bridge.headset import MapUpdate
from clients.hololens_bridge.headset_scene import HologramSync, UnityQueue
from clients.hololens_bridge.holograms import overlay_panel_png
from clients.hololens_bridge.media import EncodedVideoTrack, PcmAudioTrack, TranscodingVideoTrack
from clients.sdk.client import GoldenHourClient, ServerError
from server.sfu import aiortc_seams
from vision.spatial_map import split_into_blocks

log = logging.getLogger(__name__)

#: Triangles per map block sent to the server (protocol limit: 4000 and 2000 vertices).
MAP_BLOCK_TRIANGLES = 1000
#: What the headset sends is measured over this window (seconds): a few
#: keyframes' worth at hl2ss's one a second.
SENDING_WINDOW_S = 3.0


class HeadsetSource(Protocol):
    """What the bridge reads: a live headset or a recording. A source that
    can change its video bitrate also has `video_bitrate_bps` and
    `reopen_video(bitrate_bps)`; the bridge then follows the server's
    bandwidth estimate (clients/hololens_bridge/bitrate.py)."""

    unity: UnityQueue | None

    def video(self) -> AsyncIterator[wire.PvFrame]: ...
    def audio(self) -> AsyncIterator[np.ndarray]: ...
    def spatial_map(self) -> AsyncIterator[MapUpdate]: ...


class Backoff:
    """Exponential backoff with jitter: 0.25 s, 0.5 s, ... up to `cap_s`."""

    def __init__(self, first_s: float = 0.25, cap_s: float = 8.0) -> None:
        self.first_s, self.cap_s = first_s, cap_s
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    async def wait(self) -> None:
        delay = min(self.cap_s, self.first_s * 2 ** self.attempt)
        self.attempt += 1
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    """Cancel tasks and wait until they are done, cancelling again any that
    swallowed it (asyncio.wait_for in Python 3.11 can lose a cancellation that
    races with its inner future completing)."""
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=1.0)


class Bridge:
    """One headset published into one room."""

    def __init__(self, source: HeadsetSource, url: str, room: str, name: str = "Headset",
                 *, ssl_context: ssl.SSLContext | None = None, create: bool = True,
                 ice_servers: list[dict] | None = None,
                 make_client: Callable[[], GoldenHourClient] | None = None,
                 transcode: bool = False) -> None:
        self.source = source
        #: Decode and re-encode the headset's video instead of passing it through
        #: (only to measure what pass-through saves: bench/bridge_latency.py).
        self.transcode = transcode
        self._make_client = make_client or (lambda: GoldenHourClient(
            url, room, "crew", name, create=create, ssl_context=ssl_context, ice_servers=ice_servers))
        self.client: GoldenHourClient | None = None
        self.video: EncodedVideoTrack | None = None
        self.audio: PcmAudioTrack | None = None
        self.holograms = HologramSync(source.unity) if source.unity is not None else None
        #: surface name -> the map block ids it was sent as
        self._surfaces: dict[str, wire.SurfaceMesh] = {}
        self._blocks_of: dict[str, list[str]] = {}
        #: surface name -> how many times the headset has sent it (what to re-upload)
        self._surface_versions: dict[str, int] = {}
        self._map_changed = asyncio.Event()
        self._annotations_changed = asyncio.Event()
        self._overlay_changed = asyncio.Event()
        self._latest_overlay: dict | None = None
        self.overlays_shown = 0
        self._last_timestamp: int | None = None
        self.head_position_world_m = np.zeros(3)
        self.connected = asyncio.Event()
        self.sessions = 0
        #: Every peer id this bridge has published as: annotations anchored on
        #: any of them are in this headset's world frame.
        self.own_peer_ids: set[str] = set()
        self.frames_received = 0
        self.poses_sent = 0
        self.map_blocks_sent = 0
        #: block id -> triangles the server stored (its `map_block_stored` replies)
        self.map_triangles_stored: dict[str, int] = {}
        #: Headset packet complete -> first RTP packet of that frame on the wire (ms).
        self.added_latency_ms: list[float] = []
        self._tasks: list[asyncio.Task] = []
        self._drains: list[asyncio.Task] = []
        self.heard_audio_frames = 0
        self._sent_intrinsics: dict | None = None
        #: The headset's video bitrate, following the server's REMB, where the
        #: source can reopen its stream at another one (a replay cannot).
        reopen = getattr(source, "reopen_video", None)
        self.bitrate = BitrateLadder(source.video_bitrate_bps) if callable(reopen) else None
        #: (when, bitrate reopened at, the estimate that asked for it)
        self.bitrate_changes: list[tuple[float, int, int]] = []
        #: (when received, bytes) of the headset's recent video frames.
        self._frame_bytes: deque[tuple[float, int]] = deque()

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep(self._read_video, "video")),
                       asyncio.create_task(self._keep(self._read_audio, "audio")),
                       asyncio.create_task(self._keep(self._read_map, "spatial map")),
                       asyncio.create_task(self._serve())]
        if self.holograms is not None:
            self._tasks.append(asyncio.create_task(self._keep(self._sync_holograms, "holograms")))
            self._tasks.append(asyncio.create_task(self._keep(self._show_overlays, "AI panel")))

    async def stop(self) -> None:
        await cancel_all(self._tasks + self._drains)
        if self.client is not None:
            await self.client.close()
        if self.source.unity is not None:
            await self.source.unity.close()

    async def request_guidance(self, reason: str | None = None) -> dict:
        """The crew asks for an expert: the lobby pages alert."""
        if self.client is None or not self.connected.is_set():
            raise ConnectionError("not connected to the server")
        return await self.client.request_guidance(reason)

    async def _keep(self, run: Callable[[], object], what: str) -> None:
        """Run a headset stream forever, reconnecting with backoff when it drops."""
        backoff = Backoff()
        while True:
            started = time.monotonic()
            try:
                await run()  # type: ignore[misc]
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a stream must never die for good
                log.warning("headset stream lost", extra={"stream": what, "error": repr(error)})
            if time.monotonic() - started > 5.0:
                backoff.reset()
            await backoff.wait()

    # --- server side ---------------------------------------------------------------

    async def _serve(self) -> None:
        """Stay published: connect, publish, send the map; on loss, back off and redo."""
        backoff = Backoff()
        while True:
            client = self._make_client()
            try:
                await self._publish(client)
                backoff.reset()
                await client.wait_closed()
                log.warning("server connection lost; reconnecting")
            except asyncio.CancelledError:
                await client.close()
                raise
            except Exception as error:  # noqa: BLE001 - any failure to connect means retry
                log.warning("could not publish to the server", extra={"error": repr(error)})
            self.connected.clear()
            await client.close()
            if self.video is not None:
                self.video.stop()
            if self.audio is not None:
                self.audio.stop()
            await backoff.wait()

    async def _publish(self, client: GoldenHourClient) -> None:
        self.client = client
        self._drains = [t for t in self._drains if not t.done()]
        client.on_message = self._on_message
        client.on_data = self._on_data
        client.on_track = self._on_remote_track
        await client.connect()
        self.video = TranscodingVideoTrack() if self.transcode else EncodedVideoTrack()
        self.audio = PcmAudioTrack(wire.MIC_SAMPLE_RATE, wire.MIC_CHANNELS)
        self._last_timestamp = None
        await client.publish([self.video, self.audio], data_channel=True, video_codec="video/H264")
        assert client.publish_pc is not None
        sender = next(t.sender for t in client.publish_pc.getTransceivers() if t.kind == "video")
        aiortc_seams.watch_sent_rtp(sender, self._on_video_packet)
        aiortc_seams.watch_remb(sender, self._on_bandwidth_estimate)
        self.sessions += 1
        self.own_peer_ids.add(client.state.peer_id)
        self.connected.set()
        # A new crew peer has an empty map on the server: send all of it again.
        self._blocks_of.clear()
        self._map_changed.set()
        self._annotations_changed.set()
        log.info("bridge published", extra={"room": client.room, "peer_id": client.state.peer_id})

    def _on_message(self, message: dict) -> None:
        if message.get("type") in ("annotation", "annotations_removed"):
            self._annotations_changed.set()

    def _on_remote_track(self, remote) -> None:
        """The experts' voices. hl2ss has no audio output to the glasses, so the
        bridge only reads them (unread, aiortc would queue them without bound);
        `heard_audio_frames` counts them. Playing them needs the bridge
        computer's speaker or a headset app that plays audio (docs/hololens.md)."""
        task = asyncio.ensure_future(self._drain(remote.track))
        self._drains.append(task)

    async def _drain(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            if track.kind == "audio":
                self.heard_audio_frames += 1
                if self.client is not None:
                    self.client.changed()

    def _on_bandwidth_estimate(self, estimate_bps: int) -> None:
        """The server's REMB: what the uplink and the slowest expert take."""
        if self.bitrate is None:
            return
        now = time.monotonic()
        changed = self.bitrate.observe(estimate_bps, self._sending_bps(now), now)
        if changed is None:
            return
        log.info("reopening the headset's video at another bitrate",
                 extra={"bitrate_bps": changed, "estimate_bps": estimate_bps})
        self.bitrate_changes.append((now, changed, estimate_bps))
        # What is sent is measured anew on the new stream: the old one's
        # frames would make the next estimate look short of it, and take
        # the stream down a second rung a second later.
        self._frame_bytes.clear()
        self.source.reopen_video(changed)  # type: ignore[attr-defined]

    def _sending_bps(self, now: float) -> float:
        frames = self._frame_bytes
        while frames and frames[0][0] < now - SENDING_WINDOW_S:
            frames.popleft()
        if not frames:
            return 0.0
        return sum(n for _, n in frames) * 8 / max(now - frames[0][0], 1.0)

    def _on_data(self, message: dict) -> None:
        if message.get("type") == "overlay":
            self._latest_overlay = message
            self._overlay_changed.set()

    def _on_video_packet(self, sequence_number: int, timestamp: int, marker: bool) -> None:
        if timestamp == self._last_timestamp or self.video is None or self.client is None:
            return
        self._last_timestamp = timestamp
        sent = self.video.frame_of_rtp(timestamp)
        channel = self.client.publish_channel
        if sent is None or channel is None or channel.readyState != "open":
            return
        self.added_latency_ms.append((time.perf_counter() - sent.received_s) * 1e3)
        if len(self.added_latency_ms) > 10_000:
            del self.added_latency_ms[:5_000]
        frame: wire.PvFrame = sent.info  # type: ignore[assignment]
        if frame.T_world_camera is None:
            return  # not located: nothing can be anchored on this frame
        m = frame.metadata
        pose = {
            "type": "pose", "rtp_timestamp": timestamp,
            "T_world_camera": [float(v) for v in frame.T_world_camera.reshape(-1)],
            "intrinsics": {"width": m.width, "height": m.height, "fx": m.fx, "fy": m.fy,
                           "cx": m.cx, "cy": m.cy, "distortion": []}}
        if frame.capture_unix_ms is not None:  # the console shows capture-to-display delay
            pose["capture_time_ms"] = round(frame.capture_unix_ms, 1)
        self.client.send_data(pose)
        self.poses_sent += 1

    # --- headset side ---------------------------------------------------------------

    async def _read_video(self) -> None:
        async for frame in self.source.video():
            self.frames_received += 1
            self._frame_bytes.append((time.monotonic(), len(frame.annex_b)))
            # A frame the headset could not locate still goes out (dropping it would
            # break H.264's reference chain until the next keyframe), without a pose.
            if frame.T_world_camera is not None:
                self.head_position_world_m = frame.T_world_camera[:3, 3].copy()
            if self.video is not None and self.connected.is_set():
                self.video.push(frame.annex_b, frame.timestamp_100ns, frame, frame.received_s)

    async def _read_audio(self) -> None:
        async for pcm in self.source.audio():
            if self.audio is not None and self.connected.is_set():
                self.audio.push(pcm)

    async def _read_map(self) -> None:
        sender = asyncio.create_task(self._send_map())
        try:
            async for update in self.source.spatial_map():
                for name, mesh in update.changed.items():
                    self._surfaces[name] = mesh
                    self._surface_versions[name] = self._surface_versions.get(name, 0) + 1
                for name in update.removed:
                    self._surfaces.pop(name, None)
                self._map_changed.set()
        finally:
            await cancel_all([sender])

    async def _connected_after(self, changed: asyncio.Event) -> GoldenHourClient:
        """Wait for `changed`, then return the server client if it is connected
        (changes while disconnected wait for the next session, which redoes all)."""
        while True:
            await changed.wait()
            changed.clear()
            client = self.client
            if client is not None and self.connected.is_set():
                return client

    async def _send_map(self) -> None:
        """Send each changed surface as map blocks, and remove blocks no longer there.
        An interrupted upload is retried; a block the server refuses is logged and skipped."""
        sent_versions: dict[str, int] = {}
        while True:
            client = await self._connected_after(self._map_changed)
            if not self._blocks_of:
                sent_versions.clear()  # a new session: everything again
                self.map_triangles_stored.clear()
            try:
                await self._upload_map(client, sent_versions)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - connection lost mid-upload: retry
                log.warning("map upload interrupted; retrying", extra={"error": repr(error)})
                await asyncio.sleep(1.0)
                self._map_changed.set()

    async def _upload_map(self, client: GoldenHourClient, sent_versions: dict[str, int]) -> None:
        for name in [n for n in self._blocks_of if n not in self._surfaces]:
            for block_id in self._blocks_of.pop(name):
                await client.request({"type": "map_block_remove", "block_id": block_id})
                self.map_triangles_stored.pop(block_id, None)
        for name, mesh in list(self._surfaces.items()):
            version = self._surface_versions.get(name, 0)
            if sent_versions.get(name) == version:
                continue
            ids = []
            for k, (_, vertices, triangles) in enumerate(split_into_blocks(
                    mesh.vertices_world_m, mesh.triangles, MAP_BLOCK_TRIANGLES)):
                block_id = f"{name}/{k}"
                try:
                    stored = await client.request({
                        "type": "map_block", "block_id": block_id,
                        "vertices": np.round(vertices, 5).reshape(-1).tolist(),
                        "triangles": triangles.reshape(-1).tolist()})
                except ServerError as error:
                    log.warning("server refused a map block", extra={"block_id": block_id,
                                                                     "error": str(error)})
                    continue
                ids.append(block_id)
                self.map_blocks_sent += 1
                self.map_triangles_stored[block_id] = int(stored["triangles"])
                client.changed()
            for stale in [b for b in self._blocks_of.get(name, []) if b not in ids]:
                await client.request({"type": "map_block_remove", "block_id": stale})
                self.map_triangles_stored.pop(stale, None)
            self._blocks_of[name] = ids
            sent_versions[name] = version

    async def _sync_holograms(self) -> None:
        assert self.holograms is not None
        # (Re)started, perhaps after a failed batch: draw the room's state once now,
        # and again whenever a panel's batch had to clear the headset.
        self.holograms.on_reset = self._annotations_changed.set
        self._annotations_changed.set()
        while True:
            client = await self._connected_after(self._annotations_changed)
            # Only what was drawn in this headset's world: another ambulance in the
            # room has a world frame of its own. Earlier sessions of this bridge
            # (before a reconnect) share this headset's frame.
            mine = {aid: a for aid, a in client.annotations.items()
                    if a.get("crew_peer_id") in self.own_peer_ids}
            await self.holograms.sync(mine, self.head_position_world_m)

    async def _show_overlays(self, min_interval_s: float = 0.5) -> None:
        """The latest AI result on the crew's head-locked panel, at most twice a
        second (the texture upload is the headset's dearest command)."""
        assert self.holograms is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._overlay_changed.wait()
            self._overlay_changed.clear()
            overlay = self._latest_overlay
            if overlay is None:
                continue
            png = await loop.run_in_executor(None, overlay_panel_png, overlay)
            await self.holograms.show_panel(f"ai:{overlay.get('producer_id')}", png)
            self.overlays_shown += 1
            if self.client is not None:
                self.client.changed()
            await asyncio.sleep(min_interval_s)
