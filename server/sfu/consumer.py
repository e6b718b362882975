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
        #: Added to the producer's RTP timestamps: 0 unless this consumer took
        #: over a transceiver, whose timestamps must then keep moving forward
        #: (announced to the subscriber as the track's rtp_timestamp_offset).
        self.timestamp_offset = timestamp_offset
        self._seq_offset = 0
        self._start_ext = 0
        self._highest_ext = 0
        self._closed = False
        producer.add_consumer(self)
        injector.attach(self._on_subscriber_keyframe_request, self._on_ready)

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
