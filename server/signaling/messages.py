"""The GoldenHour message schema: one set of typed messages for the signaling
WebSocket and the data channels, carried as msgpack (binary) or JSON (text).

Every byte from outside is decoded and validated here, once, into a typed
message; code behind this module never re-checks. docs/protocol.md is the
human-readable version of this file and must change with it.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Literal, Union

import msgpack
import msgspec

PROTOCOL_VERSION = 1
#: Largest message we accept on the signaling socket or a data channel. An SDP
#: with many candidates is a few kB; 64 KiB leaves room and bounds the work a
#: hostile client can make us do.
MAX_MESSAGE_BYTES = 64 * 1024

Role = Literal["crew", "expert", "observer"]
RoomName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Sdp = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MESSAGE_BYTES)]
RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Uint32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PixelCount = Annotated[int, msgspec.Meta(gt=0, le=16384)]


class ProtocolError(Exception):
    """A message we cannot accept; `code` is machine-readable, str() is for people."""

    def __init__(self, code: str, message: str, ref_type: str | None = None,
                 ref_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.ref_type = ref_type
        self.ref_id = ref_id


class _Message(msgspec.Struct, tag_field="type", forbid_unknown_fields=False, kw_only=True):
    """Base of every message; `id` lets a client match a reply (or an error) to a request."""

    id: RequestId | None = None


# --- client -> server, on the signaling WebSocket ---------------------------

class Join(_Message, tag="join"):
    room: RoomName
    role: Role
    name: DisplayName
    #: Reserved for the signed, role-bearing room token of a later release.
    #: Accepted and ignored today unless the server is configured to require it.
    token: str | None = None
    #: Ask the server to create the room if it does not exist (crew only).
    create: bool = False


#: What a published video track shows: the headset's camera (the default) or
#: an ultrasound probe, whose frames the server decodes and runs a model on.
VideoSource = Literal["camera", "ultrasound"]


class PublishOffer(_Message, tag="publish"):
    sdp: Sdp
    #: The source of each video m-line of the offer, by mid; unnamed ones are cameras.
    sources: Annotated[dict[Annotated[str, msgspec.Meta(max_length=32)], VideoSource],
                       msgspec.Meta(max_length=16)] | None = None


class SubscribeAnswer(_Message, tag="subscribe_answer"):
    sdp: Sdp
    revision: Annotated[int, msgspec.Meta(ge=1)]


class IceCandidate(_Message, tag="ice"):
    pc: Literal["publish", "subscribe"]
    candidate: Annotated[str, msgspec.Meta(max_length=1024)]
    sdp_mid: str | None = None
    sdp_mline_index: Annotated[int, msgspec.Meta(ge=0, le=64)] | None = None


class Leave(_Message, tag="leave"):
    pass


class Ping(_Message, tag="ping"):
    pass


# --- annotations (signaling WebSocket, both ways) ----------------------------

#: Points in one drawn shape; a freehand stroke sampled at 60 Hz for 30 s.
MAX_SHAPE_POINTS = 2048
UvPoint = Annotated[list[Annotated[float, msgspec.Meta(ge=-1e6, le=1e6)]], msgspec.Meta(min_length=2, max_length=2)]
ShapeKindName = Literal["point", "label", "stroke", "arrow", "ellipse", "polygon", "ruler", "angle"]
#: A shared image travels inside one message: 44 KiB of JPEG/PNG (base64 in JSON).
MAX_IMAGE_BYTES = 44 * 1024
Color = Annotated[str, msgspec.Meta(pattern=r"^#[0-9a-fA-F]{6}$")]
ClientRef = Annotated[str, msgspec.Meta(max_length=64)]


class Annotate(_Message, tag="annotate", forbid_unknown_fields=True):
    """An expert's drawing on one frame of a crew's video, to be anchored in 3D.

    Unknown fields are refused, not ignored: the server names the author, and a
    client that sends `author_name` (say) must hear that it is not its to set."""

    #: The crew video track it was drawn on (TrackInfo.producer_id).
    producer_id: Annotated[str, msgspec.Meta(max_length=64)]
    #: The drawn frame's RTP timestamp on the publisher's clock (seen minus the
    #: track's rtp_timestamp_offset, mod 2**32): selects the pose to anchor with.
    rtp_timestamp: Uint32
    kind: ShapeKindName
    #: The shape in normalised image coordinates [u, v], 0..1 from the top-left corner.
    points: Annotated[list[UvPoint], msgspec.Meta(min_length=1, max_length=MAX_SHAPE_POINTS)]
    text: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    #: The client's own name for it (e.g. for undo before the id arrives).
    client_ref: ClientRef | None = None


class ShareImage(_Message, tag="share_image", forbid_unknown_fields=True):
    """An expert shares an image (a CT key image, a diagram): the crew's glasses
    show it as a panel hanging where `point` lands in the scene."""

    producer_id: Annotated[str, msgspec.Meta(max_length=64)]
    rtp_timestamp: Uint32
    point: UvPoint
    mime: Literal["image/jpeg", "image/png"]
    data: Annotated[bytes, msgspec.Meta(min_length=16, max_length=MAX_IMAGE_BYTES)]
    title: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    client_ref: ClientRef | None = None


class FreezeFrame(_Message, tag="freeze_frame"):
    """The expert paused on this frame to draw on it: keep its pose until the
    expert's next freeze or leave (the pose history holds only the last 10 s)."""

    producer_id: Annotated[str, msgspec.Meta(max_length=64)]
    rtp_timestamp: Uint32


