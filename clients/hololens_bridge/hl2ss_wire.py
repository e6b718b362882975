"""hl2ss's wire format (HoloLens 2 Sensor Streaming), both directions, as pure functions.

Written from the format's description (docs/hololens.md, "Wire format"), not
from hl2ss's code: that code's licence (BSD-3 with the Commons Clause) keeps
it out of this project. The bridge uses the client side; the simulated headset
uses the server side, so tests exercise the bytes a real headset sends.

Everything is little-endian and packed. Timestamps are 100 ns ticks. Poses are
float32 4x4 in the row-vector convention (translation in the last row), in a
right-handed frame with the camera looking along -Z: `T_world_camera_from_hl2ss`
turns one into our camera-to-world pose (OpenCV camera axes, docs/geometry.md).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

import numpy as np


class Port:
    REMOTE_CONFIGURATION = 3809
    PERSONAL_VIDEO = 3810
    MICROPHONE = 3811
    SPATIAL_MAPPING = 3813
    UNITY_MESSAGE_QUEUE = 3816


DEFAULT_PORTS = {"pv": Port.PERSONAL_VIDEO, "microphone": Port.MICROPHONE,
                 "spatial_mapping": Port.SPATIAL_MAPPING, "unity": Port.UNITY_MESSAGE_QUEUE,
                 "remote_configuration": Port.REMOTE_CONFIGURATION}


class WireError(ValueError):
    """Bytes from a headset that do not follow the format."""


# --- stream framing -------------------------------------------------------------

HEADER = struct.Struct("<QI")  # timestamp (100 ns), payload size
POSE_BYTES = 64
#: A payload bigger than this is a broken stream, not a video frame.
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024


def encode_packet(timestamp_100ns: int, payload: bytes, pose: np.ndarray | None = None) -> bytes:
    out = HEADER.pack(timestamp_100ns, len(payload)) + payload
    if pose is not None:
        out += np.asarray(pose, dtype="<f4").reshape(16).tobytes()
    return out


@dataclass
class StreamPacket:
    timestamp_100ns: int
    payload: bytes
    pose: np.ndarray | None  # (4, 4) float32 as sent (row-vector convention), or None


async def read_packet(reader, with_pose: bool) -> StreamPacket:
    """Read one packet from an asyncio StreamReader (IncompleteReadError at the end)."""
    timestamp, size = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_PAYLOAD_BYTES:
        raise WireError(f"packet payload of {size} bytes exceeds {MAX_PAYLOAD_BYTES}")
    payload = await reader.readexactly(size)
    pose = None
    if with_pose:
        pose = np.frombuffer(await reader.readexactly(POSE_BYTES), dtype="<f4").reshape(4, 4)
    return StreamPacket(timestamp, payload, pose)


# --- poses ----------------------------------------------------------------------

#: hl2ss's camera looks along -Z with +Y up; OpenCV's along +Z with +Y down.
_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


def T_world_camera_from_hl2ss(pose_rowvec: np.ndarray) -> np.ndarray | None:
    """Our T_world_camera (column vectors, OpenCV camera axes) from an hl2ss pose;
    None for the all-zero pose a headset sends when it could not locate the frame.
    hl2ss's world frame (right-handed, +Y up, metres) is taken as ours."""
    pose = np.asarray(pose_rowvec, dtype=np.float64).reshape(4, 4)
    if pose[3, 3] == 0.0:
        return None
    return pose.T @ _FLIP_YZ


def hl2ss_from_T_world_camera(T_world_camera: np.ndarray) -> np.ndarray:
    """The inverse of T_world_camera_from_hl2ss, as float32 on the wire."""
    return (np.asarray(T_world_camera, dtype=np.float64) @ _FLIP_YZ).T.astype(np.float32)


# --- remote configuration: the headset clock ------------------------------------

RC_GET_UTC_OFFSET = 0x01
#: 1601-01-01 (FILETIME's epoch) to 1970-01-01, in 100 ns ticks.
FILETIME_UNIX_EPOCH_100NS = 116_444_736_000_000_000


def unix_ms_from_headset(timestamp_100ns: int, utc_offset_100ns: int) -> float:
    """A stream timestamp (the headset's QPC clock) as Unix milliseconds: hl2ss's
    remote configuration gives the offset that makes it a FILETIME."""
    return (timestamp_100ns + utc_offset_100ns - FILETIME_UNIX_EPOCH_100NS) / 10_000


# --- personal video (PV) ----------------------------------------------------------

