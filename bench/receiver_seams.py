"""Two hooks on aiortc's RTCRtpReceiver that only the benchmark's subscribers need.

They touch the same private, name-mangled attributes of aiortc 1.16.0 as
server/sfu/aiortc_seams.py (which has the server's hooks and the tests that
check them); they live here because no product code uses them. Moving them
there, with a test each, is the better home if anything else ever does.
"""

from __future__ import annotations

from collections.abc import Callable

from aiortc import RTCRtpReceiver
from aiortc.rtp import RtpPacket

TESTED_AIORTC = "1.16.0"


def watch_received_rtp(receiver: RTCRtpReceiver, on_packet: Callable[[RtpPacket], None]) -> None:
    """Call on_packet(packet) for each RTP packet `receiver` hands its jitter buffer,
    leaving decoding as it is.

    The passive twin of aiortc_seams.tap_receiver: packets in network order
    (retransmissions late), RTX already unwrapped, NACKs already sent.
    """
    jitter_buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    add = jitter_buffer.add

    def add_and_watch(packet: RtpPacket) -> tuple[bool, object]:
        on_packet(packet)
        return add(packet)

    jitter_buffer.add = add_and_watch


def stop_remb(receiver: RTCRtpReceiver) -> None:
    """Make a video receiver send no REMB (receiver-estimated maximum bitrate).

    aiortc's estimator runs in Python on every packet that carries
    abs-send-time and, whenever it judges the link overused (a busy 2-core
    machine looks like one), sends a REMB for every packet: about 260 RTCP
    packets a second per subscriber at 2.5 Mbit/s. That was a third of an
    RTP-only subscriber's CPU and flooded the server under test with RTCP no
    browser sends (Chrome sends REMB about once a second, or transport-cc).
    Every encoder in the benchmark is pinned to one bitrate, so REMB changes
    nothing else. Receiver reports and NACKs are unaffected.
    """
    receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]
