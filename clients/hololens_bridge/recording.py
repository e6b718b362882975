"""Recorded headset sessions: written from a live headset, replayed as if live.

A recording is a folder any tool can read:

* `video.h264` — the headset's H.264 access units, Annex B, back to back,
  starting at a keyframe (ffplay and every editor open it);
* `frames.jsonl` — one line per access unit, in order: `timestamp_100ns`,
  `bytes` (its length in video.h264), `T_world_camera` (16 numbers,
  row-major, our convention, docs/geometry.md; null when the headset could
  not locate the frame) and `intrinsics` (`fx fy cx cy width height`);
* `map.ply` — the spatial map, world frame, metres;
* `audio.wav` — the microphone, 48 kHz 16-bit stereo (optional).

`ReplaySource` plays it to the bridge with the recorded timing, looping, with
timestamps moved to the present so the stream never runs backwards.
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from clients.hololens_bridge import hl2ss_wire as wire
from clients.hololens_bridge.headset import MapUpdate
from clients.hololens_bridge.media import is_h264_keyframe

VIDEO, FRAMES, MAP, AUDIO = "video.h264", "frames.jsonl", "map.ply", "audio.wav"


class RecordingError(ValueError):
    """A recording folder that cannot be replayed; the message names what is wrong."""


def write_ply(path: Path, vertices_m: np.ndarray, triangles: np.ndarray) -> None:
    """A binary little-endian PLY triangle mesh."""
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(vertices_m)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              f"element face {len(triangles)}\nproperty list uchar int vertex_indices\nend_header\n")
    faces = np.zeros(len(triangles), dtype=[("n", "u1"), ("i", "<i4", 3)])
    faces["n"], faces["i"] = 3, triangles
    with path.open("wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.asarray(vertices_m, "<f4").tobytes())
        f.write(faces.tobytes())


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the meshes write_ply writes (and any PLY triangle mesh: open3d reads the rest)."""
    import open3d as o3d
    mesh = o3d.io.read_triangle_mesh(str(path))
    vertices, triangles = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    if len(triangles) == 0:
        raise RecordingError(f"{path} holds no triangles")
    return vertices, triangles


class RecordingSource:
    """Wraps a headset source and records what passes through it."""

    def __init__(self, source, directory: Path) -> None:
        self.source = source
        self.unity = source.unity
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.frames_written = 0

    async def video(self) -> AsyncIterator[wire.PvFrame]:
        with (self.directory / VIDEO).open("ab") as video, (self.directory / FRAMES).open("a") as frames:
            started = self.frames_written > 0
            async for frame in self.source.video():
                started = started or is_h264_keyframe(frame.annex_b)
                if started:
                    m = frame.metadata
                    video.write(frame.annex_b)
                    frames.write(json.dumps({
                        "timestamp_100ns": frame.timestamp_100ns, "bytes": len(frame.annex_b),
                        "T_world_camera": None if frame.T_world_camera is None
                        else [round(float(v), 7) for v in frame.T_world_camera.reshape(-1)],
                        "intrinsics": {"fx": m.fx, "fy": m.fy, "cx": m.cx, "cy": m.cy,
                                       "width": m.width, "height": m.height}}) + "\n")
                    self.frames_written += 1
                yield frame

    async def audio(self) -> AsyncIterator[np.ndarray]:
        path = self.directory / AUDIO
        with wave.open(str(path), "wb") as out:
            out.setnchannels(wire.MIC_CHANNELS)
            out.setsampwidth(2)
            out.setframerate(wire.MIC_SAMPLE_RATE)
            async for pcm in self.source.audio():
                out.writeframes(np.ascontiguousarray(pcm, "<i2").tobytes())
                yield pcm

    async def spatial_map(self) -> AsyncIterator[MapUpdate]:
        surfaces: dict[str, wire.SurfaceMesh] = {}
        async for update in self.source.spatial_map():
            surfaces.update(update.changed)
            for name in update.removed:
                surfaces.pop(name, None)
            if surfaces:
                vertices, triangles, offset = [], [], 0
                for mesh in surfaces.values():
                    vertices.append(mesh.vertices_world_m)
                    triangles.append(mesh.triangles + offset)
                    offset += len(mesh.vertices_world_m)
                await asyncio.get_running_loop().run_in_executor(
                    None, write_ply, self.directory / MAP, np.vstack(vertices), np.vstack(triangles))
            yield update