MODE_DATA, MODE_DATA_POSE, MODE_CALIBRATION = 0, 1, 2
PV_START, PV_STOP = 0x04, 0x08
PROFILE_H264_BASE, PROFILE_H264_MAIN, PROFILE_H264_HIGH, PROFILE_H265_MAIN = 0, 1, 2, 3
OPTION_GOP_SIZE = 10
_PV_START_OPTIONS = struct.Struct("<7BfffII")


@dataclass(frozen=True)
class PvStart:
    """The block that opens the PV subsystem (sent on the PV port, which then closes).
    Mixed-reality capture (holograms composited into the video) is off: the
    experts need the real scene, and the server re-draws annotations itself."""

    enable_mrc: bool = False
    hologram_composition: bool = True
    recording_indicator: bool = False
    video_stabilization: bool = False
    blank_protected: bool = False
    show_mesh: bool = False
    shared: bool = False
    global_opacity: float = 0.9
    output_width: float = 0.0
    output_height: float = 0.0
    video_stabilization_length: int = 0
    hologram_perspective: int = 1

    def encode(self) -> bytes:
        return bytes([PV_START | 3]) + _PV_START_OPTIONS.pack(
            self.enable_mrc, self.hologram_composition, self.recording_indicator,
            self.video_stabilization, self.blank_protected, self.show_mesh, self.shared,
            self.global_opacity, self.output_width, self.output_height,
            self.video_stabilization_length, self.hologram_perspective)

    @classmethod
    def decode_options(cls, data: bytes) -> PvStart:
        values = _PV_START_OPTIONS.unpack(data)
        return cls(*(bool(v) for v in values[:7]), *values[7:])


PV_START_OPTIONS_BYTES = _PV_START_OPTIONS.size  # 27
_PV_CONFIG = struct.Struct("<BHHBBBBIB")


@dataclass(frozen=True)
class PvConfig:
    """What the client asks the PV stream for (mode 1: frames with poses)."""

    width: int = 1280
    height: int = 720
    framerate: int = 30
    divisor: int = 1
    profile: int = PROFILE_H264_BASE
    level: int = 0xFF  # the encoder's default
    bitrate: int = 2_500_000
    mode: int = MODE_DATA_POSE
    options: tuple[tuple[int, int], ...] = ((OPTION_GOP_SIZE, 30),)

    def encode(self) -> bytes:
        head = _PV_CONFIG.pack(self.mode, self.width, self.height, self.framerate, self.divisor,
                               self.profile, self.level, self.bitrate, len(self.options))
        return head + b"".join(struct.pack("<QQ", k, v) for k, v in self.options)

    @classmethod
    async def read_rest(cls, mode: int, reader) -> PvConfig:
        """The configuration after its mode byte (the server side reads it)."""
        rest = await reader.readexactly(_PV_CONFIG.size - 1)
        _, width, height, framerate, divisor, profile, level, bitrate, count = _PV_CONFIG.unpack(
            bytes([mode]) + rest)
        options = [struct.unpack("<QQ", await reader.readexactly(16)) for _ in range(count)]
        if width == 0 or height == 0 or framerate == 0 or divisor == 0 or bitrate == 0:
            raise WireError("PV configuration with a zero width, height, framerate, divisor or bitrate")
        return cls(width, height, framerate, divisor, profile, level, bitrate, mode & 3,
                   tuple((int(k), int(v)) for k, v in options))


_PV_METADATA = struct.Struct("<ffffQQQIIIIfffffHH")
PV_METADATA_BYTES = _PV_METADATA.size  # 80


