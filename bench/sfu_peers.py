"""Load-generator processes for bench/sfu.py: one publisher, or a group of subscribers.

bench/sfu.py starts these; they are not meant to be run by hand. Each reads
one JSON command per line on stdin and answers each with one line
`@@{json}` on stdout (anything else a library prints there is ignored); logs
go to stderr. Commands are handled one at a time, in order, while the media
keeps flowing on the same event loop.

The publisher is the simulated headset camera (1280x720, 30 fps, frame
counter painted into the pixels). By default it sends a clip of it encoded
ahead of time (bench/vp8_clip.py), as a headset's hardware encoder would leave
the CPU free, and answers keyframe requests by jumping to the clip's nearest
keyframe; `--camera live` encodes each frame with aiortc's VP8 encoder instead
(0.9 of a core here). Either way the bitrate is pinned, and it logs every frame
it sends: RTP timestamp, capture time (when the frame was handed to the
sender), the clip frame it showed, and the time its last packet went to the
transport.

Subscribers come in two kinds, because decoding 720p VP8 costs 0.2-0.3 core
each and a 2-core machine cannot decode for 16 of them next to the encoder
and the server:
- RTP-only (the default): aiortc_seams.tap_receiver takes the packets out of
  the receiver before its jitter buffer, so nothing is decoded; aiortc still
  NACKs gaps and unwraps RTX. Per RTP timestamp we record the first packet's
  arrival, the marker packet's arrival, and when the frame became complete
  (every sequence number from its first to its marker packet arrived,
  retransmissions included). The orchestrator joins that with the publisher's
  log on RTP timestamp, which the GoldenHour SFU passes through unchanged.
- decoding (one per point): aiortc decodes as usual and we read the painted
  frame code of every decoded frame; the same packets are also watched on
  their way into the jitter buffer, so this subscriber has both figures.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import logging
import sys
import time
import urllib.request
from array import array
from collections.abc import Awaitable, Callable

import av
import numpy as np
import receiver_seams
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket
from janus_baseline import JANUS_ADDRESS, JanusSession
from janus_baseline import ROOM as JANUS_ROOM
from receiver_seams import stop_remb, watch_received_rtp
from sender_seams import on_keyframe_request, pin_vp8_bitrate
from vp8_clip import Vp8Clip, load_or_encode

from clients.hololens_bridge.simulated import VIDEO_CLOCK_RATE, SyntheticCameraTrack
from clients.sdk import framecode
from clients.sdk.client import GoldenHourClient, RemoteTrack
from server.sfu import aiortc_seams
from server.sfu.keyframes import vp8_starts_keyframe

log = logging.getLogger("bench.sfu_peers")

ROOM = "bench"
REPLY_PREFIX = "@@"
CONNECT_TIMEOUT_S = 20.0

# Loopback only, every process that uses aiortc (the brief's rule, and no
# packet may leave the machine).
aiortc_seams.use_loopback_ice(True, only=True)


def rtc_configuration() -> RTCConfiguration:
    """No ICE servers at all: aiortc's default would add a public STUN server."""
    return RTCConfiguration(iceServers=[])


def prefer_vp8(transceiver: object) -> None:
    caps = [c for c in RTCRtpSender.getCapabilities("video").codecs
            if c.mimeType.lower() in ("video/vp8", "video/rtx")]
    transceiver.setCodecPreferences(caps)  # type: ignore[attr-defined]


