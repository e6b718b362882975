"""A consumer: one subscriber's outgoing copy of a producer."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import pylibsrtp
from aiortc.rtp import RtpPacket

from server.sfu.aiortc_seams import RtpInjector

if TYPE_CHECKING:
    from server.sfu.fastpath import FastFanout
    from server.sfu.producer import Producer

log = logging.getLogger(__name__)


class Consumer:
    """One subscriber's copy of a producer, with its own SSRC, sequence numbers,
    retransmission history (in the aiortc sender) and keyframe state.

    RTP timestamps pass through unchanged (or shifted by an announced offset),
    so poses keyed by the publisher's RTP timestamp match the frames the
    subscriber sees.
    """

    def __init__(self, producer: Producer, injector: RtpInjector, subscriber_id: str,
                 timestamp_offset: int = 0) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.producer = producer
        self.subscriber_id = subscriber_id
        self.waiting_for_keyframe = True
        self.packets_out = 0
        self.packets_dropped = 0
        self.keyframe_requests = 0
        self.last_keyframe_request_at = -1.0
        self._injector = injector
        # The injector outlives consumers (a reused m-line): count from here.
        self._retransmitted_base = injector.retransmitted
        #: Added to the producer's RTP timestamps: 0 unless this consumer took
        #: over a transceiver, whose timestamps must then keep moving forward
        #: (announced to the subscriber as the track's rtp_timestamp_offset).
        self.timestamp_offset = timestamp_offset
        self._seq_offset = 0
        self._start_ext = 0
        self._highest_ext = 0
        self._closed = False
        #: Sent by the producer's C loop (server/sfu/fastpath.py), not forward().
        self.fast = False
        self._route = None
        self._fast_base = 0
        #: The producer's extended sequence numbers minus ours, while fast.
        self._ext_shift = 0
        #: The subscriber's latest estimate of what its link can take (REMB,
        #: bits/s; None before the first) and when it came (producer clock).
        self.bitrate_estimate_bps: int | None = None
        self.bitrate_estimate_at = -1e9
        producer.add_consumer(self)
        injector.attach(self._on_subscriber_keyframe_request, self._on_ready,
                        self._on_subscriber_bitrate_estimate)

    @property
    def packets_retransmitted(self) -> int:
        """Packets sent again because the subscriber NACKed them."""
        return self._injector.retransmitted - self._retransmitted_base

    @property
    def wants_keyframe(self) -> bool:
        """Waiting for a keyframe on a transport that can carry it."""
        return self.waiting_for_keyframe and self._injector.ready and not self._closed

    def _on_ready(self) -> None:
        if self.waiting_for_keyframe:
            self.producer.request_keyframe()

    def _on_subscriber_keyframe_request(self) -> None:
        self.keyframe_requests += 1
        self.last_keyframe_request_at = self.producer.clock()
        self.producer.request_keyframe()

    def _on_subscriber_bitrate_estimate(self, bitrate_bps: int) -> None:
        self.bitrate_estimate_bps = bitrate_bps
        self.bitrate_estimate_at = self.producer.clock()
        self.producer.bitrate_feedback_changed()

    def forward(self, packet: RtpPacket, abs_send_time: bytes) -> Awaitable[None] | None:
        """Send one packet; the producer calls this only from a keyframe start on
        while `waiting_for_keyframe` is set. Sent at once (None), or, until the
        subscriber's direct path is open, returns what to await."""
        if self._closed:
            return None
        if not self._injector.ready:
            self.packets_dropped += 1
            self._restart()
            return None
        seq = packet.sequence_number
        if self.waiting_for_keyframe:
            # Rebase so the subscriber sees contiguous sequence numbers across
            # the packets we never sent it.
            self._seq_offset = (self._injector.next_seq - seq) & 0xFFFF
            self._start_ext = self._highest_ext = seq
            self.waiting_for_keyframe = False
        else:
            # Extend the 16-bit number around the highest one seen, so that
            # "before this consumer started" stays meaningful across wraps.
            ext = self._highest_ext + ((seq - self._highest_ext + 0x8000) & 0xFFFF) - 0x8000
            if ext < self._start_ext:
                return None  # a late retransmission from before this consumer started
            if ext > self._highest_ext:
                self._highest_ext = ext
        out_seq = (seq + self._seq_offset) & 0xFFFF
        try:
            pending = self._injector.send(packet, out_seq,
                                          (packet.timestamp + self.timestamp_offset) & 0xFFFFFFFF,
                                          abs_send_time)
        except (ConnectionError, pylibsrtp.Error):
            self._send_failed()
            return None
        if pending is not None:
            return self._finish(pending)
        self.packets_out += 1
        return None

    async def _finish(self, pending: Awaitable[None]) -> None:
        try:
            await pending
        except (ConnectionError, pylibsrtp.Error):
            self._send_failed()
            return
        self.packets_out += 1

    # --- the C loop ------------------------------------------------------------

    def enter_fast(self, fast: FastFanout, producer_ext: int) -> bool:
        """Hand this consumer's copies to the C loop, from the packet after the
        one the producer numbered `producer_ext` (which this consumer was sent).
        False when it cannot take them: waiting for a keyframe, no direct path."""
        if self.fast or self.waiting_for_keyframe or self._closed:
            return False
        route = self._injector.direct_route()
        if route is None:
            return False
        # Both count the same packets; ours started from the raw number.
        shift = producer_ext - self._highest_ext
        try:
            fast.admit(id(self), route, self._seq_offset, self.timestamp_offset, self._start_ext + shift)
        except (OSError, ValueError) as exc:
            log.warning("the C loop cannot take a consumer; it stays in Python",
                        extra={"consumer": self.id, "error": repr(exc)})
            return False
        self._injector.begin_fast(fast, id(self))
        self.fast, self._route, self._ext_shift = True, route, shift
        self._fast_base = self.packets_out
        return True

    def tend_fast(self, fast: FastFanout, producer_ext: int) -> None:
        """Once a frame: hand the C loop's counters to RTCP, or take the
        consumer back to Python if its path changed."""
        if self._route is not None and self._injector.route_holds(self._route):
            counters = fast.counters(id(self))
            self._injector.sync_fast(counters)
            self._count_fast(counters)
            return
        self.leave_fast(fast, producer_ext)

    def leave_fast(self, fast: FastFanout, producer_ext: int) -> None:
        """Back to forward(), which takes it from the next packet on."""
        if not self.fast:
            return
        counters, kept = fast.release(id(self))
        self._injector.end_fast(counters, kept)
        self._count_fast(counters)
        self._highest_ext = max(self._highest_ext, producer_ext - self._ext_shift)
        self.fast, self._route = False, None

    def _count_fast(self, counters: dict | None) -> None:
        if counters:
            self.packets_out = self._fast_base + counters["packets"]

    def _send_failed(self) -> None:
        """Transport gone, or SRTP refused the packet: this subscriber starts over
        on a keyframe; the others are not affected."""
        self.packets_dropped += 1
        self._restart()

    def _restart(self) -> None:
        """Start over on the next keyframe (transport not ready, or it failed)."""
        if not self.waiting_for_keyframe:
            self.waiting_for_keyframe = True
            self.producer.request_keyframe()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.producer.remove_consumer(self)
        self._injector.detach()