class FrameFrozen(_Message, tag="frame_frozen"):
    """The reply to freeze_frame: annotations on this frame will anchor with its pose."""

    producer_id: str
    rtp_timestamp: int


class AnnotationDelete(_Message, tag="annotation_delete"):
    annotation_id: Annotated[str, msgspec.Meta(max_length=64)]


class AnnotationClear(_Message, tag="annotation_clear"):
    """Delete all of the sender's own annotations."""


class AnnotationRestore(_Message, tag="annotation_restore"):
    """Put back one of the sender's own deleted annotations, exactly as it was anchored (redo)."""

    annotation_id: Annotated[str, msgspec.Meta(max_length=64)]


class Laser(_Message, tag="laser"):
    """An ephemeral pointer on a crew's video: anchored and relayed, never stored."""

    producer_id: Annotated[str, msgspec.Meta(max_length=64)]
    rtp_timestamp: Uint32
    point: UvPoint


class MapBlock(_Message, tag="map_block"):
    """One block of a crew's spatial map (world frame, metres): added or replaced."""

    block_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    #: x, y, z of each vertex, flattened.
    vertices: Annotated[list[float], msgspec.Meta(min_length=9, max_length=3 * 2000)]
    #: Vertex indices, three per triangle, flattened.
    triangles: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=1999)]], msgspec.Meta(min_length=3, max_length=3 * 4000)]


class MapBlockRemove(_Message, tag="map_block_remove"):
    block_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class WatchLobby(_Message, tag="watch_lobby"):
    """Before (or instead of) joining: hear every crew's guidance request."""


class RequestGuidance(_Message, tag="request_guidance"):
    """A crew asks for an expert (the lobby alerts on it)."""

    reason: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class MeasurementInfo(msgspec.Struct, kw_only=True):
    name: str  #: distance, length, area, perimeter, angle
    value: float
    sigma: float  #: one standard deviation, same unit
    unit: str  #: mm, mm², deg
    on_map: bool  #: False when a point it depends on missed the map


class AnnotationInfo(_Message, tag="annotation"):
    """An anchored annotation (server -> every peer of the room)."""

    annotation_id: str
    author_peer_id: str
    author_name: str
    color: str
    kind: str
    text: str | None
    crew_peer_id: str
    producer_id: str
    rtp_timestamp: int
    #: Per anchored point: world position (m), unit normal, how it was anchored
    #: (0 on the map, 1 on a fitted plane, 2 at the default depth), 1-sigma error (m).
    points_world_m: list[list[float]]
    normals_world: list[list[float]]
    anchoring: list[int]
    sigma_m: list[float]
    measurements: list[MeasurementInfo]
    created_ms: float
    #: Server time spent anchoring, milliseconds.
    anchor_ms: float
    client_ref: str | None = None
    #: kind "image" only: the shared image, and its panel's size in metres.
    image_mime: str | None = None
    image_data: bytes | None = None
    panel_width_m: float | None = None
    panel_height_m: float | None = None