async def post_json(url: str, body: dict, timeout_s: float = CONNECT_TIMEOUT_S) -> dict:
    """POST JSON to the (loopback) baseline server, ignoring any proxy settings."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call() -> dict:
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with opener.open(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    return await asyncio.to_thread(call)


async def wait_connected(pc: RTCPeerConnection, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed"):
            raise ConnectionError(f"peer connection {pc.connectionState}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"peer connection still {pc.connectionState} "
                               f"after {timeout_s:.0f} s")
        await asyncio.sleep(0.02)


def read_code(frame: av.VideoFrame) -> framecode.FrameCode | None:
    """The painted frame code, reading only the top rows of the luma plane.

    Same result as framecode.read(frame.to_ndarray(format="gray")) for the
    planar YUV aiortc's decoders return, without converting the whole picture
    (which would make the load generator, not the system under test, the cost).
    """
    if frame.format.name in ("yuv420p", "yuvj420p", "nv12"):
        plane = frame.planes[0]
        rows = min(frame.height, 2 * (frame.width // framecode.BLOCKS))
        luma = np.frombuffer(plane, np.uint8, count=rows * plane.line_size)
        return framecode.read(luma.reshape(rows, plane.line_size)[:, :frame.width])
    return framecode.read(frame.to_ndarray(format="gray"))


# --- publisher ----------------------------------------------------------------

class BenchCamera(SyntheticCameraTrack):
    """The simulated headset camera, keeping each frame's capture time to the microsecond.

    The capture time it paints (whole ms) is also kept as the float it came
    from, so that glass-to-glass is not rounded down by up to 1 ms.
    """

    def __init__(self, width: int, height: int, fps: int) -> None:
        super().__init__(width, height, fps)
        #: frame_id -> time.time() at capture, for every frame given out
        self.capture_s = array("d")

    def _on_capture(self, frame_id: int, capture_s: float) -> None:
        self.capture_s.append(capture_s)


class PreEncodedCamera(BenchCamera):
    """The headset camera with a hardware encoder: gives out a pre-encoded clip's
    VP8 frames (av.Packet, which aiortc's sender packetizes as they are) at the
    camera's frame rate, and a keyframe whenever a receiver asks for one.

    Frame ids count frames given out, as for the live camera; the picture of
    frame id n is clip frame `clip_index[n]`, whose index is what is painted.
    """

    def __init__(self, clip: Vp8Clip) -> None:
        super().__init__(clip.width, clip.height, clip.fps)
        self._clip = clip
        self._chain = 0
        self._index = -1
        self._keyframe_wanted = False
        #: frame_id -> the clip frame sent as that frame
        self.clip_index = array("i")

    def request_keyframe(self) -> None:
        self._keyframe_wanted = True

    async def recv(self) -> av.Packet:  # type: ignore[override]
        frame_id = await self._next_frame_id()
        following = self._index + 1
        if self._keyframe_wanted:
            self._keyframe_wanted = False
            self._chain = self._index = self._clip.nearest_chain(following)
        elif following >= self._clip.frames:
            self._chain = self._index = 0
        else:
            self._index = following
        packet = av.Packet(self._clip.frame(self._chain, self._index))
        packet.pts, _ = self._capture(frame_id)
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        self.clip_index.append(self._index)
        return packet


class SentFrameLog:
    """Every video frame the publisher sent: RTP timestamp, frame id and when its
    marker packet was handed to the transport, from aiortc_seams.watch_sent_rtp."""

    def __init__(self, camera: BenchCamera) -> None:
        self._camera = camera
        self.frame_of: dict[int, int] = {}       # RTP timestamp -> frame id
        self.marker_sent_s: dict[int, float] = {}  # RTP timestamp -> time.time()
        self.unmapped = 0
        self.first_frame_id: int | None = None

    def on_packet(self, sequence_number: int, timestamp: int, marker: bool) -> None:
        if timestamp not in self.frame_of:
            captured = self._camera.frame_of_rtp(timestamp)
            if captured is None:
                self.unmapped += 1
                return
            self.frame_of[timestamp] = captured[0]
            if self.first_frame_id is None:
                self.first_frame_id = captured[0]
        if marker and timestamp not in self.marker_sent_s:
            # Without RTX a retransmission reuses the SSRC: keep the first send.
            self.marker_sent_s[timestamp] = time.time()


class Publisher:
    """The crew's camera, published to the GoldenHour SFU, the MCU relay, or one direct peer."""

    def __init__(self, width: int, height: int, fps: int, camera: str, bitrate_bps: int) -> None:
        if camera == "preencoded":
            self.camera: BenchCamera = PreEncodedCamera(
                load_or_encode(width, height, fps, bitrate_bps))
        else:
            self.camera = BenchCamera(width, height, fps)
        self.sent = SentFrameLog(self.camera)
        self._client: GoldenHourClient | None = None
        self._pc: RTCPeerConnection | None = None
        self._janus: JanusSession | None = None

    async def handle(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "start":
            if cmd["system"] == "goldenhour":
                await self._start_goldenhour(cmd["url"])
            elif cmd["system"] == "relay":
                await self._start_relay(cmd["url"])
            elif cmd["system"] == "janus":
                await self._start_janus(cmd["url"])
            else:
                raise ValueError(f"no system {cmd['system']!r}")
            await self._wait_sending()
            return {}
        if op == "offer":  # direct call, step 1: our offer for the peer
            pc = self._pc = RTCPeerConnection(rtc_configuration())
            prefer_vp8(pc.addTransceiver(self.camera, direction="sendonly"))
            await pc.setLocalDescription(await pc.createOffer())
            self._watch_sender()
            return {"sdp": pc.localDescription.sdp}
        if op == "answer":  # direct call, step 2: the peer's answer
            assert self._pc is not None
            await self._pc.setRemoteDescription(RTCSessionDescription(cmd["sdp"], "answer"))
            await self._wait_sending()
            return {}
        if op == "mark":
            return await self._mark()
        if op == "log":
            return self._log(cmd["t0_ms"] / 1000, cmd["t1_ms"] / 1000)
        raise ValueError(f"publisher: no op {op!r}")

    def _watch_sender(self) -> None:
        """Log sent frames; call once the sender has its transport, before media flows
        (ICE and DTLS take several round trips after the answer)."""
        assert self._pc is not None
        sender = next(t.sender for t in self._pc.getTransceivers() if t.kind == "video")
        aiortc_seams.watch_sent_rtp(sender, self.sent.on_packet)
        if isinstance(self.camera, PreEncodedCamera):
            on_keyframe_request(sender, self.camera.request_keyframe)

    async def _start_goldenhour(self, url: str) -> None:
        client = self._client = GoldenHourClient(url, ROOM, "crew", "bench publisher",
                                                 create=True, ice_servers=[])
        await client.connect()
        await client.publish([self.camera], data_channel=False, video_codec="video/VP8")
        self._pc = client.publish_pc
        self._watch_sender()

    async def _start_relay(self, url: str) -> None:
        pc = self._pc = RTCPeerConnection(rtc_configuration())
        prefer_vp8(pc.addTransceiver(self.camera, direction="sendonly"))
        await pc.setLocalDescription(await pc.createOffer())
        self._watch_sender()
        answer = await post_json(f"{url}/publish", {"sdp": pc.localDescription.sdp,
                                                    "type": "offer"})
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))

    async def _start_janus(self, url: str) -> None:
        aiortc_seams.use_ice_host_addresses([JANUS_ADDRESS])
        session = self._janus = JanusSession(url)
        await session.open()
        handle = await session.attach()
        await session.message(handle, {"request": "join", "ptype": "publisher", "room": JANUS_ROOM,
                                       "display": "bench publisher"})
        pc = self._pc = RTCPeerConnection(rtc_configuration())
        prefer_vp8(pc.addTransceiver(self.camera, direction="sendonly"))
        await pc.setLocalDescription(await pc.createOffer())
        self._watch_sender()
        configured = await session.message(
            handle, {"request": "publish", "audio": False, "video": True, "data": False},
            jsep={"type": "offer", "sdp": pc.localDescription.sdp})
        answer = configured["jsep"]
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))

    async def _wait_sending(self) -> None:
        assert self._pc is not None
        await wait_connected(self._pc)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while self.camera.frame_count < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the camera track is not being read (encoder never started)")
            await asyncio.sleep(0.02)

    async def _mark(self) -> dict:
        """Counters now: frames captured and payload bytes the video sender has sent."""
        assert self._pc is not None
        sender = next(t.sender for t in self._pc.getTransceivers() if t.kind == "video")
        report = await sender.getStats()
        sent = sum(s.bytesSent for s in report.values() if s.type == "outbound-rtp")
        return {"t_ms": time.time() * 1000, "frames": self.camera.frame_count,
                "bytes_sent": sent}

    def _log(self, t0_s: float, t1_s: float) -> dict:
        """Frames captured in [t0, t1): all of them (by frame id) and those sent."""
        capture_s = self.camera.capture_s
        captured_ids = [i for i, t in enumerate(capture_s) if t0_s <= t < t1_s]
        ts, frame_ids, captures, sent = [], [], [], []
        for timestamp, frame_id in self.sent.frame_of.items():
            captured = capture_s[frame_id]
            if t0_s <= captured < t1_s:
                ts.append(timestamp)
                frame_ids.append(frame_id)
                captures.append(round(captured, 6))
                marker = self.sent.marker_sent_s.get(timestamp)
                sent.append(None if marker is None else round(marker, 6))
        return {"captured": {"frame_id": captured_ids,
                             "capture_s": [round(capture_s[i], 6) for i in captured_ids]},
                "sent": {"rtp_ts": ts, "frame_id": frame_ids, "capture_s": captures,
                         "marker_sent_s": sent},
                # The painted code of frame id n is clip_index[n] (pre-encoded
                # camera) or n itself (live camera: None).
                "clip_index": ([self.camera.clip_index[i] for i in captured_ids]
                               if isinstance(self.camera, PreEncodedCamera) else None),
                "unmapped_packets": self.sent.unmapped,
                "first_sent_frame_id": self.sent.first_frame_id}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        elif self._pc is not None:
            await self._pc.close()
        if self._janus is not None:
            await self._janus.close()


