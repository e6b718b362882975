"""The bridge's outgoing tracks: the headset's own H.264, passed through, and its microphone.

aiortc's sender packetizes, without re-encoding, whatever `av.Packet` a track
yields (H264Encoder.pack), so the bridge forwards the bitstream the headset
already encoded: no decoder, no encoder, no added picture delay. The price is
that a keyframe comes only when the headset's encoder makes one (its GOP); the
sender's keyframe requests cannot reach it.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from dataclasses import dataclass

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)


def nal_units(annex_b: bytes) -> list[tuple[int, bytes]]:
    """(nal_unit_type, the NAL unit with a 4-byte start code) of an Annex B access unit."""
    starts = []
    i, n = 0, len(annex_b)
    while (i := annex_b.find(b"\x00\x00\x01", i, n)) >= 0 and i + 3 < n:
        starts.append(i + 3)
        i += 3
    units = []
    for k, start in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else n
        while end > start and annex_b[end - 1] == 0:  # a 4-byte start code's leading zero
            end -= 1
        units.append((annex_b[start] & 0x1F, b"\x00\x00\x00\x01" + annex_b[start:end]))
    return units


def is_h264_keyframe(annex_b: bytes) -> bool:
    """True if an Annex B access unit holds an IDR slice (NAL type 5)."""
    return any(kind == 5 for kind, _ in nal_units(annex_b))


NAL_IDR, NAL_SPS, NAL_PPS = 5, 7, 8


@dataclass
class SentFrame:
    """What the bridge knows about one frame it passed to the sender."""

    pts: int  # 90 kHz, on the track's clock (the RTP timestamp minus aiortc's origin)
    received_s: float  # time.perf_counter() when the headset's packet was complete
    info: object  # the caller's (pose, intrinsics, ...) for this frame


class EncodedVideoTrack(MediaStreamTrack):
    """A video track of already-encoded H.264 access units (Annex B).

    `push()` hands it one access unit with its capture time; `recv()` gives
    aiortc's sender an `av.Packet`. When the sender falls behind, a full queue
    drops frames, and then everything up to the next keyframe (a decoder
    cannot use P-frames whose reference was dropped).
    """

    kind = "video"

    def __init__(self, max_queued: int = 8) -> None:
        super().__init__()
        self._queue: asyncio.Queue[tuple[bytes, int, SentFrame]] = asyncio.Queue(max_queued)
        self._waiting_for_keyframe = True
        self._parameter_sets = b""
        self._origin_100ns: int | None = None
        self._last_pts = -1
        self.frames_pushed = 0
        self.frames_dropped = 0
        #: pts -> SentFrame of recent frames, so that an outgoing RTP timestamp
        #: finds its frame's pose (see frame_of_rtp).
        self.sent: dict[int, SentFrame] = {}
        self._sent_order: deque[int] = deque()
        self._rtp_origin: int | None = None
        self._first_pts: int | None = None

    def push(self, annex_b: bytes, timestamp_100ns: int, info: object = None,
             received_s: float | None = None) -> bool:
        """Queue one access unit; False if it was dropped. `timestamp_100ns` is
        the headset's capture time (hl2ss: 100 ns ticks); pts is taken relative
        to the first frame, on the 90 kHz video clock."""
        if self.readyState != "live":
            return False
        units = nal_units(annex_b)
        kinds = {kind for kind, _ in units}
        keyframe = NAL_IDR in kinds
        if NAL_SPS in kinds and NAL_PPS in kinds:
            self._parameter_sets = b"".join(u for kind, u in units if kind in (NAL_SPS, NAL_PPS))
        elif keyframe and self._parameter_sets:
            # An encoder that sends SPS/PPS only once: a subscriber that joins
            # later (or one resuming after a drop) needs them with every IDR.
            annex_b = self._parameter_sets + annex_b
        if self._waiting_for_keyframe and not keyframe:
            self.frames_dropped += 1
            return False
        if self._origin_100ns is None:
            self._origin_100ns = timestamp_100ns
        pts = (timestamp_100ns - self._origin_100ns) * 9 // 1000
        if pts < self._last_pts - VIDEO_CLOCK_RATE:
            # The headset's clock restarted (a reboot): continue our clock from
            # here, a frame after the last, and resume at a keyframe.
            self._origin_100ns = timestamp_100ns - (self._last_pts + 3000) * 1000 // 9
            pts = self._last_pts + 3000
            if not keyframe:
                self.frames_dropped += 1
                self._waiting_for_keyframe = True
                return False
        elif pts <= self._last_pts:  # repeated or jittered back a little: keep RTP monotonic
            pts = self._last_pts + 1
        frame = SentFrame(pts, received_s if received_s is not None else time.perf_counter(), info)
        try:
            self._queue.put_nowait((annex_b, pts, frame))
        except asyncio.QueueFull:
            self.frames_dropped += 1
            self._waiting_for_keyframe = True
            return False
        self._waiting_for_keyframe = False
        self._last_pts = pts
        self.frames_pushed += 1
        return True

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        annex_b, pts, frame = await self._queue.get()
        if self._first_pts is None:
            self._first_pts = pts
        self.sent[pts] = frame
        self._sent_order.append(pts)
        if len(self._sent_order) > 300:
            self.sent.pop(self._sent_order.popleft(), None)
        packet = av.Packet(annex_b)
        packet.pts = pts
        packet.dts = pts
        packet.time_base = VIDEO_TIME_BASE
        return packet

    def frame_of_rtp(self, timestamp: int) -> SentFrame | None:
        """The frame an outgoing RTP timestamp belongs to. aiortc adds a random
        origin inside its sender; the first packet on the wire is the first
        frame recv() gave it, which fixes that origin."""
        if self._rtp_origin is None:
            if self._first_pts is None:
                return None
            self._rtp_origin = (timestamp - self._first_pts) & 0xFFFFFFFF
        return self.sent.get((timestamp - self._rtp_origin) & 0xFFFFFFFF)


class PcmAudioTrack(MediaStreamTrack):
    """The headset microphone: interleaved PCM chunks in, 20 ms audio frames out.

    Chunks arrive in network-sized bursts; they are re-cut into the 20 ms
    frames aiortc's Opus encoder expects, with pts counted in samples. A
    backlog over `max_backlog_s` is dropped from the front: late speech is
    worse than a gap.
    """

    kind = "audio"

    def __init__(self, sample_rate: int = 48000, channels: int = 2,
                 max_backlog_s: float = 0.5) -> None:
        super().__init__()
        self.sample_rate, self.channels = sample_rate, channels
        self._samples_per_frame = sample_rate // 50
        self._buffer = np.zeros((0, channels), np.int16)
        self._max_backlog = int(max_backlog_s * sample_rate)
        self._ready = asyncio.Event()
        self._pts = 0
        self.samples_dropped = 0

    def push(self, pcm: np.ndarray) -> None:
        """Add samples: shape (n, channels), int16 or float in [-1, 1]."""
        if pcm.dtype != np.int16:
            pcm = (np.clip(pcm, -1.0, 1.0) * 32767).astype(np.int16)
        self._buffer = np.concatenate([self._buffer, pcm.reshape(-1, self.channels)])
        excess = len(self._buffer) - self._max_backlog
        if excess > 0:
            self._buffer = self._buffer[excess:]
            self.samples_dropped += excess
        if len(self._buffer) >= self._samples_per_frame:
            self._ready.set()

    async def recv(self) -> av.AudioFrame:
        while len(self._buffer) < self._samples_per_frame:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        chunk, self._buffer = (self._buffer[:self._samples_per_frame],
                               self._buffer[self._samples_per_frame:])
        layout = "stereo" if self.channels == 2 else "mono"
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        self._pts += self._samples_per_frame
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()


class TranscodingVideoTrack(EncodedVideoTrack):
    """The baseline the pass-through is measured against: decode the headset's
    H.264 and hand aiortc raw frames to encode again (what a bridge built on
    decoded frames does). Same interface as EncodedVideoTrack."""

    def __init__(self, max_queued: int = 8) -> None:
        super().__init__(max_queued)
        self._decoder = av.CodecContext.create("h264", "r")

    def _decode(self, annex_b: bytes) -> av.VideoFrame | None:
        frames = self._decoder.decode(av.Packet(annex_b))
        return frames[-1] if frames else None

    async def recv(self) -> av.VideoFrame:  # type: ignore[override]
        while True:
            packet = await super().recv()
            loop = asyncio.get_running_loop()
            frame = await loop.run_in_executor(None, self._decode, bytes(packet))
            if frame is not None:
                frame.pts = packet.pts
                frame.time_base = VIDEO_TIME_BASE
                return frame
