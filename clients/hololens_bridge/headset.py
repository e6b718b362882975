"""Our client of a headset's hl2ss ports: PV video with poses, microphone, spatial map.

hl2ss serves one client per port, so the bridge is the single consumer and
fans the streams out through the server. Each stream is an async iterator
that ends when its connection does; the bridge reconnects.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from clients.hololens_bridge import hl2ss_wire as wire
from clients.hololens_bridge.headset_scene import UnityQueue


CONNECT_TIMEOUT_S = 3.0
#: No video or audio packet for this long: the link is dead even without a FIN.
STREAM_SILENCE_S = 5.0
#: A spatial-mapping reply (meshes are computed on the headset) takes at most this.
MAP_REPLY_S = 30.0


@dataclass
class MapUpdate:
    """Surfaces that are new or changed (name -> mesh in world metres) and those gone."""

    changed: dict[str, wire.SurfaceMesh] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)


class Hl2ssHeadset:
    """A HoloLens 2 (or the simulated one) reached through its hl2ss ports."""

    def __init__(self, host: str, ports: dict[str, int] | None = None,
                 pv: wire.PvConfig | None = None, map_radius_m: float = 6.0,
                 map_interval_s: float = 2.0) -> None:
        self.host = host
        self.ports = {**wire.DEFAULT_PORTS, **(ports or {})}
        self.pv = pv if pv is not None else wire.PvConfig()
        self.map_radius_m = map_radius_m
        self.map_interval_s = map_interval_s
        self.unity = UnityQueue(host, self.ports["unity"])
        #: The PV stream's connection while open, and whether we closed it to reopen it.
        self._pv_writer: asyncio.StreamWriter | None = None
        self._reopening = False

    @property
    def video_bitrate_bps(self) -> int:
        """The bitrate the PV stream is (or will be) opened with."""
        return self.pv.bitrate

    def reopen_video(self, bitrate_bps: int) -> None:
        """Open the PV stream again, at `bitrate_bps`: hl2ss encodes at the
        bitrate a stream was opened with. `video()` carries on over the new
        stream, which starts with a keyframe; the frames in between are lost."""
        self.pv = dataclasses.replace(self.pv, bitrate=bitrate_bps)
        if self._pv_writer is not None:
            self._reopening = True
            self._pv_writer.close()  # the pending read ends (EOF), video() reopens

    async def _open(self, port: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.ports[port]), CONNECT_TIMEOUT_S)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return reader, writer

    async def start_pv_subsystem(self) -> None:
        """Open the headset's camera pipeline (hl2ss streams nothing until it is open)."""
        _, writer = await self._open("pv")
        writer.write(wire.PvStart().encode())
        await writer.drain()
        writer.close()

    async def utc_offset(self) -> int | None:
        """The headset clock's offset to FILETIME (remote configuration port), or
        None where the port does not answer: frames then carry no capture time."""
        try:
            reader, writer = await asyncio.wait_for(self._open("remote_configuration"), 2.0)
        except (OSError, TimeoutError):
            return None
        try:
            writer.write(bytes([wire.RC_GET_UTC_OFFSET]))
            await writer.drain()
            (offset,) = struct.unpack("<Q", await asyncio.wait_for(reader.readexactly(8), 2.0))
            return offset
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return None
        finally:
            writer.close()

    async def video(self) -> AsyncIterator[wire.PvFrame]:
        """PV frames (H.264 access units) with pose and intrinsics, as they arrive."""
        offset = await self.utc_offset()
        await self.start_pv_subsystem()
        while True:
            reader, writer = await self._open("pv")
            self._pv_writer, self._reopening = writer, False
            try:
                writer.write(self.pv.encode())
                await writer.drain()
                while True:
                    try:
                        # A headset that walked out of Wi-Fi range sends no FIN: give
                        # up after a silence no live camera has, and reconnect.
                        packet = await asyncio.wait_for(wire.read_packet(reader, with_pose=True),
                                                        STREAM_SILENCE_S)
                    except (asyncio.IncompleteReadError, ConnectionError):
                        if self._reopening:
                            break  # we closed it: open it again, configured anew
                        raise
                    received = time.perf_counter()
                    annex_b, metadata = wire.split_pv_payload(packet.payload)
                    assert packet.pose is not None
                    capture_ms = (None if offset is None
                                  else wire.unix_ms_from_headset(packet.timestamp_100ns, offset))
                    yield wire.PvFrame(packet.timestamp_100ns, annex_b, metadata,
                                       wire.T_world_camera_from_hl2ss(packet.pose), received,
                                       capture_ms)
            finally:
                writer.close()
                self._pv_writer = None

    async def audio(self) -> AsyncIterator[np.ndarray]:
        """Microphone PCM, (n, 2) int16 at 48 kHz."""
        reader, writer = await self._open("microphone")
        try:
            writer.write(wire.mic_config())
            await writer.drain()
            while True:
                packet = await asyncio.wait_for(wire.read_packet(reader, with_pose=False),
                                                STREAM_SILENCE_S)
                yield wire.pcm_from_mic_payload(packet.payload)
        finally:
            writer.close()

    async def spatial_map(self) -> AsyncIterator[MapUpdate]:
        """The spatial map's changes: the first update holds every surface."""
        reader, writer = await self._open("spatial_mapping")
        known: dict[bytes, int] = {}
        try:
            writer.write(wire.sm_set_sphere_volume((0.0, 0.0, 0.0), self.map_radius_m))
            while True:
                writer.write(bytes([wire.SM_GET_SURFACES]))
                await writer.drain()
                surfaces = await asyncio.wait_for(wire.read_surfaces(reader), MAP_REPLY_S)
                wanted = [s for s in surfaces if known.get(s.surface_id) != s.update_time]
                update = MapUpdate()
                current = {s.surface_id for s in surfaces}
                for gone in [sid for sid in known if sid not in current]:
                    del known[gone]
                    update.removed.append(wire.SurfaceInfo(gone, 0).name)
                if wanted:
                    writer.write(wire.sm_get_meshes([s.surface_id for s in wanted]))
                    await writer.drain()
                    for _ in wanted:
                        mesh = await asyncio.wait_for(wire.read_mesh(reader), MAP_REPLY_S)
                        if not 0 <= mesh.index < len(wanted):
                            raise wire.WireError(f"mesh reply for task {mesh.index} of {len(wanted)}")
                        info = wanted[mesh.index]  # replies name their task
                        if mesh.status == 0:
                            update.changed[info.name] = mesh
                            known[info.surface_id] = info.update_time
                if update.changed or update.removed:
                    yield update
                await asyncio.sleep(self.map_interval_s)
        finally:
            writer.close()