# --- subscribers ----------------------------------------------------------------

class _Frame:
    """What one subscriber saw of one RTP timestamp."""

    __slots__ = (
        "complete_handed_s",
        "complete_s",
        "end_seq",
        "first_s",
        "keyframe",
        "marker_s",
        "seqs",
        "start_seq",
    )

    def __init__(self, now_s: float) -> None:
        self.first_s = now_s
        self.marker_s: float | None = None
        self.complete_s: float | None = None
        #: When aiortc handed this process the packet that completed it.
        self.complete_handed_s: float | None = None
        self.start_seq: int | None = None
        self.end_seq: int | None = None
        self.seqs: set[int] | None = set()
        self.keyframe = False


class RtpFrames:
    """Frame assembly bookkeeping from RTP packets alone (VP8, RFC 7741): no decoding.

    A frame starts with the packet whose payload descriptor has S=1 and
    PID=0 and ends with the marker-bit packet; it is complete once every
    sequence number in between has arrived, in any order.
    """

    def __init__(self) -> None:
        self.frames: dict[int, _Frame] = {}
        self.first_keyframe_s: float | None = None
        self.first_complete = asyncio.Event()
        self.packets = 0

    def add(self, packet: RtpPacket) -> None:
        # When this process read the datagram; a packet aiortc handed over
        # without (an RTX retransmission, unwrapped) arrived just now.
        handed_s = time.time()
        now_s = receiver_seams.arrivals.pop((packet.ssrc, packet.sequence_number), handed_s)
        self.packets += 1
        frame = self.frames.get(packet.timestamp)
        if frame is None:
            frame = self.frames[packet.timestamp] = _Frame(now_s)
        seqs = frame.seqs
        if seqs is None:  # complete already: a duplicate or late retransmission
            return
        seq = packet.sequence_number
        seqs.add(seq)
        payload = packet.payload
        if payload and payload[0] & 0x10 and not payload[0] & 0x07:
            frame.start_seq = seq
            frame.keyframe = vp8_starts_keyframe(payload)
        if packet.marker:
            frame.end_seq = seq
            if frame.marker_s is None:
                frame.marker_s = now_s
        if (frame.start_seq is not None and frame.end_seq is not None
                and len(seqs) == ((frame.end_seq - frame.start_seq) & 0xFFFF) + 1):
            frame.complete_s = now_s
            frame.complete_handed_s = handed_s
            frame.seqs = None
            self.first_complete.set()
            if frame.keyframe and self.first_keyframe_s is None:
                self.first_keyframe_s = now_s

    async def on_tapped(self, packet: RtpPacket) -> None:
        self.add(packet)

    def report(self, since_s: float) -> dict:
        """Frames whose first packet arrived at or after `since_s`."""
        ts, first, marker, complete, handed = [], [], [], [], []
        for timestamp, frame in self.frames.items():
            if frame.first_s >= since_s:
                ts.append(timestamp)
                first.append(round(frame.first_s, 6))
                marker.append(None if frame.marker_s is None else round(frame.marker_s, 6))
                complete.append(None if frame.complete_s is None
                                else round(frame.complete_s, 6))
                handed.append(None if frame.complete_handed_s is None
                              else round(frame.complete_handed_s, 6))
        return {"rtp_ts": ts, "first_s": first, "marker_s": marker, "complete_s": complete,
                "complete_handed_s": handed, "packets": self.packets}