@dataclass(frozen=True)
class PvMetadata:
    """The 80 bytes after each PV frame: per-frame intrinsics and exposure."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    exposure_time_100ns: int = 0
    iso_speed: int = 0
    white_balance_k: int = 0

    def encode(self) -> bytes:
        return _PV_METADATA.pack(self.fx, self.fy, self.cx, self.cy, self.exposure_time_100ns,
                                 0, 0, 0, 3, self.iso_speed, self.white_balance_k,
                                 1.0, 1.0, 1.0, 1.0, 1.0, self.width, self.height)

    @classmethod
    def decode(cls, data: bytes) -> PvMetadata:
        v = _PV_METADATA.unpack(data)
        return cls(fx=v[0], fy=v[1], cx=v[2], cy=v[3], width=v[16], height=v[17],
                   exposure_time_100ns=v[4], iso_speed=v[9], white_balance_k=v[10])


@dataclass
class PvFrame:
    """One PV frame as the bridge uses it."""

    timestamp_100ns: int
    annex_b: bytes  # one H.264 access unit, start codes included, leading AUD removed
    metadata: PvMetadata
    T_world_camera: np.ndarray | None  # ours (OpenCV camera axes), None if not located
    received_s: float = 0.0  # time.perf_counter() when its last byte arrived
    capture_unix_ms: float | None = None  # when the headset's clock offset is known


_AUD_H264 = b"\x00\x00\x00\x01\x09"


def split_pv_payload(payload: bytes) -> tuple[bytes, PvMetadata]:
    """(the access unit without its leading access-unit delimiter, the metadata)."""
    if len(payload) < PV_METADATA_BYTES:
        raise WireError(f"PV payload of {len(payload)} bytes is shorter than its metadata")
    video = payload[:-PV_METADATA_BYTES]
    if video.startswith(_AUD_H264):
        video = video[6:]
    return bytes(video), PvMetadata.decode(payload[-PV_METADATA_BYTES:])


# --- microphone -----------------------------------------------------------------

MIC_PROFILE_RAW = 0xFF
MIC_LEVEL_DEFAULT = 0x29
MIC_SAMPLE_RATE = 48000
MIC_CHANNELS = 2


def mic_config(profile: int = MIC_PROFILE_RAW, level: int = MIC_LEVEL_DEFAULT) -> bytes:
    return bytes([profile, level])


def pcm_from_mic_payload(payload: bytes) -> np.ndarray:
    """Raw microphone payload (s16le, interleaved stereo) as (n, 2) int16."""
    if len(payload) % (2 * MIC_CHANNELS):
        raise WireError(f"raw microphone payload of {len(payload)} bytes is not whole stereo samples")
    return np.frombuffer(payload, dtype="<i2").reshape(-1, MIC_CHANNELS)


# --- spatial mapping --------------------------------------------------------------

SM_SET_VOLUMES, SM_GET_SURFACES, SM_GET_MESHES = 0x00, 0x01, 0x02
SM_VOLUME_SPHERE = 3
SM_FORMAT_FLOAT4, SM_FORMAT_SNORM16x4 = 2, 13
SM_INDEX_UINT32, SM_INDEX_UINT16 = 42, 57
SM_NORMAL_FLOAT4 = 2
_SM_SURFACE = struct.Struct("<16sq")
_SM_TASK = struct.Struct("<16sdIIII")
_SM_MESH_HEADER = struct.Struct("<IIIII3f16f10f")
SM_MESH_HEADER_BYTES = _SM_MESH_HEADER.size  # 136


def sm_set_sphere_volume(center_m: tuple[float, float, float], radius_m: float) -> bytes:
    return struct.pack("<BBI4f", SM_SET_VOLUMES, 1, SM_VOLUME_SPHERE, *center_m, radius_m)


@dataclass(frozen=True)
class SurfaceInfo:
    surface_id: bytes  # 16-byte GUID, opaque
    update_time: int  # FILETIME ticks

    @property
    def name(self) -> str:
        return str(uuid.UUID(bytes_le=self.surface_id))


def encode_surfaces(surfaces: list[SurfaceInfo]) -> bytes:
    return struct.pack("<I", len(surfaces)) + b"".join(
        _SM_SURFACE.pack(s.surface_id, s.update_time) for s in surfaces)


async def read_surfaces(reader) -> list[SurfaceInfo]:
    (count,) = struct.unpack("<I", await reader.readexactly(4))
    if count > 100_000:
        raise WireError(f"{count} surfaces is not a plausible spatial map")
    data = await reader.readexactly(count * _SM_SURFACE.size)
    return [SurfaceInfo(*_SM_SURFACE.unpack_from(data, i * _SM_SURFACE.size)) for i in range(count)]


def sm_get_meshes(surface_ids: list[bytes], max_triangles_per_m3: float = 1000.0) -> bytes:
    return struct.pack("<BI", SM_GET_MESHES, len(surface_ids)) + b"".join(
        _SM_TASK.pack(sid, max_triangles_per_m3, SM_FORMAT_FLOAT4, SM_INDEX_UINT32,
                      SM_NORMAL_FLOAT4, 0) for sid in surface_ids)


def decode_mesh_tasks(data: bytes) -> list[tuple[bytes, float, int, int, int]]:
    return [_SM_TASK.unpack_from(data, i * _SM_TASK.size)[:5] for i in range(len(data) // _SM_TASK.size)]


@dataclass
class SurfaceMesh:
    """One spatial-mapping surface, in world coordinates (metres)."""

    index: int
    status: int  # 0 ok, 1 unknown id, 2 failed
    vertices_world_m: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    triangles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))


def encode_mesh(index: int, vertices_mesh: np.ndarray, triangles: np.ndarray,
                pose_mesh_to_world_rowvec: np.ndarray, position_format: int = SM_FORMAT_FLOAT4,
                index_format: int = SM_INDEX_UINT32, status: int = 0) -> bytes:
    """A get-meshes reply record (the server side)."""
    if status != 0:
        return _SM_MESH_HEADER.pack(index, status, 0, 0, 0, *([0.0] * 29))
    n = len(vertices_mesh)
    if position_format == SM_FORMAT_SNORM16x4:
        scale = np.maximum(np.abs(vertices_mesh).max(axis=0), 1e-6)
        q = np.round(vertices_mesh / scale * 32767).astype("<i2")
        positions = np.column_stack([q, np.full(n, 32767, "<i2")]).astype("<i2").tobytes()
    else:
        scale = np.ones(3)
        positions = np.column_stack([vertices_mesh, np.ones(n)]).astype("<f4").tobytes()
    indices = np.asarray(triangles, dtype="<u4" if index_format == SM_INDEX_UINT32 else "<u2").tobytes()
    normals = np.tile(np.array([0, 1, 0, 0], "<f4"), n).tobytes()
    pose = np.asarray(pose_mesh_to_world_rowvec, dtype=np.float32).reshape(16)
    header = _SM_MESH_HEADER.pack(index, 0, len(positions), len(indices), len(normals),
                                  *scale.astype(np.float32), *pose, *([0.0] * 10))
    return header + positions + indices + normals


async def read_mesh(reader, position_format: int = SM_FORMAT_FLOAT4,
                    index_format: int = SM_INDEX_UINT32) -> SurfaceMesh:
    """One get-meshes reply record, with vertices taken to world coordinates."""
    header = _SM_MESH_HEADER.unpack(await reader.readexactly(SM_MESH_HEADER_BYTES))
    index, status, vpl, til, vnl = header[:5]
    if max(vpl, til, vnl) > MAX_PAYLOAD_BYTES:
        raise WireError("spatial-mapping mesh larger than the packet limit")
    vertex_bytes = 8 if position_format == SM_FORMAT_SNORM16x4 else 16
    triangle_bytes = 12 if index_format == SM_INDEX_UINT32 else 6
    if vpl % vertex_bytes or til % triangle_bytes:
        raise WireError(f"spatial-mapping mesh of {vpl} position and {til} index bytes is not whole "
                        f"vertices ({vertex_bytes} bytes) and triangles ({triangle_bytes} bytes)")
    scale = np.array(header[5:8], dtype=np.float64)
    pose = np.array(header[8:24], dtype=np.float64).reshape(4, 4)
    positions = await reader.readexactly(vpl)
    indices = await reader.readexactly(til)
    await reader.readexactly(vnl)  # normals: the map recomputes its own
    if status != 0:
        return SurfaceMesh(index, status)
    if position_format == SM_FORMAT_SNORM16x4:
        # SNORM values stay integers: p = xyz * scale / w, as the format defines it.
        raw = np.frombuffer(positions, dtype="<i2").reshape(-1, 4).astype(np.float64)
    else:
        raw = np.frombuffer(positions, dtype="<f4").reshape(-1, 4).astype(np.float64)
    w = np.where(raw[:, 3] == 0, 1.0, raw[:, 3])
    local = raw[:, :3] * scale / w[:, None]
    world = np.column_stack([local, np.ones(len(local))]) @ pose
    dtype = "<u4" if index_format == SM_INDEX_UINT32 else "<u2"
    triangles = np.frombuffer(indices, dtype=dtype).reshape(-1, 3).astype(np.int64)
    if len(triangles) and triangles.max() >= len(world):
        raise WireError("spatial-mapping mesh indexes a vertex it does not have")
    return SurfaceMesh(index, 0, world[:, :3], triangles)


# --- Unity message queue and remote-scene commands ---------------------------------

_MESSAGE = struct.Struct("<II")


class Rus:
    """Remote Unity scene command ids."""

    CREATE_PRIMITIVE = 0
    SET_ACTIVE = 1
    SET_WORLD_TRANSFORM = 2
    SET_LOCAL_TRANSFORM = 3
    SET_COLOR = 4
    SET_TEXTURE = 5
    CREATE_TEXT = 6
    SET_TEXT = 7
    SAY = 8
    REMOVE = 16
    REMOVE_ALL = 17
    BEGIN_DISPLAY_LIST = 18
    END_DISPLAY_LIST = 19
    SET_TARGET_MODE = 20


PRIMITIVES = {"sphere": 0, "capsule": 1, "cylinder": 2, "cube": 3, "plane": 4, "quad": 5}
PRIMITIVE_NAMES = {v: k for k, v in PRIMITIVES.items()}
TARGET_USE_ID, TARGET_USE_LAST = 0, 1


@dataclass(frozen=True)
class Command:
    """One remote-scene message: its id and data bytes."""

    command: int
    data: bytes = b""

    def encode(self) -> bytes:
        return _MESSAGE.pack(self.command, len(self.data)) + self.data


def create_primitive(kind: str) -> Command:
    return Command(Rus.CREATE_PRIMITIVE, struct.pack("<I", PRIMITIVES[kind]))


def create_text() -> Command:
    return Command(Rus.CREATE_TEXT)


def set_active(key: int, active: bool) -> Command:
    return Command(Rus.SET_ACTIVE, struct.pack("<II", key, int(active)))


def set_world_transform(key: int, position, rotation_xyzw, scale) -> Command:
    return Command(Rus.SET_WORLD_TRANSFORM, struct.pack("<I10f", key, *position, *rotation_xyzw, *scale))


def set_color(key: int, rgba) -> Command:
    return Command(Rus.SET_COLOR, struct.pack("<I4f", key, *rgba))


def set_texture(key: int, image_file: bytes) -> Command:
    return Command(Rus.SET_TEXTURE, struct.pack("<I", key) + image_file)


def set_text(key: int, font_size: float, rgba, text: str) -> Command:
    return Command(Rus.SET_TEXT, struct.pack("<I5f", key, font_size, *rgba) + text.encode("utf-8"))


def remove(key: int) -> Command:
    return Command(Rus.REMOVE, struct.pack("<I", key))


def remove_all() -> Command:
    return Command(Rus.REMOVE_ALL)


def begin_display_list() -> Command:
    return Command(Rus.BEGIN_DISPLAY_LIST)


def end_display_list() -> Command:
    return Command(Rus.END_DISPLAY_LIST)


def set_target_mode(mode: int) -> Command:
    return Command(Rus.SET_TARGET_MODE, struct.pack("<I", mode))


async def read_command(reader) -> Command:
    """One message from a client (the headset's side)."""
    command, size = _MESSAGE.unpack(await reader.readexactly(_MESSAGE.size))
    if size > MAX_PAYLOAD_BYTES:
        raise WireError(f"Unity message of {size} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return Command(command, await reader.readexactly(size))


def describe(command: Command) -> tuple:
    """A command as plain values, for logs and exact checks in tests."""
    c, d = command.command, command.data
    if c == Rus.CREATE_PRIMITIVE:
        return ("create_primitive", PRIMITIVE_NAMES.get(struct.unpack("<I", d)[0], "quad"))
    if c == Rus.CREATE_TEXT:
        return ("create_text",)
    if c == Rus.SET_ACTIVE:
        return ("set_active", *struct.unpack("<II", d))
    if c == Rus.SET_WORLD_TRANSFORM:
        v = struct.unpack("<I10f", d)
        return ("set_world_transform", v[0], v[1:4], v[4:8], v[8:11])
    if c == Rus.SET_COLOR:
        v = struct.unpack("<I4f", d)
        return ("set_color", v[0], v[1:5])
    if c == Rus.SET_TEXTURE:
        return ("set_texture", struct.unpack("<I", d[:4])[0], len(d) - 4)
    if c == Rus.SET_TEXT:
        v = struct.unpack("<I5f", d[:24])
        return ("set_text", v[0], v[1], v[2:6], d[24:].decode("utf-8"))
    if c == Rus.REMOVE:
        return ("remove", struct.unpack("<I", d)[0])
    if c == Rus.SET_TARGET_MODE:
        return ("set_target_mode", struct.unpack("<I", d)[0])
    names = {Rus.REMOVE_ALL: "remove_all", Rus.BEGIN_DISPLAY_LIST: "begin_display_list",
             Rus.END_DISPLAY_LIST: "end_display_list", Rus.SAY: "say"}
    return (names.get(c, f"command_{c}"),)
