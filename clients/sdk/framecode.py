"""A frame's identity painted into its pixels: frame counter and capture time.

A row of 80 black/white blocks across the top of the luma plane carries 32
bits of frame counter, 32 bits of capture time (milliseconds of the Unix epoch,
modulo 2**32) and a CRC-16/CCITT over both. Blocks are width/80 pixels square
(16 px at 1280x720), large enough to survive VP8 and H.264 at low bitrates.
The browser reads the same code (clients/tablet_web/static/framecode.js).
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

import numpy as np

BLOCKS = 80
_WHITE, _BLACK = 235, 16  # video-range luma


@dataclass(frozen=True)
class FrameCode:
    frame_id: int
    capture_ms: int


def _bits(frame_id: int, capture_ms: int) -> np.ndarray:
    payload = (frame_id & 0xFFFFFFFF).to_bytes(4, "big") + (capture_ms & 0xFFFFFFFF).to_bytes(
        4, "big")
    crc = binascii.crc_hqx(payload, 0xFFFF)
    data = payload + crc.to_bytes(2, "big")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def paint(luma: np.ndarray, frame_id: int, capture_ms: int) -> None:
    """Paint the code into the top rows of a luma plane (H x W, uint8), in place."""
    block = luma.shape[1] // BLOCKS
    bits = _bits(frame_id, capture_ms)
    row = np.where(np.repeat(bits, block) == 1, _WHITE, _BLACK).astype(np.uint8)
    luma[:block, :block * BLOCKS] = row[None, :]


def read(luma: np.ndarray) -> FrameCode | None:
    """Read the code from a luma (or grey) plane; None if absent or corrupt."""
    block = luma.shape[1] // BLOCKS
    if block < 2 or luma.shape[0] < block:
        return None
    centre = block // 2
    lo, hi = max(0, centre - block // 4), centre + max(1, block // 4)
    strip = luma[lo:hi, :block * BLOCKS].astype(np.float32)
    means = strip.reshape(strip.shape[0], BLOCKS, block)[:, :, lo:hi].mean(axis=(0, 2))
    bits = (means > 128).astype(np.uint8)
    data = np.packbits(bits).tobytes()
    if binascii.crc_hqx(data[:8], 0xFFFF) != int.from_bytes(data[8:10], "big"):
        return None
    return FrameCode(int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big"))
