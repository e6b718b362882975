"""Hooks on aiortc's RTCRtpReceiver (and one on aioice) that only the benchmark's
subscribers need.

They touch the same private, name-mangled attributes of aiortc 1.16.0 as
server/sfu/aiortc_seams.py (which has the server's hooks and the tests that
check them); they live here because no product code uses them. Moving them
there, with a test each, is the better home if anything else ever does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import aioice.ice
from aiortc import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from server.sfu.timestamps import kernel_receive_time

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


#: (SSRC, sequence number) -> when the datagram reached this process's socket
#: (the kernel's receive timestamp; time.time()'s clock).
arrivals: dict[tuple[int, int], float] = {}
_ARRIVALS_MAX = 200_000
#: Datagrams timed by the kernel, and by the time this process read them
#: (where the kernel had no timestamp: the first datagram on a socket).
stamps = {"kernel": 0, "read": 0}


def record_datagram_arrivals() -> None:
    """Note when each SRTP datagram reached its socket, by its clear header.

    An aiortc peer parses and decrypts every packet in Python before anything
    sees it (about 90 us here); a process that hosts several subscribers then
    reads the last one's datagrams several ms after they arrived, a queue of
    the load generator's own, not the server's. So the time is the kernel's
    receive timestamp (`kernel_receive_time`), asked for right after the
    event loop read the datagram (an SRTP packet's header is not encrypted);
    until 2026-11-26 13:20 it was the time of the read. Process-wide:
    aioice's protocol class is wrapped once.
    """
    if getattr(aioice.ice.StunProtocol, "_bench_arrivals", False):
        return
    original = aioice.ice.StunProtocol.datagram_received

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        # RTP (RFC 7983: first byte 128-191), not RTCP (payload types 192-223).
        if len(data) >= 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
            if len(arrivals) > _ARRIVALS_MAX:
                arrivals.clear()
            fd = getattr(self, "_bench_fd", None)
            if fd is None:
                fd = self._bench_fd = self.transport.get_extra_info("socket").fileno()
            received = kernel_receive_time(fd)
            if received is None:
                received = time.time()
                stamps["read"] += 1
            else:
                stamps["kernel"] += 1
            arrivals[(int.from_bytes(data[8:12], "big"), int.from_bytes(data[2:4], "big"))] = received
        original(self, data, addr)

    aioice.ice.StunProtocol.datagram_received = datagram_received
    aioice.ice.StunProtocol._bench_arrivals = True