class AnnotationVisibility(_Message, tag="annotation_visibility"):
    """Which anchored points the map hides from one recent frame of a crew's camera
    (server -> peers, a few times a second while annotations exist)."""

    producer_id: str
    rtp_timestamp: int
    #: annotation_id -> runs [start, end) of point indices hidden behind the map.
    occluded: dict[str, list[list[int]]]


class AnnotationsRemoved(_Message, tag="annotations_removed"):
    annotation_ids: list[str]
    by_peer_id: str


class LaserInfo(_Message, tag="laser_point"):
    author_peer_id: str
    color: str
    producer_id: str
    rtp_timestamp: int
    point_world_m: list[float]
    anchoring: int


class GuidanceRequested(_Message, tag="guidance_requested"):
    room: str
    peer_id: str
    name: str
    reason: str | None
    time_ms: float


class MapBlockStored(_Message, tag="map_block_stored"):
    """The reply to map_block: the block is in the map and anchoring uses it."""

    block_id: str
    triangles: int


AnnotationMessage = Union[Annotate, ShareImage, FreezeFrame, AnnotationDelete, AnnotationClear,
                          AnnotationRestore, Laser, MapBlock, MapBlockRemove]
ClientMessage = Union[Join, PublishOffer, SubscribeAnswer, IceCandidate, Leave, Ping, Annotate,
                      FreezeFrame, ShareImage,
                      AnnotationDelete, AnnotationClear, AnnotationRestore, Laser, MapBlock,
                      MapBlockRemove,
                      RequestGuidance, WatchLobby]


# --- server -> client, on the signaling WebSocket ---------------------------

class PeerInfo(msgspec.Struct, kw_only=True):
    peer_id: str
    name: str
    role: Role


class TrackInfo(msgspec.Struct, kw_only=True):
    """What one m-line of a subscribe offer carries."""

    mid: str
    producer_id: str
    peer_id: str
    kind: Literal["audio", "video"]
    codec: str
    #: Subscribers see the publisher's RTP timestamps plus this offset (mod
    #: 2**32); poses are keyed by the publisher's timestamps. 0 unless the
    #: m-line was reused after its previous producer left.
    rtp_timestamp_offset: int = 0
    #: For video: "camera" or "ultrasound" (overlays name the ultrasound track).
    source: str | None = None


class Joined(_Message, tag="joined"):
    protocol: int
    peer_id: str
    room: str
    role: Role
    peers: list[PeerInfo]
    ice_servers: list[dict]
    max_message_bytes: int


class PublishAnswer(_Message, tag="publish_answer"):
    sdp: str
    producer_ids: list[str]


class SubscribeOffer(_Message, tag="subscribe_offer"):
    sdp: str
    revision: int
    tracks: list[TrackInfo]


class PeerJoined(_Message, tag="peer_joined"):
    peer: PeerInfo


class PeerLeft(_Message, tag="peer_left"):
    peer_id: str


class Pong(_Message, tag="pong"):
    pass


class Error(_Message, tag="error"):
    code: str
    message: str
    #: The `type` of the message that caused the error, when known.
    ref_type: str | None = None


ServerMessage = Union[Joined, PublishAnswer, SubscribeOffer, PeerJoined, PeerLeft, Pong, Error]


# --- data channel "goldenhour" ----------------------------------------------

class Intrinsics(msgspec.Struct, kw_only=True):
    """Pinhole intrinsics in pixels of the encoded frame (OpenCV's model)."""

    width: PixelCount
    height: PixelCount
    fx: PositiveFloat
    fy: PositiveFloat
    cx: float
    cy: float
    #: OpenCV distortion coefficients k1, k2, p1, p2[, k3]; empty means none.
    distortion: Annotated[list[float], msgspec.Meta(max_length=8)] = []


class CameraPose(_Message, tag="pose"):
    """The camera pose of one video frame, keyed by the frame's RTP timestamp."""

    rtp_timestamp: Uint32
    #: Camera-to-world 4x4, row-major, metres (docs/geometry.md).
    T_world_camera: Annotated[list[float], msgspec.Meta(min_length=16, max_length=16)]
    intrinsics: Intrinsics
    capture_time_ms: Annotated[float, msgspec.Meta(ge=0, le=1e15)] | None = None
    frame_id: Annotated[int, msgspec.Meta(ge=0, le=2**53)] | None = None
    #: Filled in by the server when it relays the pose to subscribers.
    producer_id: str | None = None
    peer_id: str | None = None