class ReplaySource:
    """A recording played back as a headset (no holograms: there are no glasses)."""

    unity = None

    def __init__(self, directory: Path, loop: bool = True) -> None:
        self.directory = Path(directory)
        self.loop = loop
        for name in (VIDEO, FRAMES):
            if not (self.directory / name).is_file():
                raise RecordingError(f"{self.directory} has no {name}: not a recording")
        self.frames = self._read_index()
        total = sum(f["bytes"] for f in self.frames)
        size = (self.directory / VIDEO).stat().st_size
        if total != size:
            raise RecordingError(f"{FRAMES} accounts for {total} bytes but {VIDEO} has {size}")
        if (self.directory / AUDIO).is_file():
            try:
                with wave.open(str(self.directory / AUDIO), "rb") as f:
                    layout = (f.getframerate(), f.getnchannels(), f.getsampwidth())
            except (wave.Error, EOFError) as error:
                raise RecordingError(f"{AUDIO}: {error}") from None
            if layout != (wire.MIC_SAMPLE_RATE, 2, 2):
                raise RecordingError(f"{AUDIO} must be 48 kHz 16-bit stereo, not {layout}")

    def _read_index(self) -> list[dict]:
        frames = []
        with (self.directory / FRAMES).open() as f:
            for number, line in enumerate(f, 1):
                try:
                    frame = json.loads(line)
                    int(frame["timestamp_100ns"]), int(frame["bytes"])
                    pose = frame.get("T_world_camera")
                    if pose is not None and len(pose) != 16:
                        raise ValueError("T_world_camera needs 16 numbers")
                    intrinsics = frame["intrinsics"]
                    for key in ("fx", "fy", "cx", "cy", "width", "height"):
                        float(intrinsics[key])
                except (ValueError, KeyError, TypeError) as error:
                    raise RecordingError(f"{FRAMES} line {number}: {error}") from None
                frames.append(frame)
        if not frames:
            raise RecordingError(f"{FRAMES} is empty")
        return frames

    async def video(self) -> AsyncIterator[wire.PvFrame]:
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, (self.directory / VIDEO).read_bytes)
        first = self.frames[0]["timestamp_100ns"]
        span = self.frames[-1]["timestamp_100ns"] - first
        interval = span // max(1, len(self.frames) - 1) if len(self.frames) > 1 else 333_333
        start_wall = time.monotonic()
        origin = time.monotonic_ns() // 100
        lap = 0
        while True:
            offset = 0
            for frame in self.frames:
                at = frame["timestamp_100ns"] - first + lap * (span + interval)
                delay = start_wall + at / 1e7 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                chunk = data[offset:offset + frame["bytes"]]
                offset += frame["bytes"]
                i = frame["intrinsics"]
                pose = frame.get("T_world_camera")
                yield wire.PvFrame(
                    origin + at, chunk,
                    wire.PvMetadata(i["fx"], i["fy"], i["cx"], i["cy"], int(i["width"]), int(i["height"])),
                    None if pose is None else np.array(pose, dtype=np.float64).reshape(4, 4),
                    time.perf_counter())
            if not self.loop:
                return
            lap += 1

    async def audio(self) -> AsyncIterator[np.ndarray]:
        path = self.directory / AUDIO
        if not path.is_file():
            await asyncio.Event().wait()  # no microphone recorded: silence, forever
        with wave.open(str(path), "rb") as f:
            if f.getframerate() != wire.MIC_SAMPLE_RATE or f.getnchannels() != 2 or f.getsampwidth() != 2:
                raise RecordingError(f"{AUDIO} must be 48 kHz 16-bit stereo")
            pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, 2)
        chunk = 960
        start = time.monotonic()
        n = 0
        while len(pcm) >= chunk:
            for at in range(0, len(pcm) - chunk + 1, chunk):
                delay = start + n / wire.MIC_SAMPLE_RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield pcm[at:at + chunk]
                n += chunk
            if not self.loop:
                return

    async def spatial_map(self) -> AsyncIterator[MapUpdate]:
        path = self.directory / MAP
        if path.is_file():
            loop = asyncio.get_running_loop()
            vertices, triangles = await loop.run_in_executor(None, read_ply, path)
            yield MapUpdate(changed={"replay": wire.SurfaceMesh(0, 0, vertices, triangles)})
        await asyncio.Event().wait()
