"""Pin aiortc's VP8 encoder to one bitrate: the encoders' side of the benchmark's reliance
on aiortc internals (bench/receiver_seams.py has the receivers').

aiortc 1.16.0 (aiortc/codecs/vpx.py) starts every `Vp8Encoder` at
`DEFAULT_BITRATE` (500 kbit/s), clamps `target_bitrate` to
[`MIN_BITRATE`, `MAX_BITRATE`] (at most 1.5 Mbit/s) and lets each receiver's
REMB move it inside that range. The issue asks for a 720p publisher at about
2.5 Mbit/s that does not wander with the receivers' estimates, so we set all
three module constants to the one target: the constructor then starts there
(the rate-control buffer, `bufsize`, follows it) and every REMB is clamped
back to it. The constants are read at call time, so this must run before the
first frame is encoded, in every process that encodes (publisher, MCU relay).
"""

from __future__ import annotations

from aiortc.codecs import vpx

TESTED_AIORTC = "1.16.0"


def pin_vp8_bitrate(bitrate_bps: int) -> None:
    """Make every VP8 encoder in this process encode at `bitrate_bps` (CBR)."""
    for name in ("DEFAULT_BITRATE", "MIN_BITRATE", "MAX_BITRATE"):
        if not isinstance(getattr(vpx, name, None), int):
            raise RuntimeError(f"aiortc.codecs.vpx.{name} is gone: bench/vp8_bitrate.py was "
                               f"written against aiortc {TESTED_AIORTC}")
        setattr(vpx, name, int(bitrate_bps))
