"""A GoldenHour peer in Python, speaking docs/protocol.md.

The simulated crew, the headset bridge, the tests and the benchmarks all use
it: it joins a room, publishes tracks, answers the server's subscribe offers
and collects the tracks and data-channel messages it receives.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import websockets
from aiortc import (MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection,
                    RTCSessionDescription)
from aiortc.rtcdatachannel import RTCDataChannel

log = logging.getLogger(__name__)


def ssl_context_for(url: str, cafile: str | None = None, insecure: bool = False,
                    ) -> ssl.SSLContext | None:
    """The TLS context for a `wss://` server URL (None for `ws://`): trust
    `cafile` as well as the system's roots, or, with `insecure`, anything (a
    self-signed test server)."""
    if not url.startswith("wss://"):
        return None
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class ServerError(Exception):
    """An `error` message from the server in reply to one of our requests."""

    def __init__(self, message: dict) -> None:
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.code = message.get("code")
        self.message = message


@dataclass
class RemoteTrack:
    """A track we receive, with what the server's offer said about it."""

    track: MediaStreamTrack
    mid: str
    info: dict
    receiver: object = None


@dataclass
class PeerState:
    peer_id: str = ""
    peers: dict[str, dict] = field(default_factory=dict)


class GoldenHourClient:
    """One peer: a signaling WebSocket plus publish and subscribe peer connections."""

    def __init__(self, url: str, room: str, role: str, name: str, *, create: bool = False,
                 binary: bool = True, ssl_context: ssl.SSLContext | None = None,
                 ice_servers: list[dict] | None = None, token: str | None = None) -> None:
        self.url = url
        self.room = room
        self.role = role
        self.name = name
        self.state = PeerState()
        self.tracks: list[RemoteTrack] = []
        self.data_messages: list[dict] = []
        #: What the server answered on our publish data channel (errors).
        self.publish_replies: list[dict] = []
        self.errors: list[dict] = []
        #: ("joined" | "left", peer_id) in the order the server announced them.
        self.peer_events: list[tuple[str, str]] = []
        #: The room's anchored annotations as the server announced them, by id.
        self.annotations: dict[str, dict] = {}
        self.laser_points: list[dict] = []
        #: The latest `annotation_visibility`: which anchored points a crew's camera cannot see.
        self.last_visibility: dict | None = None
        self.on_track: Callable[[RemoteTrack], None] | None = None
        self.on_data: Callable[[dict], None] | None = None
        #: Called with each signaling message that is not a reply to our request.
        self.on_message: Callable[[dict], None] | None = None
        self.publish_pc: RTCPeerConnection | None = None
        self.publish_channel: RTCDataChannel | None = None
        self._create = create
        self._binary = binary
        self._ssl = ssl_context
        self._token = token
        self._rtc_config = RTCConfiguration(
            iceServers=[RTCIceServer(**s) for s in (ice_servers or [])])
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._ws: websockets.ClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._track_info: dict[str, dict] = {}
        self._subscribe_pc = RTCPeerConnection(self._rtc_config)
        self._subscribe_pc.on("track", self._on_subscribe_track)
        self._subscribe_pc.on("datachannel", self._on_subscribe_channel)
        self.subscribe_channel_open = asyncio.Event()
        self.subscribed_revision = 0
        self.last_frame_was_binary: bool | None = None
        self._activity = asyncio.Event()

    # --- connection -----------------------------------------------------------

    async def connect(self, join: bool = True) -> dict:
        """Open the signaling WebSocket and (unless join=False) join the room."""
        self._ws = await websockets.connect(self.url, ssl=self._ssl, max_size=2**20)
        self._reader = asyncio.create_task(self._read_loop())
        if not join:
            return {}
        joined = await self.request({"type": "join", "room": self.room, "role": self.role,
                                     "name": self.name, "create": self._create,
                                     "token": self._token})
        self.state.peer_id = joined["peer_id"]
        self.state.peers = {p["peer_id"]: p for p in joined["peers"]}
        return joined

    async def wait_closed(self) -> None:
        """Return when the signaling connection ends (server gone, network lost)."""
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def close(self) -> None:
        if self._ws is not None:
            try:
                await self._ws.close()
            except Exception:
                pass
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for pc in (self.publish_pc, self._subscribe_pc):
            if pc is not None:
                await pc.close()

    async def request_guidance(self, reason: str | None = None) -> dict:
        """Ask for an expert: the lobby pages alert (crew only)."""
        return await self.request({"type": "request_guidance", "reason": reason})

    async def send_raw(self, frame: bytes | str) -> None:
        """Send a frame as is (tests of the server's input validation use this)."""
        assert self._ws is not None
        await self._ws.send(frame)

    def _encode(self, message: dict) -> bytes | str:
        message = {k: v for k, v in message.items() if v is not None}
        return msgpack.packb(message) if self._binary else json.dumps(message)

    async def request(self, message: dict, timeout: float = 10.0) -> dict:
        """Send a message with a fresh `id` and wait for the reply carrying it."""
        request_id = next(self._ids)
        future = asyncio.get_event_loop().create_future()
        self._pending[request_id] = future
        await self.send_raw(self._encode({**message, "id": request_id}))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)

    async def send(self, message: dict) -> None:
        await self.send_raw(self._encode(message))

    def changed(self) -> None:
        """Tell wait_until() to re-check: something outside the client changed
        (a frame decoded by a caller's task, for instance)."""
        self._activity.set()

    async def wait_until(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        """Wait until `predicate()` holds; it is re-checked whenever a message,
        track or data-channel message arrives."""
        async with asyncio.timeout(timeout):
            while True:
                self._activity.clear()
                if predicate():
                    return
                await self._activity.wait()

    async def next_error(self, timeout: float = 5.0) -> dict:
        """Wait for the next `error` message that answered no request of ours."""
        start = len(self.errors)
        await self.wait_until(lambda: len(self.errors) > start, timeout)
        return self.errors[start]

    async def _read_loop(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            self.last_frame_was_binary = isinstance(frame, bytes)
            message = msgpack.unpackb(frame) if isinstance(frame, bytes) else json.loads(frame)
            future = self._pending.get(message.get("id"))
            if future is not None and not future.done():
                if message.get("type") == "error":
                    future.set_exception(ServerError(message))
                elif message.get("type") != "subscribe_offer":
                    if message.get("type") == "annotation":  # our own, anchored
                        self.annotations[message["annotation_id"]] = message
                    elif message.get("type") == "annotations_removed":
                        for annotation_id in message["annotation_ids"]:
                            self.annotations.pop(annotation_id, None)
                    future.set_result(message)
                    continue
            kind = message.get("type")
            self._activity.set()
            if kind == "subscribe_offer":
                await self._answer_subscribe(message)
            elif kind == "peer_joined":
                self.state.peers[message["peer"]["peer_id"]] = message["peer"]
                self.peer_events.append(("joined", message["peer"]["peer_id"]))
            elif kind == "peer_left":
                self.state.peers.pop(message["peer_id"], None)
                self.peer_events.append(("left", message["peer_id"]))
            elif kind == "annotation":
                self.annotations[message["annotation_id"]] = message
            elif kind == "annotations_removed":
                for annotation_id in message["annotation_ids"]:
                    self.annotations.pop(annotation_id, None)
            elif kind == "laser_point":
                self.laser_points.append(message)
            elif kind == "annotation_visibility":
                self.last_visibility = message
            elif kind == "error" and future is None:
                self.errors.append(message)
            if self.on_message is not None:
                self.on_message(message)

    # --- publishing -----------------------------------------------------------

    async def publish(self, tracks: list[MediaStreamTrack], data_channel: bool = False,
                      video_codec: str | None = None) -> dict:
        """Publish tracks (and open the `goldenhour` data channel); returns the answer."""
        # One publish connection per peer: a second publish renegotiates it.
        if self.publish_pc is None:
            self.publish_pc = RTCPeerConnection(self._rtc_config)
        pc = self.publish_pc
        for track in tracks:
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video" and video_codec:
                from aiortc import RTCRtpSender
                caps = [c for c in RTCRtpSender.getCapabilities("video").codecs
                        if c.mimeType.lower() in (video_codec.lower(), "video/rtx")]
                transceiver.setCodecPreferences(caps)
        if data_channel and self.publish_channel is None:
            channel = self.publish_channel = pc.createDataChannel("goldenhour")

            @channel.on("open")
            def on_open() -> None:
                self._activity.set()

            @channel.on("message")
            def on_reply(data: bytes | str) -> None:
                self.publish_replies.append(
                    msgpack.unpackb(data) if isinstance(data, bytes) else json.loads(data))
                self._activity.set()
        await pc.setLocalDescription(await pc.createOffer())
        answer = await self.request({"type": "publish", "sdp": pc.localDescription.sdp})
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        return answer

    def send_data(self, message: dict) -> None:
        """Send a message on the publish data channel (msgpack)."""
        assert self.publish_channel is not None
        self.publish_channel.send(msgpack.packb(message))

    # --- subscribing ----------------------------------------------------------

    async def _answer_subscribe(self, offer: dict) -> None:
        for info in offer["tracks"]:
            self._track_info[info["mid"]] = info
        # The server reuses a departed producer's m-line for the next one of
        # its kind: the same track then carries another peer's media.
        for remote in self.tracks:
            if remote.mid in self._track_info:
                remote.info = self._track_info[remote.mid]
        pc = self._subscribe_pc
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.send({"type": "subscribe_answer", "sdp": pc.localDescription.sdp,
                         "revision": offer["revision"]})
        self.subscribed_revision = offer["revision"]
        self._activity.set()

    def _on_subscribe_track(self, track: MediaStreamTrack) -> None:
        for transceiver in self._subscribe_pc.getTransceivers():
            if transceiver.receiver.track is track:
                remote = RemoteTrack(track=track, mid=transceiver.mid,
                                     info=self._track_info.get(transceiver.mid, {}),
                                     receiver=transceiver.receiver)
                self.tracks.append(remote)
                self._activity.set()
                if self.on_track is not None:
                    self.on_track(remote)
                return

    def _on_subscribe_channel(self, channel: RTCDataChannel) -> None:
        @channel.on("open")
        def on_open() -> None:
            self.subscribe_channel_open.set()
            self._activity.set()

        if channel.readyState == "open":
            self.subscribe_channel_open.set()

        @channel.on("message")
        def on_message(data: bytes | str) -> None:
            message = msgpack.unpackb(data) if isinstance(data, bytes) else json.loads(data)
            self.data_messages.append(message)
            self._activity.set()
            if self.on_data is not None:
                self.on_data(message)

    async def wait_for_track(self, kind: str, timeout: float = 10.0,
                             peer_id: str | None = None) -> RemoteTrack:
        """The first received track of `kind` (from `peer_id`, if given)."""
        def find() -> RemoteTrack | None:
            return next((r for r in self.tracks if r.track.kind == kind
                         and (peer_id is None or r.info.get("peer_id") == peer_id)), None)
        await self.wait_until(find, timeout)
        found = find()
        assert found is not None
        return found