class Subscriber:
    """One remote expert. RTP-only: frame arrivals, nothing decoded. Decoding: also
    every decoded frame's painted id, and when it was handed to us."""

    def __init__(self, name: str, decode: bool) -> None:
        self.name = name
        self.decode = decode
        self.rtp = RtpFrames()
        self.frame_ids = array("q")
        self.painted_ms = array("q")   # capture time painted in the frame (ms, mod 2**32)
        self.frame_rtp_ts = array("q")  # each decoded frame's RTP timestamp (its pts)
        self.decoded_s = array("d")    # time.time() when the decoded frame reached us
        self.unreadable = 0
        self.first_decoded_s: float | None = None
        self.first_frame = asyncio.Event()
        self._close: Callable[[], Awaitable[None]] | None = None
        self._task: asyncio.Task | None = None

    def attach(self, receiver: RTCRtpReceiver) -> None:
        """Hook the video receiver; call before any media arrives (in `on track`)."""
        stop_remb(receiver)
        if self.decode:
            watch_received_rtp(receiver, self.rtp.add)
        else:
            aiortc_seams.tap_receiver(receiver, self.rtp.on_tapped)
            self._task = asyncio.create_task(self._signal(self.rtp.first_complete))

    def start_reading(self, track: MediaStreamTrack,
                      close: Callable[[], Awaitable[None]]) -> None:
        self._close = close
        if self.decode:
            self._task = asyncio.create_task(self._read(track))

    async def _signal(self, event: asyncio.Event) -> None:
        await event.wait()
        self.first_frame.set()

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now_s = time.time()
            code = read_code(frame)
            if code is None:
                self.unreadable += 1
                continue
            self.frame_ids.append(code.frame_id)
            self.painted_ms.append(code.capture_ms)
            self.decoded_s.append(now_s)
            # aiortc's decoded frames carry their RTP timestamp as pts: with
            # the painted id, it shows how a server rewrote the timestamps.
            self.frame_rtp_ts.append((frame.pts or 0) & 0xFFFFFFFF)
            if self.first_decoded_s is None:
                self.first_decoded_s = now_s
            self.first_frame.set()

    def report(self, since_s: float) -> dict:
        out = {"name": self.name, "decode": self.decode, "rtp": self.rtp.report(since_s)}
        if self.decode:
            keep = [k for k, t in enumerate(self.decoded_s) if t >= since_s]
            out["decoded"] = {"frame_id": [self.frame_ids[k] for k in keep],
                              "rtp_ts": [self.frame_rtp_ts[k] for k in keep],
                              "painted_ms": [self.painted_ms[k] for k in keep],
                              "decoded_s": [round(self.decoded_s[k], 6) for k in keep],
                              "unreadable": self.unreadable,
                              "frames_total": len(self.frame_ids)}
        return out

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._close is not None:
            await self._close()


