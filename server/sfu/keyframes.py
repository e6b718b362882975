"""Recognise the first RTP packet of a keyframe, per codec, from the payload alone.

A consumer that starts forwarding mid-stream must start on a keyframe or its
subscriber decodes garbage until the next one. These functions look at one
RTP payload without reassembling frames.
"""

from __future__ import annotations

from collections.abc import Callable


def vp8_starts_keyframe(payload: bytes) -> bool:
    """True when the payload begins partition 0 of a VP8 key frame.

    RFC 7741 section 4.2 (payload descriptor) and 4.3 (the P bit of the VP8
    payload header: 0 for a key frame).
    """
    if len(payload) < 1:
        return False
    first = payload[0]
    start_of_partition = first & 0x10
    partition_id = first & 0x0F
    if not start_of_partition or partition_id != 0:
        return False
    offset = 1
    if first & 0x80:  # X: extension byte present
        if len(payload) < 2:
            return False
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: PictureID, 7 or 15 bits
            if len(payload) <= offset:
                return False
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            offset += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX byte
            offset += 1
    if len(payload) <= offset:
        return False
    return (payload[offset] & 0x01) == 0


_H264_IDR = 5
_H264_SPS = 7
_H264_STAP_A = 24
_H264_FU_A = 28


def h264_starts_keyframe(payload: bytes) -> bool:
    """True when the payload carries an SPS or the start of an IDR slice.

    Browsers and aiortc send SPS and PPS right before each IDR (RFC 6184:
    single NAL, STAP-A or FU-A packets), so starting at the SPS gives the
    decoder everything it needs.
    """
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (_H264_SPS, _H264_IDR):
        return True
    if nal_type == _H264_STAP_A:
        offset = 1
        while offset + 2 < len(payload):
            size = int.from_bytes(payload[offset:offset + 2], "big")
            inner = payload[offset + 2] & 0x1F
            if inner in (_H264_SPS, _H264_IDR):
                return True
            offset += 2 + size
        return False
    if nal_type == _H264_FU_A and len(payload) >= 2:
        fu_header = payload[1]
        return bool(fu_header & 0x80) and (fu_header & 0x1F) == _H264_IDR
    return False


def _always(payload: bytes) -> bool:
    return True


def keyframe_detector(mime_type: str) -> Callable[[bytes], bool]:
    """The keyframe test for a codec; audio codecs have no inter-frame state."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        return vp8_starts_keyframe
    if mime == "video/h264":
        return h264_starts_keyframe
    if mime.startswith("audio/"):
        return _always
    raise ValueError(f"no keyframe detector for codec {mime_type}")
