"""Load-generator processes for bench/sfu.py: one publisher, or a group of decoding subscribers.

bench/sfu.py starts these; they are not meant to be run by hand. Each reads
one JSON command per line on stdin and answers each with one line
`@@{json}` on stdout (anything else a library prints there is ignored); logs
go to stderr. Commands are handled one at a time, in order, while the media
keeps flowing on the same event loop.

The publisher is the simulated headset camera (1280x720, 30 fps, frame
counter and capture time painted into the pixels) encoded by aiortc's VP8
encoder at a pinned bitrate. A subscriber decodes every frame (aiortc does,
in its receiver's decoder thread), reads the painted code and records
(frame id, capture time, receive time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import urllib.request
from array import array
from collections.abc import Awaitable, Callable

import av
import numpy as np
from aiortc import (MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender,
                    RTCSessionDescription)
from aiortc.mediastreams import MediaStreamError

from clients.hololens_bridge.simulated import SyntheticCameraTrack
from clients.sdk import framecode
from clients.sdk.client import GoldenHourClient
from server.sfu import aiortc_seams

from vp8_bitrate import pin_vp8_bitrate

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

class RecordingCamera(SyntheticCameraTrack):
    """The simulated headset camera, remembering when it captured each frame it gave out."""

    def __init__(self, width: int, height: int, fps: int) -> None:
        super().__init__(width, height, fps)
        self.frame_ids = array("q")
        self.capture_ms = array("q")

    async def recv(self) -> av.VideoFrame:
        frame = await super().recv()
        frame_id, capture_ms, _ = self.captured[frame.pts]
        self.frame_ids.append(frame_id)
        self.capture_ms.append(capture_ms)
        return frame


class Publisher:
    """The crew's camera, published to the GoldenHour SFU, the MCU relay, or one direct peer."""

    def __init__(self, width: int, height: int, fps: int) -> None:
        self.camera = RecordingCamera(width, height, fps)
        self._client: GoldenHourClient | None = None
        self._pc: RTCPeerConnection | None = None

    async def handle(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "start":
            if cmd["system"] == "goldenhour":
                await self._start_goldenhour(cmd["url"])
            elif cmd["system"] == "relay":
                await self._start_relay(cmd["url"])
            else:
                raise ValueError(f"no system {cmd['system']!r}")
            await self._wait_sending()
            return {}
        if op == "offer":  # direct call, step 1: our offer for the peer
            pc = self._pc = RTCPeerConnection(rtc_configuration())
            prefer_vp8(pc.addTransceiver(self.camera, direction="sendonly"))
            await pc.setLocalDescription(await pc.createOffer())
            return {"sdp": pc.localDescription.sdp}
        if op == "answer":  # direct call, step 2: the peer's answer
            assert self._pc is not None
            await self._pc.setRemoteDescription(RTCSessionDescription(cmd["sdp"], "answer"))
            await self._wait_sending()
            return {}
        if op == "mark":
            return await self._mark()
        if op == "captured":
            t0_ms, t1_ms = cmd["t0_ms"], cmd["t1_ms"]
            ids = [i for i, t in zip(self.camera.frame_ids, self.camera.capture_ms)
                   if t0_ms <= t < t1_ms]
            return {"frame_ids": ids}
        raise ValueError(f"publisher: no op {op!r}")

    async def _start_goldenhour(self, url: str) -> None:
        client = self._client = GoldenHourClient(url, ROOM, "crew", "bench publisher",
                                                 create=True, ice_servers=[])
        await client.connect()
        await client.publish([self.camera], data_channel=False, video_codec="video/VP8")
        self._pc = client.publish_pc

    async def _start_relay(self, url: str) -> None:
        pc = self._pc = RTCPeerConnection(rtc_configuration())
        prefer_vp8(pc.addTransceiver(self.camera, direction="sendonly"))
        await pc.setLocalDescription(await pc.createOffer())
        answer = await post_json(f"{url}/publish", {"sdp": pc.localDescription.sdp,
                                                    "type": "offer"})
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

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        elif self._pc is not None:
            await self._pc.close()


# --- subscribers ----------------------------------------------------------------

class Subscriber:
    """One remote expert's decoder: records every frame's id, capture time and latency."""

    def __init__(self, name: str, track: MediaStreamTrack,
                 close: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self.frame_ids = array("q")
        self.capture_ms = array("q")   # absolute (ms of the Unix epoch)
        self.latency_ms = array("d")   # receive (decoded, handed to us) minus capture
        self.unreadable = 0
        self.first_frame = asyncio.Event()
        self._track = track
        self._close = close
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            try:
                frame = await self._track.recv()
            except MediaStreamError:
                return
            now_ms = time.time() * 1000
            code = read_code(frame)
            if code is None:
                self.unreadable += 1
                continue
            # The code carries capture time modulo 2**32 ms (about 50 days).
            delta = (now_ms % 2**32) - code.capture_ms
            if delta < -2**31:
                delta += 2**32
            elif delta > 2**31:
                delta -= 2**32
            self.frame_ids.append(code.frame_id)
            self.capture_ms.append(round(now_ms - delta))
            self.latency_ms.append(delta)
            self.first_frame.set()

    def report(self, t0_ms: float, t1_ms: float) -> dict:
        ids, latencies = [], []
        for frame_id, captured, latency in zip(self.frame_ids, self.capture_ms,
                                               self.latency_ms):
            if t0_ms <= captured < t1_ms:
                ids.append(frame_id)
                latencies.append(round(latency, 2))
        return {"name": self.name, "frame_ids": ids, "latency_ms": latencies,
                "unreadable": self.unreadable, "frames_total": len(self.frame_ids)}

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._close()


async def _track_from(pc: RTCPeerConnection) -> asyncio.Future:
    future: asyncio.Future = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video" and not future.done():
            future.set_result(track)
    return future


async def join_goldenhour(url: str, name: str) -> Subscriber:
    client = GoldenHourClient(url, ROOM, "expert", name, ice_servers=[])
    try:
        await client.connect()
        remote = await client.wait_for_track("video", timeout=CONNECT_TIMEOUT_S)
    except BaseException:
        await client.close()
        raise
    return Subscriber(name, remote.track, client.close)


async def join_relay(url: str, name: str) -> Subscriber:
    pc = RTCPeerConnection(rtc_configuration())
    try:
        track = await _track_from(pc)
        prefer_vp8(pc.addTransceiver("video", direction="recvonly"))
        await pc.setLocalDescription(await pc.createOffer())
        answer = await post_json(f"{url}/subscribe", {"sdp": pc.localDescription.sdp,
                                                      "type": "offer"})
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return Subscriber(name, await asyncio.wait_for(track, CONNECT_TIMEOUT_S), pc.close)
    except BaseException:
        await pc.close()
        raise


class SubscriberHost:
    """Several subscribers in one process (one process per core or so is the point)."""

    def __init__(self) -> None:
        self.subscribers: list[Subscriber] = []
        self._direct_pc: RTCPeerConnection | None = None
        self._direct_track: asyncio.Future | None = None

    async def handle(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "start":
            join = join_goldenhour if cmd["system"] == "goldenhour" else join_relay
            started = time.monotonic()
            joined = await asyncio.gather(*(join(cmd["url"], name) for name in cmd["names"]),
                                          return_exceptions=True)
            self.subscribers.extend(s for s in joined if isinstance(s, Subscriber))
            errors = [repr(e) for e in joined if not isinstance(e, Subscriber)]
            if errors:
                raise RuntimeError(f"{len(errors)} subscriber(s) failed to join: {errors[0]}")
            return await self._wait_first_frames(started)
        if op == "answer_direct":  # direct call: answer the publisher's offer
            pc = self._direct_pc = RTCPeerConnection(rtc_configuration())
            track = await _track_from(pc)
            await pc.setRemoteDescription(RTCSessionDescription(cmd["sdp"], "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            self._direct_track = track
            return {"sdp": pc.localDescription.sdp}
        if op == "wait_direct":
            started = time.monotonic()
            assert self._direct_track is not None and self._direct_pc is not None
            track = await asyncio.wait_for(self._direct_track, CONNECT_TIMEOUT_S)
            self.subscribers.append(Subscriber(cmd["name"], track, self._direct_pc.close))
            return await self._wait_first_frames(started)
        if op == "late_join":
            return await self._late_join(cmd["system"], cmd["url"], cmd["name"],
                                         cmd.get("timeout_s", 10.0))
        if op == "report":
            return {"subscribers": [s.report(cmd["t0_ms"], cmd["t1_ms"])
                                    for s in self.subscribers]}
        raise ValueError(f"subscribers: no op {op!r}")

    async def _wait_first_frames(self, started: float) -> dict:
        waits = [asyncio.wait_for(s.first_frame.wait(), CONNECT_TIMEOUT_S)
                 for s in self.subscribers]
        await asyncio.gather(*waits)
        return {"ready_s": round(time.monotonic() - started, 3)}

    async def _late_join(self, system: str, url: str, name: str, timeout_s: float) -> dict:
        """Join now (the stream has been running) and time the first readable frame."""
        join = join_goldenhour if system == "goldenhour" else join_relay
        started = time.monotonic()
        subscriber = None
        try:
            subscriber = await asyncio.wait_for(join(url, name), timeout_s)
            remaining = timeout_s - (time.monotonic() - started)
            await asyncio.wait_for(subscriber.first_frame.wait(), max(0.0, remaining))
            return {"first_frame_s": round(time.monotonic() - started, 3)}
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"[{args.role} %(process)d] %(levelname)s %(name)s: %(message)s")
    if args.role == "publisher":
        pin_vp8_bitrate(args.bitrate)

    async def run() -> None:
        handler = (Publisher(args.width, args.height, args.fps) if args.role == "publisher"
                   else SubscriberHost())
        await serve(handler)

    try:
        import uvloop
        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    main()