def _receiver_of(pc: RTCPeerConnection, track: MediaStreamTrack) -> RTCRtpReceiver:
    return next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)


async def join_goldenhour(url: str, name: str, decode: bool) -> Subscriber:
    subscriber = Subscriber(name, decode)
    client = GoldenHourClient(url, ROOM, "expert", name, ice_servers=[])

    def on_track(remote: RemoteTrack) -> None:
        # Called while the subscribe offer is applied: before any media.
        if remote.track.kind == "video":
            subscriber.attach(remote.receiver)  # type: ignore[arg-type]
    client.on_track = on_track
    try:
        await client.connect()
        remote = await client.wait_for_track("video", timeout=CONNECT_TIMEOUT_S)
    except BaseException:
        await client.close()
        raise
    subscriber.start_reading(remote.track, client.close)
    return subscriber


async def join_janus(url: str, name: str, decode: bool) -> Subscriber:
    aiortc_seams.use_ice_host_addresses([JANUS_ADDRESS])
    subscriber = Subscriber(name, decode)
    session = JanusSession(url)
    pc: RTCPeerConnection | None = None
    try:
        await session.open()
        handle = await session.attach()
        listed = await session.request(handle, {"request": "listparticipants", "room": JANUS_ROOM})
        feeds = [p["id"] for p in listed.get("participants", []) if p.get("publisher")]
        if not feeds:
            raise RuntimeError("janus: the room has no publisher yet")
        attached = await session.message(handle, {"request": "join", "ptype": "subscriber",
                                                  "room": JANUS_ROOM,
                                                  "streams": [{"feed": feeds[0]}]})
        offer = attached["jsep"]
        pc = RTCPeerConnection(rtc_configuration())
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        receiver = next(t.receiver for t in pc.getTransceivers() if t.kind == "video")
        subscriber.attach(receiver)
        await pc.setLocalDescription(await pc.createAnswer())
        await session.message(handle, {"request": "start"},
                              jsep={"type": "answer", "sdp": pc.localDescription.sdp})
    except BaseException:
        if pc is not None:
            await pc.close()
        await session.close()
        raise
    opened = pc

    async def close() -> None:
        await opened.close()
        await session.close()
    subscriber.start_reading(receiver.track, close)
    return subscriber


