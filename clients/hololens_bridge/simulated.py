"""A simulated headset: a moving, textured camera picture with its frame counter
and capture time painted in, a tone on the microphone, and a camera pose for
every frame keyed by the frame's RTP timestamp.

It publishes through the same protocol as the real headset bridge, so the
whole chain runs with no glasses.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.mediastreams import AUDIO_PTIME

from clients.sdk import framecode
from clients.sdk.client import GoldenHourClient
from server.sfu import aiortc_seams

VIDEO_CLOCK_RATE = 90000


def _texture(height: int, width: int, seed: int = 7) -> np.ndarray:
    """A smooth random texture with grid lines: detail for codecs, cheap to slide."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((height // 4, width // 4)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 2.0)
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    luma = 128 + 60 * noise / (np.abs(noise).max() + 1e-6)
    luma[::64, :] = 200
    luma[:, ::64] = 200
    return np.clip(luma, 16, 235).astype(np.uint8)


def camera_pose(t_s: float) -> list[float]:
    """Camera-to-world pose (row-major 4x4) of a wearer leaning over a patient.

    The camera circles slowly around a point 0.9 m above the floor, looking at
    it (OpenCV camera axes: x right, y down, z forward; world +Y up).
    """
    angle = 0.4 * math.sin(0.3 * t_s)
    eye = np.array([0.7 * math.sin(angle), 1.6, 0.7 * math.cos(angle)])
    target = np.array([0.0, 0.9, 0.0])
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, eye
    return [float(v) for v in pose.reshape(-1)]


class PacedVideoTrack(MediaStreamTrack):
    """A simulated video source that gives out a frame every 1/fps seconds,
    counted from its first frame (a late reader catches up, it does not drift)."""

    kind = "video"

    def __init__(self, fps: int, paced: bool = True) -> None:
        """`paced=False` gives out frames as fast as they are asked for (to
        render a clip ahead of time), each still made for its place in time."""
        super().__init__()
        self.fps = fps
        self.frame_count = 0
        self._paced = paced
        self._start: float | None = None

    async def _next_frame_id(self) -> int:
        """Wait until the next frame is due; count it and return its id."""
        if self._start is None:
            self._start = time.monotonic()
        frame_id = self.frame_count
        delay = self._start + frame_id / self.fps - time.monotonic()
        if delay > 0 and self._paced:
            await asyncio.sleep(delay)
        self.frame_count += 1
        return frame_id


