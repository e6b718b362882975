"""A pre-encoded VP8 clip of the simulated headset camera, for bench/sfu.py's publisher.

A HoloLens encodes in hardware; the bench's live publisher encodes in
software, and aiortc's libvpx encoder takes 24-30 ms of CPU for every 720p
frame: 0.9 of this 2-core machine's cores, next to the server it measures. So
the publisher can instead send a clip encoded once, ahead of time, with the
settings aiortc's `Vp8Encoder` uses (aiortc 1.16: CBR at the pinned bitrate,
realtime deadline, one token partition, no lag), and spend almost nothing per
frame.

A receiver's keyframe request must still get a keyframe at once, and a VP8
keyframe cannot be spliced into another encoding's delta frames (they refer to
golden and alt-ref frames the decoder would not have: measured here, every
frame after such a splice failed to decode its frame code). So the clip holds
one chain per keyframe position: chain `k` is a fresh encoding of frames `k` to
the end, its first frame a keyframe. Playback follows one chain; on a keyframe
request it jumps to the chain that starts nearest to where it is (the picture
moves by at most half a keyframe interval), and at the end of the clip it
starts chain 0 again with a keyframe. Each frame keeps its painted frame code
(its index in the clip), so the publisher logs which clip frame it sent when.

Encoding takes about a minute on this machine; the clip is cached under
bench/results/cache/ (ignored by git) and reused.
"""

from __future__ import annotations

import asyncio
import fractions
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import av
import msgpack

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from clients.hololens_bridge.simulated import SyntheticCameraTrack

CACHE_DIR = REPO / "bench" / "results" / "cache"
#: Bump when the encoding or the layout of the cache file changes.
CLIP_FORMAT = 1


@dataclass(frozen=True)
class Vp8Clip:
    """`frames` encoded frames at `fps`, with a keyframe chain every `keyframe_every`."""

    width: int
    height: int
    fps: int
    bitrate_bps: int
    frames: int
    keyframe_every: int
    #: chain start -> the encoded frames from that start to the end (first one a keyframe)
    chains: dict[int, list[bytes]]

    def frame(self, chain: int, index: int) -> bytes:
        return self.chains[chain][index - chain]

    def nearest_chain(self, index: int) -> int:
        """The chain to jump to for a keyframe when frame `index` is next."""
        start = round(index / self.keyframe_every) * self.keyframe_every
        return 0 if start >= self.frames else start


def _encoder(width: int, height: int, fps: int, bitrate_bps: int) -> av.CodecContext:
    """libvpx set up as aiortc 1.16's Vp8Encoder sets it up (aiortc/codecs/vpx.py)."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.bit_rate = bitrate_bps
    codec.gop_size = 3000
    codec.qmin, codec.qmax = 2, 56
    codec.options = {
        "bufsize": str(bitrate_bps), "cpu-used": "-6", "deadline": "realtime",
        "lag-in-frames": "0", "minrate": str(bitrate_bps), "maxrate": str(bitrate_bps),
        "noise-sensitivity": "4", "overshoot-pct": "15", "partitions": "0",
        "static-thresh": "1", "undershoot-pct": "100",
    }
    return codec


def encode_clip(width: int, height: int, fps: int, bitrate_bps: int, frames: int,
                keyframe_every: int) -> Vp8Clip:
    async def render() -> list[av.VideoFrame]:
        camera = SyntheticCameraTrack(width, height, fps, paced=False)
        return [await camera.recv() for _ in range(frames)]

    pictures = asyncio.run(render())
    chains: dict[int, list[bytes]] = {}
    for start in range(0, frames, keyframe_every):
        encoder = _encoder(width, height, fps, bitrate_bps)
        encoded = []
        for index in range(start, frames):
            picture = pictures[index]
            picture.pts, picture.time_base = index - start, fractions.Fraction(1, fps)
            encoded.append(b"".join(bytes(p) for p in encoder.encode(picture)))
        if not all(encoded):
            raise RuntimeError(f"libvpx gave no output for a frame of chain {start}")
        chains[start] = encoded
    return Vp8Clip(width, height, fps, bitrate_bps, frames, keyframe_every, chains)


def load_or_encode(width: int = 1280, height: int = 720, fps: int = 30,
                   bitrate_bps: int = 2_500_000, seconds: float = 10.0,
                   keyframe_every: int = 30) -> Vp8Clip:
    """The clip for these settings, from the cache or encoded now (and cached)."""
    frames = round(seconds * fps)
    path = CACHE_DIR / (f"vp8-clip-v{CLIP_FORMAT}-{width}x{height}-{fps}fps-"
                        f"{bitrate_bps // 1000}k-{frames}f-kf{keyframe_every}.msgpack")
    if path.exists():
        raw = msgpack.unpackb(path.read_bytes(), strict_map_key=False)
        return Vp8Clip(width, height, fps, bitrate_bps, frames, keyframe_every,
                       {int(k): v for k, v in raw["chains"].items()})
    started = time.monotonic()
    print(f"encoding a {frames}-frame VP8 clip ({width}x{height}, {bitrate_bps // 1000} kbit/s) "
          f"for the pre-encoded publisher, once; cached in {path}", file=sys.stderr, flush=True)
    clip = encode_clip(width, height, fps, bitrate_bps, frames, keyframe_every)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(msgpack.packb({"chains": clip.chains}))
    partial.rename(path)
    print(f"encoded in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return clip