async def join_relay(url: str, name: str, decode: bool) -> Subscriber:
    subscriber = Subscriber(name, decode)
    pc = RTCPeerConnection(rtc_configuration())
    try:
        transceiver = pc.addTransceiver("video", direction="recvonly")
        prefer_vp8(transceiver)
        subscriber.attach(transceiver.receiver)
        await pc.setLocalDescription(await pc.createOffer())
        answer = await post_json(f"{url}/subscribe", {"sdp": pc.localDescription.sdp,
                                                      "type": "offer"})
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        subscriber.start_reading(transceiver.receiver.track, pc.close)
        return subscriber
    except BaseException:
        await pc.close()
        raise


JOINS = {"goldenhour": join_goldenhour, "relay": join_relay, "janus": join_janus}


class SubscriberHost:
    """Several subscribers in one process; the orchestrator puts the decoding one alone."""

    def __init__(self) -> None:
        self.subscribers: list[Subscriber] = []
        self._direct_pc: RTCPeerConnection | None = None
        self._direct: Subscriber | None = None

    async def handle(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "start":
            join = JOINS[cmd["system"]]
            started = time.monotonic()
            joined = await asyncio.gather(
                *(join(cmd["url"], name, cmd["decode"]) for name in cmd["names"]),
                return_exceptions=True)
            self.subscribers.extend(s for s in joined if isinstance(s, Subscriber))
            errors = [repr(e) for e in joined if not isinstance(e, Subscriber)]
            if errors:
                raise RuntimeError(f"{len(errors)} subscriber(s) failed to join: {errors[0]}")
            return await self._wait_first_frames(started)
        if op == "answer_direct":  # direct call: answer the publisher's offer
            pc = self._direct_pc = RTCPeerConnection(rtc_configuration())
            subscriber = self._direct = Subscriber(cmd["name"], cmd["decode"])
            await pc.setRemoteDescription(RTCSessionDescription(cmd["sdp"], "offer"))
            receiver = next(t.receiver for t in pc.getTransceivers() if t.kind == "video")
            subscriber.attach(receiver)
            subscriber.start_reading(receiver.track, pc.close)
            await pc.setLocalDescription(await pc.createAnswer())
            return {"sdp": pc.localDescription.sdp}
        if op == "wait_direct":
            assert self._direct is not None
            self.subscribers.append(self._direct)
            return await self._wait_first_frames(time.monotonic())
        if op == "late_join":
            return await self._late_join(cmd["system"], cmd["url"], cmd["name"],
                                         cmd["decode"], cmd.get("timeout_s", 10.0))
        if op == "report":
            since_s = cmd["since_s"]
            return {"subscribers": [s.report(since_s) for s in self.subscribers],
                    "arrival_stamps": dict(receiver_seams.stamps)}
        raise ValueError(f"subscribers: no op {op!r}")

    async def _wait_first_frames(self, started: float) -> dict:
        waits = [asyncio.wait_for(s.first_frame.wait(), CONNECT_TIMEOUT_S)
                 for s in self.subscribers]
        await asyncio.gather(*waits)
        return {"ready_s": round(time.monotonic() - started, 3)}

    async def _late_join(self, system: str, url: str, name: str, decode: bool,
                         timeout_s: float) -> dict:
        """Join now (the stream has been running) and time the first complete keyframe
        (RTP-only) or the first decoded, readable frame (decoding)."""
        started_s = time.time()
        deadline = time.monotonic() + timeout_s
        subscriber = None
        try:
            subscriber = await asyncio.wait_for(JOINS[system](url, name, decode), timeout_s)
            while True:
                first = subscriber.first_decoded_s if decode else subscriber.rtp.first_keyframe_s
                if first is not None:
                    return {"first_frame_s": round(first - started_s, 3)}
                if time.monotonic() > deadline:
                    return {"first_frame_s": None, "timeout_s": timeout_s}
                await asyncio.sleep(0.005)
        except TimeoutError:
            return {"first_frame_s": None, "timeout_s": timeout_s}
        finally:
            if subscriber is not None:
                await subscriber.close()

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.subscribers), return_exceptions=True)
        if self._direct_pc is not None:
            await self._direct_pc.close()