class SyntheticCameraTrack(PacedVideoTrack):
    """The headset's photo/video camera, simulated at a fixed frame rate."""

    def __init__(self, width: int = 1280, height: int = 720, fps: int = 30,
                 paced: bool = True) -> None:
        super().__init__(fps, paced)
        self.width, self.height = width, height
        self._texture = _texture(height * 2, width * 2)
        self._chroma = np.full((height // 2, width // 2), 128, np.uint8)
        self._rtp_origin: int | None = None
        #: pts (90 kHz) -> (frame_id, capture_ms, time of capture) of recent frames
        self.captured: dict[int, tuple[int, int, float]] = {}

    def frame_of_rtp(self, timestamp: int) -> tuple[int, int, float] | None:
        """The captured frame (frame_id, capture_ms, t) an outgoing RTP timestamp
        belongs to, or None if it has left the recent history.

        aiortc adds a random origin to each frame's pts, inside its sender; the
        first timestamp asked about is taken as pts 0 (the first frame sent, a
        keyframe, is never dropped). The encoder's time-base round trip can
        send a frame one 90 kHz tick early (pts 3000 leaves as 2999), so the
        timestamp is snapped to the frame grid.
        """
        if self._rtp_origin is None:
            self._rtp_origin = timestamp
        interval = VIDEO_CLOCK_RATE // self.fps
        pts = round(((timestamp - self._rtp_origin) & 0xFFFFFFFF) / interval) * interval
        return self.captured.get(pts)

    def _on_capture(self, frame_id: int, capture_s: float) -> None:
        """Called with each frame's capture time (Unix seconds) as it is taken;
        the painted code keeps only whole milliseconds. For subclasses."""

    def _capture(self, frame_id: int) -> tuple[int, int]:
        """Take frame `frame_id` now: its pts (90 kHz) and capture time (whole
        Unix ms), kept for frame_of_rtp."""
        capture_s = time.time()
        self._on_capture(frame_id, capture_s)
        capture_ms = int(capture_s * 1000)
        pts = frame_id * (VIDEO_CLOCK_RATE // self.fps)
        self.captured[pts] = (frame_id, capture_ms, frame_id / self.fps)
        if len(self.captured) > 300:
            del self.captured[next(iter(self.captured))]
        return pts, capture_ms

    async def recv(self) -> av.VideoFrame:
        frame_id = await self._next_frame_id()
        t = frame_id / self.fps
        dx = int((0.5 + 0.5 * math.sin(0.7 * t)) * self.width)
        dy = int((0.5 + 0.5 * math.cos(0.5 * t)) * self.height)
        luma = self._texture[dy:dy + self.height, dx:dx + self.width].copy()
        pts, capture_ms = self._capture(frame_id)
        framecode.paint(luma, frame_id, capture_ms)
        u = self._chroma
        v = np.full_like(u, 128 + int(40 * math.sin(t)))
        yuv = np.concatenate([luma, u.reshape(-1, self.width), v.reshape(-1, self.width)])
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        return frame


class SyntheticUltrasoundTrack(PacedVideoTrack):
    """A wireless ultrasound probe held still over a FAST view: one phantom's
    anatomy (models/phantoms/ultrasound.py) with fresh speckle every frame
    (a loop of `variants` frames, made up front: a phantom costs about 20 ms,
    too much for the event loop at 30 fps). `fluid_mask` is the truth the
    server's overlays can be checked against."""

    def __init__(self, size: int = 256, fps: int = 30, seed: int = 19,
                 fluid: bool = True, variants: int = 12) -> None:
        super().__init__(fps)
        from models.phantoms import ultrasound
        self.size = size
        cases = [ultrasound.generate(np.random.default_rng(seed), size, fluid,
                                     speckle_rng=np.random.default_rng((seed, k)))
                 for k in range(variants)]
        self._images = [c.image for c in cases]
        self.fluid_mask = cases[0].fluid_mask
        self._chroma = np.full((size // 2, size // 2), 128, np.uint8)

    async def recv(self) -> av.VideoFrame:
        frame_id = await self._next_frame_id()
        luma = self._images[frame_id % len(self._images)]
        yuv = np.concatenate([luma, self._chroma.reshape(-1, self.size),
                              self._chroma.reshape(-1, self.size)])
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = frame_id * (VIDEO_CLOCK_RATE // self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        return frame


class ToneTrack(MediaStreamTrack):
    """The headset microphone, simulated: a quiet 440 Hz tone."""

    kind = "audio"

    def __init__(self, sample_rate: int = 48000) -> None:
        super().__init__()
        self._rate = sample_rate
        self._samples = int(AUDIO_PTIME * sample_rate)
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._pts / self._rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        n = np.arange(self._pts, self._pts + self._samples)
        tone = (3000 * np.sin(2 * np.pi * 440 * n / self._rate)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
        frame.pts = self._pts
        frame.sample_rate = self._rate
        frame.time_base = fractions.Fraction(1, self._rate)
        self._pts += self._samples
        return frame


def intrinsics(width: int, height: int) -> dict:
    focal = 0.9 * width  # about 70 degrees horizontal field of view
    return {"width": width, "height": height, "fx": focal, "fy": focal,
            "cx": (width - 1) / 2, "cy": (height - 1) / 2}


class SimulatedCrew:
    """A crew peer publishing the simulated headset: video, audio and poses."""

    def __init__(self, client: GoldenHourClient, width: int = 1280, height: int = 720,
                 fps: int = 30, audio: bool = True, video_codec: str | None = None,
                 ultrasound: SyntheticUltrasoundTrack | None = None) -> None:
        self.client = client
        self.camera = SyntheticCameraTrack(width, height, fps)
        self.audio = ToneTrack() if audio else None
        #: A probe published as a second video track, labelled "ultrasound".
        self.ultrasound = ultrasound
        self.video_codec = video_codec
        self.poses_sent = 0
        #: Frames that went out while the data channel was open but whose pose
        #: could not be found (their RTP timestamp matched no captured frame).
        self.frames_without_pose = 0
        self._last_timestamp: int | None = None
        #: Tasks draining the tracks we receive (the experts' voices): a
        #: headset would play them; unread, aiortc would queue them forever.
        self._drains: list[asyncio.Task] = []
        self.audio_frames_heard = 0
        self.audio_rms_heard = 0.0
        client.on_track = self._on_remote_track

    async def start(self) -> None:
        await self.client.connect()
        tracks: list[MediaStreamTrack] = [self.camera]
        if self.audio is not None:
            tracks.append(self.audio)
        await self.client.publish(tracks, data_channel=True, video_codec=self.video_codec)
        sender = next(t.sender for t in self.client.publish_pc.getTransceivers()
                      if t.kind == "video")
        aiortc_seams.watch_sent_rtp(sender, self._on_video_packet)
        if self.ultrasound is not None:
            await self._publish_ultrasound()

    async def _publish_ultrasound(self) -> None:
        """Add the probe to the publish connection, named as ultrasound
        (protocol: `publish.sources`), so the server runs its model on it."""
        pc = self.client.publish_pc
        transceiver = pc.addTransceiver(self.ultrasound, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        answer = await self.client.request({"type": "publish", "sdp": pc.localDescription.sdp,
                                            "sources": {transceiver.mid: "ultrasound"}})
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

    def _on_video_packet(self, sequence_number: int, timestamp: int, marker: bool) -> None:
        if timestamp == self._last_timestamp:
            return
        self._last_timestamp = timestamp
        # Asked about every frame, from the first on the wire: that one fixes the RTP origin.
        captured = self.camera.frame_of_rtp(timestamp)
        channel = self.client.publish_channel
        if channel is None or channel.readyState != "open":
            return  # frames sent before the data channel opened go without a pose
        if captured is None:
            self.frames_without_pose += 1  # a frame we cannot name: a bug, tests check
            return
        self.client.send_data(self._pose_message(timestamp, captured))
        self.poses_sent += 1

    def _pose_message(self, timestamp: int, captured: tuple) -> dict:
        """The `pose` message of the frame sent with this RTP timestamp."""
        frame_id, capture_ms, t = captured
        return {"type": "pose", "rtp_timestamp": timestamp, "T_world_camera": camera_pose(t),
                "intrinsics": intrinsics(self.camera.width, self.camera.height),
                "capture_time_ms": capture_ms, "frame_id": frame_id}

    def _on_remote_track(self, remote) -> None:
        self._drains.append(asyncio.ensure_future(self._drain(remote.track)))

    async def _drain(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:  # MediaStreamError when the track ends
                return
            if track.kind == "audio":
                self.audio_frames_heard += 1
                pcm = frame.to_ndarray().astype(np.float64)
                self.audio_rms_heard = float(np.sqrt(np.mean(pcm * pcm)))
                self.client.changed()

    async def stop(self) -> None:
        for task in self._drains:
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        await self.client.close()
