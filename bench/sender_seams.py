"""The senders' side of the benchmark's reliance on aiortc internals
(bench/receiver_seams.py has the receivers'); tests/test_aiortc_seams.py checks
that each target still exists.

Bitrate: aiortc 1.16.0 (aiortc/codecs/vpx.py) starts every `Vp8Encoder` at
`DEFAULT_BITRATE` (500 kbit/s), clamps `target_bitrate` to
[`MIN_BITRATE`, `MAX_BITRATE`] (at most 1.5 Mbit/s) and lets each receiver's
REMB move it inside that range. The issue asks for a 720p publisher at about
2.5 Mbit/s that does not wander with the receivers' estimates, so we set all
three module constants to the one target: the constructor then starts there
(the rate-control buffer, `bufsize`, follows it) and every REMB is clamped
back to it. The constants are read at call time, so this must run before the
first frame is encoded, in every process that encodes (publisher, MCU relay).

Keyframe requests: a receiver's PLI or FIR reaches `RTCRtpSender._send_keyframe`,
which only flags the sender's own encoder for the next raw frame. A track that
gives out already-encoded packets (the pre-encoded camera) never sees that
flag, so it is told directly.
"""

from __future__ import annotations

from collections.abc import Callable

from aiortc import RTCRtpSender
from aiortc.codecs import vpx

TESTED_AIORTC = "1.16.0"


def pin_vp8_bitrate(bitrate_bps: int) -> None:
    """Make every VP8 encoder in this process encode at `bitrate_bps` (CBR)."""
    for name in ("DEFAULT_BITRATE", "MIN_BITRATE", "MAX_BITRATE"):
        if not isinstance(getattr(vpx, name, None), int):
            raise RuntimeError(f"aiortc.codecs.vpx.{name} is gone: bench/sender_seams.py was "
                               f"written against aiortc {TESTED_AIORTC}")
        setattr(vpx, name, int(bitrate_bps))


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call `callback()` each time a receiver asks `sender` for a keyframe."""
    original = getattr(sender, "_send_keyframe", None)
    if not callable(original):
        raise RuntimeError("RTCRtpSender._send_keyframe is gone: bench/sender_seams.py was "
                           f"written against aiortc {TESTED_AIORTC}")

    def send_keyframe() -> None:
        original()
        callback()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]
