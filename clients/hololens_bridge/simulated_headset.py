"""A simulated HoloLens 2 running hl2ss, inside vision/'s synthetic ambulance.

It listens on hl2ss's ports (loopback, or ports of the caller's choice) and
speaks hl2ss's wire format: the PV camera as H.264 access units with per-frame
intrinsics and pose, the microphone as raw PCM, the spatial map as surfaces
with their transforms, and the Unity message queue that creates holograms.
The bridge cannot tell it from glasses, which is the point: the bridge's
tests and demos run the real protocol.

It also draws what the wearer would see (`preview()`): the camera picture
with every active hologram drawn where the glasses would show it, from the
objects the remote-scene commands created, converted back from Unity's frame.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import struct
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from clients.hololens_bridge import hl2ss_wire as wire
from clients.hololens_bridge.scene_camera import default_pose, scaled_intrinsics
from clients.sdk import framecode
from vision.camera import (
    Intrinsics,
    check_pose,
    invert_pose,
    rotation_from_quaternion_xyzw,
    world_from_unity_points,
)
from vision.spatial_map import split_into_blocks
from vision.synthetic import SyntheticScene, ambulance_scene, perturb_pose, render

log = logging.getLogger(__name__)

_S3 = np.diag([1.0, 1.0, -1.0])
#: The surfaces the headset reports: about this many triangles each.
SURFACE_TRIANGLES = 1500
_VOLUME_BODY_BYTES = {0: 24, 1: 96, 2: 40, 3: 16}


@dataclass
class SceneObject:
    """One hologram as the headset's Unity scene holds it."""

    kind: str  # sphere | cylinder | cube | plane | capsule | quad | text
    active: bool = False
    position: tuple = (0.0, 0.0, 0.0)
    rotation_xyzw: tuple = (0.0, 0.0, 0.0, 1.0)
    scale: tuple = (1.0, 1.0, 1.0)
    head_locked: bool = False  # set_local_transform parents it to the camera
    rgba: tuple = (1.0, 1.0, 1.0, 1.0)
    text: str = ""
    font_size: float = 0.0
    texture: bytes = b""


@dataclass
class SentPvFrame:
    frame_id: int
    timestamp_100ns: int
    T_world_camera: np.ndarray  # the truth the frame was rendered at
    reported_T_world_camera: np.ndarray  # what the headset said (noisy if asked)
    sent_s: float  # perf_counter when its last byte was written


@dataclass
class _Stats:
    pv_connections: int = 0
    pv_frames_sent: int = 0
    mic_packets_sent: int = 0
    unity_connections: int = 0
    unity_messages: int = 0
    sm_requests: int = 0