# --- control loop ---------------------------------------------------------------

def reply(message: dict) -> None:
    sys.stdout.write(REPLY_PREFIX + json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def serve(handler: Publisher | SubscriberHost) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    reply({"ready": True})
    try:
        while True:
            line = await reader.readline()
            if not line:
                return  # the orchestrator is gone
            cmd = json.loads(line)
            if cmd["op"] == "stop":
                return
            try:
                reply(await handler.handle(cmd))
            except Exception as exc:  # reported to the orchestrator, which decides
                log.exception("command %s failed", cmd.get("op"))
                reply({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        try:
            await asyncio.wait_for(handler.close(), 5.0)
        except Exception:
            log.warning("closing did not finish cleanly", exc_info=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=("publisher", "subscribers"))
    parser.add_argument("--bitrate", type=int, default=2_500_000, help="bit/s (publisher)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--camera", choices=("preencoded", "live"), default="preencoded",
                        help="publisher: send a pre-encoded clip, or encode live")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"[{args.role} %(process)d] %(levelname)s %(name)s: %(message)s")
    if args.role == "publisher":
        pin_vp8_bitrate(args.bitrate)
    else:
        receiver_seams.record_datagram_arrivals()

    async def run() -> None:
        handler = (Publisher(args.width, args.height, args.fps, args.camera, args.bitrate)
                   if args.role == "publisher"
                   else SubscriberHost())
        await serve(handler)

    try:
        import uvloop
        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    main()