DataMessage = Union[CameraPose, Error]


class Overlay(_Message, tag="overlay"):
    """A model's result about one frame of an ultrasound track (server -> clients)."""

    #: The ultrasound track and its publisher.
    producer_id: str
    peer_id: str
    #: The frame's RTP timestamp on the publisher's clock (add the track's
    #: rtp_timestamp_offset to find it among the frames a subscriber receives).
    rtp_timestamp: Uint32
    model: str
    version: str
    probability: float
    threshold: float
    positive: bool
    #: Outlines (map >= 0.5) as polygons of [u, v], normalised to the frame
    #: (0..1, origin top-left).
    contours: list[list[list[float]]]
    frame_width: int
    frame_height: int
    not_for_clinical_use: bool
    #: Where the input came from: track, frame, gate notes.
    input: dict
    inference_ms: float


# --- codec ------------------------------------------------------------------



def _convert(obj: object, union: object) -> object:
    if not isinstance(obj, dict):
        raise ProtocolError("invalid_message", "a message must be a map/object")
    msg_type = obj.get("type")
    if not isinstance(msg_type, str):
        raise ProtocolError("invalid_message", "a message needs a string field `type`")
    raw_id = obj.get("id")
    # Echo an id only when it is one (a bool is an int to Python; a huge int
    # would not even encode).
    ref_id = raw_id if type(raw_id) is int and 0 <= raw_id <= 2**53 else None
    try:
        return msgspec.convert(obj, union, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "Invalid value" in text and "$.type" in text:
            raise ProtocolError("unknown_type", f"unknown message type {msg_type!r}",
                                msg_type, ref_id) from None
        raise ProtocolError("invalid_field", f"{msg_type}: {text}", msg_type, ref_id) from None


def parse_frame(frame: bytes | str, union: object) -> tuple[object, bool]:
    """Decode one frame into a typed message of `union`.

    Binary frames are msgpack, text frames are JSON; returns the message and
    whether it came as binary, so that replies use the sender's encoding.
    Raises ProtocolError naming the problem.
    """
    binary = isinstance(frame, (bytes, bytearray, memoryview))
    size = len(frame) if binary else len(frame.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError("message_too_large",
                            f"message of {size} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    try:
        if binary:
            obj = msgpack.unpackb(bytes(frame), raw=False, strict_map_key=True)
        else:
            obj = json.loads(frame)
    except RecursionError:
        raise ProtocolError("malformed", "malformed message: nested too deeply") from None
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        kind = "msgpack" if binary else "JSON"
        raise ProtocolError("malformed", f"malformed {kind}: {exc}") from None
    return _convert(obj, union), binary


def validate_pose(pose: CameraPose) -> None:
    """Reject poses whose matrix is not a rigid camera-to-world transform."""
    m = pose.T_world_camera
    if not all(math.isfinite(v) for v in m):
        raise ProtocolError("invalid_field", "pose: T_world_camera has a non-finite value", "pose")
    if max(abs(m[12]), abs(m[13]), abs(m[14]), abs(m[15] - 1.0)) > 1e-6:
        raise ProtocolError("invalid_field", "pose: T_world_camera's last row must be 0 0 0 1",
                            "pose")
    rows = [m[0:3], m[4:7], m[8:11]]
    for i in range(3):
        for j in range(3):
            dot = sum(rows[i][k] * rows[j][k] for k in range(3))
            if abs(dot - (1.0 if i == j else 0.0)) > 1e-3:
                raise ProtocolError("invalid_field",
                                    "pose: T_world_camera's rotation is not orthonormal", "pose")


def encode(message: msgspec.Struct, binary: bool) -> bytes | str:
    """Encode a message for the wire, in the encoding the peer used."""
    obj = msgspec.to_builtins(message)
    obj = {k: v for k, v in obj.items() if v is not None}
    if binary:
        return msgpack.packb(obj, use_bin_type=True)
    return json.dumps(obj, separators=(",", ":"))


def error_for(exc: ProtocolError) -> Error:
    return Error(code=exc.code, message=str(exc), ref_type=exc.ref_type, id=exc.ref_id)