class SimulatedHeadset:
    """hl2ss's PV, microphone, spatial-mapping and Unity-queue ports, simulated."""

    def __init__(self, scene: SyntheticScene | None = None, *, host: str = "127.0.0.1",
                 ports: dict[str, int] | None = None, pose_noise_m: float = 0.0,
                 pose_noise_deg: float = 0.0, seed: int = 0, tone_hz: float = 440.0,
                 network_delay_s: float = 0.0, network_jitter_s: float = 0.0,
                 map_noise_m: float = 0.0) -> None:
        self.scene = scene if scene is not None else ambulance_scene(0)
        self.host = host
        #: Ports to listen on; 0 picks a free one (tests). `start()` fills in the real ones.
        self.ports = dict(ports) if ports is not None else {k: 0 for k in wire.DEFAULT_PORTS}
        self._pose = default_pose(self.scene)
        self._rng = np.random.default_rng(seed)
        self.pose_noise_m, self.pose_noise_deg = pose_noise_m, pose_noise_deg
        self.tone_hz = tone_hz
        #: Added before each PV packet leaves: a wireless link's latency, plus a
        #: uniformly random 0..jitter (packets stay in order, as on TCP).
        self.network_delay_s, self.network_jitter_s = network_delay_s, network_jitter_s
        #: Gaussian noise (per axis, metres) on the spatial map's vertices: a
        #: depth sensor's error, seen by anchoring.
        self.map_noise_m = map_noise_m
        self.pv_started = False
        self.pv_config: wire.PvConfig | None = None
        self.sent_frames: dict[int, SentPvFrame] = {}
        self.objects: dict[int, SceneObject] = {}
        #: Every remote-scene command received, decoded (wire.describe), in order.
        self.commands: list[tuple] = []
        self.stats = _Stats()
        self._next_key = 0x80000000 + 1000  # Unity instance ids often exceed 2^31
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()
        self._renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headset-render")
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headset-encode")
        self._picture_cache: tuple[np.ndarray, Intrinsics, np.ndarray] | None = None
        self.frame_sent = asyncio.Event()

    # --- control --------------------------------------------------------------------

    @property
    def pose(self) -> np.ndarray:
        return self._pose.copy()

    def set_pose(self, T_world_camera: np.ndarray) -> None:
        """Move the wearer's head: frames from now on are taken at this pose."""
        self._pose = check_pose(T_world_camera)

    async def walk(self, seed: int = 0, step_s: float = 0.2) -> None:
        """Move like a paramedic working around the patient, forever."""
        from vision.synthetic import paramedic_trajectory
        while True:
            for posed in paramedic_trajectory(self.scene, 30.0, fps=1.0 / step_s, seed=seed):
                self.set_pose(posed.T_world_camera)
                await asyncio.sleep(step_s)
            seed += 1

    async def start(self) -> None:
        handlers = {"pv": self._serve_pv, "microphone": self._serve_microphone,
                    "spatial_mapping": self._serve_spatial_mapping, "unity": self._serve_unity,
                    "remote_configuration": self._serve_remote_configuration}
        for name, handler in handlers.items():
            server = await asyncio.start_server(self._guarded(name, handler), self.host,
                                                self.ports.get(name, 0))
            self.ports[name] = server.sockets[0].getsockname()[1]
            self._servers.append(server)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._renderer.shutdown(wait=False, cancel_futures=True)
        self._encoder.shutdown(wait=False, cancel_futures=True)

    def _guarded(self, name: str, handler):
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
                pass  # the client went away: hl2ss then waits for the next one
            except asyncio.CancelledError:
                pass  # stop(): end quietly (asyncio's server logs a cancelled handler)
            except wire.WireError as error:
                log.warning("simulated headset: bad request", extra={"port": name, "error": str(error)})
            finally:
                self._tasks.discard(task)
                writer.close()
        return serve

    # --- remote configuration ------------------------------------------------------------

    async def _serve_remote_configuration(self, reader, writer) -> None:
        """Only the clock: the offset that turns stream timestamps (our monotonic
        clock, as the headset's QPC) into FILETIME."""
        while True:
            (command,) = await reader.readexactly(1)
            if command != wire.RC_GET_UTC_OFFSET:
                raise wire.WireError(f"the simulated headset's remote configuration knows only "
                                     f"command {wire.RC_GET_UTC_OFFSET}, not {command}")
            filetime_now = time.time_ns() // 100 + wire.FILETIME_UNIX_EPOCH_100NS
            writer.write(struct.pack("<Q", filetime_now - time.monotonic_ns() // 100))
            await writer.drain()

    # --- PV ---------------------------------------------------------------------------

    async def _serve_pv(self, reader, writer) -> None:
        (mode,) = await reader.readexactly(1)
        if mode & wire.PV_START:
            wire.PvStart.decode_options(await reader.readexactly(wire.PV_START_OPTIONS_BYTES))
            self.pv_started = True
        if mode & wire.PV_STOP and mode & 3 == 3:
            self.pv_started = False
        if mode & 3 == 3:
            return
        config = await wire.PvConfig.read_rest(mode, reader)
        if not self.pv_started:
            return  # hl2ss answers nothing until the PV subsystem is open
        if config.profile not in (wire.PROFILE_H264_BASE, wire.PROFILE_H264_MAIN, wire.PROFILE_H264_HIGH):
            raise wire.WireError(f"the simulated headset encodes H.264 only, not profile {config.profile}")
        self.pv_config = config
        self.stats.pv_connections += 1
        await self._stream_pv(writer, config)

    def _new_encoder(self, config: wire.PvConfig) -> av.CodecContext:
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height = config.width, config.height
        codec.pix_fmt = "yuv420p"
        fps = max(1, config.framerate // config.divisor)
        codec.time_base = fractions.Fraction(1, fps)
        codec.framerate = fractions.Fraction(fps, 1)
        gop = dict(config.options).get(wire.OPTION_GOP_SIZE, fps)
        codec.gop_size = int(gop)
        codec.max_b_frames = 0
        codec.bit_rate = config.bitrate
        profile = {0: "baseline", 1: "main", 2: "high"}[config.profile]
        # Like the headset's encoder: SPS/PPS before every IDR, no B-frames, a frame per packet.
        codec.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": profile,
                         "x264-params": f"repeat-headers=1:keyint={int(gop)}:scenecut=0"}
        return codec

    def _picture(self, T: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
        cached = self._picture_cache
        if cached is not None and np.array_equal(cached[0], T) and cached[1] == intrinsics:
            return cached[2]
        rgb = render(self.scene, T, intrinsics).color_rgb
        i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
        self._picture_cache = (T.copy(), intrinsics, i420)
        return i420

    async def _stream_pv(self, writer: asyncio.StreamWriter, config: wire.PvConfig) -> None:
        loop = asyncio.get_running_loop()
        encoder = self._new_encoder(config)
        intrinsics = scaled_intrinsics(config.width, config.height)
        fps = config.framerate / config.divisor
        start = time.monotonic()
        clock_origin_100ns = time.monotonic_ns() // 100
        slot = -1
        # The camera keeps its frame rate while a new pose renders (tens of ms):
        # frames carry the last finished picture and the pose it was rendered at.
        first = self._pose
        shown = (first, await loop.run_in_executor(self._renderer, self._picture, first, intrinsics))
        rendering: asyncio.Future | None = None
        try:
            while True:
                slot = max(slot + 1, int((time.monotonic() - start) * fps))
                delay = start + slot / fps - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if rendering is not None and rendering.done():
                    shown, rendering = rendering.result(), None
                wanted = self._pose
                if rendering is None and not np.array_equal(wanted, shown[0]):
                    rendering = loop.run_in_executor(self._renderer, self._rendered, wanted, intrinsics)
                await self._send_pv_frame(writer, config, encoder, intrinsics, fps, slot,
                                          clock_origin_100ns, *shown)
        finally:
            if rendering is not None:
                rendering.cancel()

    def _rendered(self, T: np.ndarray, intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
        return T, self._picture(T, intrinsics)

    async def _send_pv_frame(self, writer, config: wire.PvConfig, encoder, intrinsics: Intrinsics,
                             fps: float, slot: int, clock_origin_100ns: int, T: np.ndarray,
                             rendered: np.ndarray) -> None:
        loop = asyncio.get_running_loop()
        picture = rendered.copy()
        frame_id = slot
        timestamp = clock_origin_100ns + round(slot * 1e7 / fps)
        framecode.paint(picture[:config.height], frame_id, int(time.time() * 1000))
        annex_b = await loop.run_in_executor(self._encoder, _encode, encoder, picture, slot)
        if not annex_b:
            return
        reported = T
        if self.pose_noise_m or self.pose_noise_deg:
            reported = perturb_pose(T, self.pose_noise_m, self.pose_noise_deg, self._rng)
        metadata = wire.PvMetadata(intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy,
                                   config.width, config.height, exposure_time_100ns=80_000)
        payload = b"\x00\x00\x00\x01\x09\x10" + annex_b + metadata.encode()
        if self.network_delay_s or self.network_jitter_s:
            await asyncio.sleep(self.network_delay_s + self._rng.uniform(0, self.network_jitter_s))
        writer.write(wire.encode_packet(timestamp, payload, wire.hl2ss_from_T_world_camera(reported)))
        await writer.drain()
        self.sent_frames[frame_id] = SentPvFrame(frame_id, timestamp, T, reported, time.perf_counter())
        if len(self.sent_frames) > 900:
            del self.sent_frames[next(iter(self.sent_frames))]
        self.stats.pv_frames_sent += 1
        self.frame_sent.set()
        self.frame_sent.clear()

    # --- microphone --------------------------------------------------------------------

    async def _serve_microphone(self, reader, writer) -> None:
        profile, _level = await reader.readexactly(2)
        if profile != wire.MIC_PROFILE_RAW:
            raise wire.WireError("the simulated headset's microphone sends raw PCM only")
        chunk = 768  # samples per packet, as the headset's audio engine delivers them
        start = time.monotonic()
        origin = time.monotonic_ns() // 100
        n = 0
        while True:
            delay = start + n / wire.MIC_SAMPLE_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t = np.arange(n, n + chunk) / wire.MIC_SAMPLE_RATE
            tone = (3000 * np.sin(2 * np.pi * self.tone_hz * t)).astype("<i2")
            payload = np.column_stack([tone, tone]).tobytes()
            writer.write(wire.encode_packet(origin + round(n * 1e7 / wire.MIC_SAMPLE_RATE), payload))
            await writer.drain()
            self.stats.mic_packets_sent += 1
            n += chunk

    # --- spatial mapping ------------------------------------------------------------------

    def _surfaces(self) -> list[tuple[wire.SurfaceInfo, np.ndarray, np.ndarray, np.ndarray]]:
        """The scene's mesh as surfaces: (info, vertices in the surface's frame,
        triangles, surface-to-world pose in hl2ss's row-vector form)."""
        if not hasattr(self, "_surface_cache"):
            surfaces = []
            for block_id, vertices, triangles in split_into_blocks(
                    self.scene.vertices_world_m, self.scene.triangles, SURFACE_TRIANGLES):
                if self.map_noise_m:
                    vertices = vertices + self._rng.normal(0.0, self.map_noise_m, vertices.shape)
                origin = vertices.mean(axis=0)
                pose = np.eye(4, dtype=np.float32)
                pose[3, :3] = origin  # row-vector convention: translation in the last row
                info = wire.SurfaceInfo(uuid.uuid5(uuid.NAMESPACE_URL, block_id).bytes_le, 133_000_000_000_000_000)
                surfaces.append((info, (vertices - origin).astype(np.float32), triangles, pose))
            self._surface_cache = surfaces
        return self._surface_cache

    async def _serve_spatial_mapping(self, reader, writer) -> None:
        listed: dict[bytes, int] | None = None
        while True:
            (command,) = await reader.readexactly(1)
            self.stats.sm_requests += 1
            if command == wire.SM_SET_VOLUMES:
                (count,) = await reader.readexactly(1)
                for _ in range(count):
                    (kind,) = struct.unpack("<I", await reader.readexactly(4))
                    if kind not in _VOLUME_BODY_BYTES:
                        raise wire.WireError(f"unknown spatial-mapping volume type {kind}")
                    await reader.readexactly(_VOLUME_BODY_BYTES[kind])
            elif command == wire.SM_GET_SURFACES:
                surfaces = self._surfaces()
                listed = {s[0].surface_id: i for i, s in enumerate(surfaces)}
                writer.write(wire.encode_surfaces([s[0] for s in surfaces]))
            elif command == wire.SM_GET_MESHES:
                (count,) = struct.unpack("<I", await reader.readexactly(4))
                tasks = wire.decode_mesh_tasks(await reader.readexactly(40 * count))
                if listed is None:
                    raise wire.WireError("get meshes before get surfaces")
                surfaces = self._surfaces()
                for index, (surface_id, _density, vformat, iformat, _nformat) in enumerate(tasks):
                    if surface_id not in listed:
                        writer.write(wire.encode_mesh(index, np.zeros((0, 3)), np.zeros((0, 3)),
                                                      np.eye(4), status=1))
                        continue
                    _info, vertices, triangles, pose = surfaces[listed[surface_id]]
                    writer.write(wire.encode_mesh(index, vertices, triangles, pose, vformat, iformat))
            else:
                raise wire.WireError(f"unknown spatial-mapping command {command}")
            await writer.drain()

    # --- Unity message queue --------------------------------------------------------------

    async def _serve_unity(self, reader, writer) -> None:
        self.stats.unity_connections += 1
        use_last, last_key = False, 0
        while True:
            command = await wire.read_command(reader)
            self.stats.unity_messages += 1
            self.commands.append(wire.describe(command))
            if len(self.commands) > 200_000:  # a demo runs for days: keep the recent half
                del self.commands[:100_000]
            result, use_last, last_key = self._apply(command, use_last, last_key)
            writer.write(struct.pack("<I", result))
            await writer.drain()

    def _apply(self, command: wire.Command, use_last: bool, last_key: int) -> tuple[int, bool, int]:
        c, d = command.command, command.data
        if c in (wire.Rus.CREATE_PRIMITIVE, wire.Rus.CREATE_TEXT):
            key = self._next_key
            self._next_key += 1
            kind = "text" if c == wire.Rus.CREATE_TEXT else wire.describe(command)[1]
            self.objects[key] = SceneObject(kind)
            return key, use_last, key
        if c == wire.Rus.SET_TARGET_MODE:
            return (1, struct.unpack("<I", d)[0] != 0, last_key) if len(d) >= 4 else (0, use_last, last_key)
        if c in (wire.Rus.BEGIN_DISPLAY_LIST, wire.Rus.END_DISPLAY_LIST):
            return 1, use_last, last_key
        if c == wire.Rus.REMOVE_ALL:
            self.objects.clear()
            return 1, use_last, last_key
        if len(d) < 4:
            return 0, use_last, last_key
        key = last_key if use_last else struct.unpack("<I", d[:4])[0]
        target = self.objects.get(key)
        if target is None:
            return 0, use_last, last_key
        if c == wire.Rus.REMOVE:
            del self.objects[key]
        elif c == wire.Rus.SET_ACTIVE:
            target.active = struct.unpack("<II", d)[1] != 0
        elif c in (wire.Rus.SET_WORLD_TRANSFORM, wire.Rus.SET_LOCAL_TRANSFORM):
            v = struct.unpack("<I10f", d)
            target.position, target.rotation_xyzw, target.scale = v[1:4], v[4:8], v[8:11]
            target.head_locked = c == wire.Rus.SET_LOCAL_TRANSFORM
        elif c == wire.Rus.SET_COLOR:
            target.rgba = struct.unpack("<I4f", d)[1:]
        elif c == wire.Rus.SET_TEXTURE:
            target.texture = bytes(d[4:])
        elif c == wire.Rus.SET_TEXT:
            if target.kind != "text" or len(d) < 24:
                return 0, use_last, last_key
            v = struct.unpack("<I5f", d[:24])
            target.font_size, target.rgba, target.text = v[1], v[2:6], d[24:].decode("utf-8")
        else:
            return 0, use_last, last_key
        return 1, use_last, last_key

    # --- what the wearer sees -----------------------------------------------------------

    def preview(self, T_world_camera: np.ndarray | None = None, width: int | None = None,
                height: int | None = None) -> np.ndarray:
        """The wearer's view (BGR): the camera picture at a pose (default: the current
        one) with every active hologram drawn where the glasses show it."""
        T = check_pose(T_world_camera if T_world_camera is not None else self._pose)
        config = self.pv_config or wire.PvConfig(640, 360)
        intrinsics = scaled_intrinsics(width or config.width, height or config.height)
        rgb = render(self.scene, T, intrinsics).color_rgb
        return draw_holograms(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), self.objects, T, intrinsics)


def _encode(encoder: av.CodecContext, i420: np.ndarray, pts: int) -> bytes:
    frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
    frame.pts = pts
    return b"".join(bytes(p) for p in encoder.encode(frame))


def _object_world_pose(obj: SceneObject, T_world_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rotation, position) of an object in our world frame."""
    R_unity = rotation_from_quaternion_xyzw(np.array(obj.rotation_xyzw))
    p_unity = np.array(obj.position, dtype=np.float64)
    if not obj.head_locked:
        return _S3 @ R_unity @ _S3, world_from_unity_points(p_unity)
    # Head-locked: relative to the Unity camera (x right, y up, z forward);
    # OpenCV's camera has y down: flip y.
    flip = np.diag([1.0, -1.0, 1.0])
    R_cam, t_cam = T_world_camera[:3, :3], T_world_camera[:3, 3]
    return R_cam @ flip @ R_unity @ flip, R_cam @ (flip @ p_unity) + t_cam


def draw_holograms(picture_bgr: np.ndarray, objects: dict[int, SceneObject],
                   T_world_camera: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """Draw scene objects over a picture taken at T_world_camera, far ones first."""
    out = picture_bgr.copy()
    T_camera_world = invert_pose(T_world_camera)
    K = intrinsics.K

    def to_px(points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cam = (T_camera_world[:3, :3] @ np.asarray(points_world).reshape(-1, 3).T).T + T_camera_world[:3, 3]
        z = cam[:, 2]
        uv = (K @ cam.T).T
        return uv[:, :2] / np.maximum(z[:, None], 1e-6), z

    drawn = []
    for obj in objects.values():
        if not obj.active:
            continue
        R, p = _object_world_pose(obj, T_world_camera)
        _, depth = to_px(p)
        drawn.append((float(depth[0]), obj, R, p))
    for depth, obj, R, p in sorted(drawn, key=lambda item: -item[0]):
        if depth <= 0.05:
            continue
        color = tuple(int(round(255 * c)) for c in obj.rgba[2::-1])  # RGB -> BGR
        focal = K[0, 0]
        if obj.kind == "cylinder":
            ends = np.array([p + R[:, 1] * obj.scale[1], p - R[:, 1] * obj.scale[1]])
            uv, z = to_px(ends)
            if (z > 0.05).all():
                width = max(1, int(round(focal * obj.scale[0] / depth)))
                a, b = (tuple(int(round(v)) for v in q) for q in uv)
                cv2.line(out, a, b, color, width, cv2.LINE_8)
        elif obj.kind in ("sphere", "cube", "capsule"):
            uv, _ = to_px(p)
            radius = max(1, int(round(focal * obj.scale[0] / 2 / depth)))
            cv2.circle(out, tuple(int(round(v)) for v in uv[0]), radius, color, -1, cv2.LINE_8)
        elif obj.kind in ("quad", "plane"):
            hx, hy = R[:, 0] * obj.scale[0] / 2, R[:, 1] * obj.scale[1] / 2
            corners = np.array([p - hx + hy, p + hx + hy, p + hx - hy, p - hx - hy])
            uv, z = to_px(corners)
            if (z > 0.05).all():
                _draw_quad(out, uv, obj, color)
        elif obj.kind == "text" and obj.text:
            uv, _ = to_px(p)
            scale = max(0.3, min(1.2, focal * obj.font_size / depth / 40))
            org = tuple(int(round(v)) for v in uv[0])
            words = _ascii(obj.text)
            # A dark outline from offset copies: a thicker stroke would also widen the advance.
            for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1)):
                cv2.putText(out, words, (org[0] + dx, org[1] + dy), cv2.FONT_HERSHEY_SIMPLEX, scale,
                            (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(out, words, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
    return out


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only (the headset's TextMeshPro draws all)."""
    for symbol, plain in (("±", "+/-"), ("²", "2"), ("°", " deg"), ("·", "|")):
        text = text.replace(symbol, plain)
    return text.encode("ascii", "replace").decode()


def _draw_quad(out: np.ndarray, uv: np.ndarray, obj: SceneObject, color) -> None:
    texture = None
    if obj.texture:
        texture = cv2.imdecode(np.frombuffer(obj.texture, np.uint8), cv2.IMREAD_COLOR)
    polygon = np.round(uv).astype(np.int32)
    if texture is None:
        cv2.fillConvexPoly(out, polygon, color)
        return
    h, w = texture.shape[:2]
    # Unity's quad shows its texture upright when seen from its front (-Z side).
    source = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    M = cv2.getPerspectiveTransform(source, uv.astype(np.float32))
    warped = cv2.warpPerspective(texture, M, (out.shape[1], out.shape[0]))
    mask = np.zeros(out.shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, polygon, 255)
    out[mask > 0] = warped[mask > 0]


async def write_previews(headset: SimulatedHeadset, directory: Path, every_s: float = 1.0) -> None:
    """Write the wearer's view as numbered JPEGs, one every `every_s`, until cancelled."""
    directory.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    n = 0
    while True:
        picture = await loop.run_in_executor(None, headset.preview)
        await loop.run_in_executor(None, cv2.imwrite, str(directory / f"preview-{n:05d}.jpg"), picture)
        n += 1
        await asyncio.sleep(every_s)
