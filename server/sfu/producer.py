"""A producer: one incoming track of a publisher, forwarded undecoded to its consumers."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
from aiortc import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from server.sfu import aiortc_seams, fastpath
from server.sfu.keyframes import keyframe_detector

if TYPE_CHECKING:
    from server.sfu.consumer import Consumer

log = logging.getLogger(__name__)

#: Keyframe requests upstream are coalesced to at most one per this interval
#: (seconds); a request inside the window is deferred to its end, never dropped.
KEYFRAME_REQUEST_INTERVAL_S = 0.3
#: While any consumer waits for a keyframe, ask again this often (seconds):
#: the first PLI or the keyframe itself may be lost.
KEYFRAME_RETRY_S = 0.5
#: Each member of the C loop is tended (its path checked, its counters handed
#: to aiortc for sender reports) at every TEND_EVERY-th frame end, members in
#: turn: every 133 ms at 30 fps. Tending every member every frame was 8.5% of
#: the server's CPU at 16 subscribers (py-spy, 2026-11-26), about 0.08% of a
#: core per subscriber; sender reports go out about once a second.
TEND_EVERY = 4
#: The REMB sent to the publisher is the lowest of its subscribers' estimates
#: (and of the server's own estimate of the uplink), but one subscriber's link
#: never pulls it below this (bits/s): without simulcast every subscriber gets
#: the same picture, and a 720p picture below about 400 kbit/s is too coarse
#: to guide by. A subscriber slower than this loses packets on its own link
#: and recovers with NACK and keyframes, as any subscriber does.
SUBSCRIBER_BITRATE_FLOOR_BPS = 400_000
#: A subscriber's estimate counts this long after its latest REMB (seconds);
#: receivers send one at least every second or so while media flows.
SUBSCRIBER_ESTIMATE_TTL_S = 5.0
#: The REMB goes upstream at once when what it would say moved by this
#: fraction since the last one sent (libwebrtc's REMB throttle uses 3%).
REMB_CHANGE_TO_SEND = 0.03


def forward_on_arrival_enabled() -> bool:
    """Whether producers forward a packet as its datagram arrives (the
    default), or only after aiortc's receiver has handled it
    (GOLDENHOUR_FORWARD=after-receiver, for comparisons and as a way out)."""
    return os.environ.get("GOLDENHOUR_FORWARD", "on-arrival").lower() != "after-receiver"


class BurstLog:
    """The bursts a producer sent, for its forwarding delays: each packet's
    arrival at the socket and when each consumer had the burst's copies
    (time.time()'s clock), the last `keep` to `2 * keep` bursts.

    Kept in flat arrays of C numbers, which hold no Python objects: Python's
    collector never counts or walks them. A deque of a tuple and a list per
    burst (2026-11-26) made generation-1 collections run, with pauses of
    14-70 ms, where the server had none.
    """

    def __init__(self, keep: int = 4096) -> None:
        self._keep = keep
        self._arrivals = array("d")
        self._done = array("d")
        #: Per burst: how many packets, how many consumers.
        self._sizes = array("q")

    def add(self, arrivals: Iterable[float], done: list[float]) -> None:
        before = len(self._arrivals)
        self._arrivals.extend(arrivals)
        self._sizes.append(len(self._arrivals) - before)
        self._sizes.append(len(done))
        self._done.extend(done)
        if len(self._sizes) > 4 * self._keep:
            # Forget the oldest half (`keep` bursts).
            sizes = self._sizes[:2 * self._keep]
            del self._arrivals[:sum(sizes[0::2])]
            del self._done[:sum(sizes[1::2])]
            del self._sizes[:2 * self._keep]

    def take(self, reset: bool = False) -> tuple[array, array, array]:
        """A copy of the log (arrivals, done, sizes); `reset` forgets it."""
        taken = (array("d", self._arrivals), array("d", self._done), array("q", self._sizes))
        if reset:
            del self._arrivals[:], self._done[:], self._sizes[:]
        return taken


def forwarding_delays_s(arrivals: array, done: array, sizes: array) -> tuple[np.ndarray, np.ndarray]:
    """Forwarding delays in seconds, from a `BurstLog.take()`: from each
    packet's arrival at the server's socket to each copy of it handed to the
    kernel, and to its last copy. Vectorized, but for 4096 bursts of 9
    packets to 16 consumers still tens of ms: run it off the event loop."""
    pairs = np.frombuffer(sizes, dtype=np.int64).reshape(-1, 2) if len(sizes) else None
    if pairs is None:
        return np.empty(0), np.empty(0)
    arrival_s = np.frombuffer(arrivals, dtype=np.float64)
    done_s = np.frombuffer(done, dtype=np.float64)
    n_arrivals, n_done = pairs[:, 0], pairs[:, 1]
    first_arrival = np.cumsum(n_arrivals) - n_arrivals
    first_done = np.cumsum(n_done) - n_done
    # Every (consumer, packet) pair of every burst: copy number c of burst b
    # is consumer c // n_arrivals[b] and packet c % n_arrivals[b].
    copies = n_arrivals * n_done
    burst_of = np.repeat(np.arange(len(pairs)), copies)
    within = np.arange(int(copies.sum())) - np.repeat(np.cumsum(copies) - copies, copies)
    size = n_arrivals[burst_of]
    each = (done_s[first_done[burst_of] + within // size]
            - arrival_s[first_arrival[burst_of] + within % size])
    latest = np.maximum.reduceat(done_s, first_done)
    last = latest[np.repeat(np.arange(len(pairs)), n_arrivals)] - arrival_s
    return each, last


class Producer:
    """One encoded track arriving from a publisher (the glasses' camera, a microphone).

    It taps the aiortc receiver before its jitter buffer and hands every packet,
    in arrival order, to each consumer. It owns upstream keyframe requests.
    """

    def __init__(self, receiver: RTCRtpReceiver, kind: str, mime_type: str,
                 codec_parameters: dict, peer_id: str) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.kind = kind
        self.mime_type = mime_type
        self.codec_parameters = codec_parameters
        self.peer_id = peer_id
        self.media_ssrc: int | None = None
        self.packets_in = 0
        #: Of those, the packets forwarded as their datagram arrived.
        self.packets_on_arrival = 0
        #: RTP timestamp of the latest packet (None before the first).
        self.last_timestamp: int | None = None
        #: Set when the first packet arrives.
        self.flowing = asyncio.Event()
        self.forwarding_errors = 0
        self.keyframe_requests_sent = 0
        #: Event-loop time of the last keyframe request sent upstream.
        self.last_keyframe_request_at = -1e9
        #: Event-loop times of the recent requests sent upstream (tests, stats).
        self.keyframe_request_times: deque[float] = deque(maxlen=64)
        #: Recent bursts sent, for the forwarding delays.
        self.sent_bursts = BurstLog()
        #: Of the packets taken on arrival, how long each waited in the socket
        #: before the event loop read it (recent ones, seconds).
        self.socket_waits_s: deque[float] = deque(maxlen=20000)
        self._receiver = receiver
        self._consumers: list[Consumer] = []
        self._is_keyframe_start = keyframe_detector(mime_type)
        self._deferred: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.get_event_loop()
        #: The C loop for steady consumers (None: every copy in Python).
        self._fast = fastpath.FastFanout() if fastpath.enabled() else None
        #: The sequence number of the newest packet, extended past 16 bits.
        self._highest_ext: int | None = None
        #: The SSRC whose packets are taken on arrival, and what stops that.
        self._forwarding_on_arrival: int | None = None
        self._stop_arrivals: Callable[[], None] | None = None
        #: How many times the C loop's members were due for tending.
        self._tend_points = 0
        #: Packets that arrived since the event loop last ran its callbacks.
        self._arrived: list[tuple[RtpPacket, float]] = []
        aiortc_seams.tap_receiver(receiver, self._on_packet)
        #: The bandwidth feedback to the publisher (video only: REMB).
        self._remb = aiortc_seams.UpstreamRemb(receiver, self.subscriber_bitrate_cap) \
            if kind == "video" else None
        self._remb_due: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        return tuple(self._consumers)

    def add_consumer(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)

    def remove_consumer(self, consumer: Consumer) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        if consumer.fast and self._fast is not None:
            consumer.leave_fast(self._fast, self._highest_ext or 0)
        # Its estimate no longer holds the others back.
        self.bitrate_feedback_changed()

    # --- bandwidth feedback ------------------------------------------------------

    def subscriber_bitrate_cap(self) -> int | None:
        """The lowest recent estimate among the subscribers (bits/s), at
        least `SUBSCRIBER_BITRATE_FLOOR_BPS`; None while none has one."""
        now = self._loop.time()
        fresh = [c.bitrate_estimate_bps for c in self._consumers
                 if c.bitrate_estimate_bps is not None
                 and now - c.bitrate_estimate_at <= SUBSCRIBER_ESTIMATE_TTL_S]
        return max(SUBSCRIBER_BITRATE_FLOOR_BPS, min(fresh)) if fresh else None

    @property
    def upstream_bitrate_bps(self) -> int | None:
        """The latest REMB sent to the publisher (bits/s)."""
        return self._remb.sent_bps if self._remb is not None else None

    @property
    def uplink_estimate_bps(self) -> int | None:
        """The server's own estimate of the publisher's uplink (bits/s)."""
        return self._remb.own_bps if self._remb is not None else None

    def bitrate_feedback_changed(self) -> None:
        """A subscriber's estimate came, or a subscriber left: if the REMB the
        publisher would get moved, send it now (or, inside the minimum
        interval, at its end) instead of with aiortc's next estimate."""
        remb = self._remb
        if remb is None or self._closed or self._remb_due is not None:
            return
        wanted, sent = remb.wanted_bps(), remb.sent_bps
        if wanted is None or (sent is not None and abs(wanted - sent) < REMB_CHANGE_TO_SEND * sent):
            return
        self._remb_due = self._loop.call_later(remb.due_in_ms() / 1000, self._send_remb)

    def _send_remb(self) -> None:
        self._remb_due = None
        if self._closed or self._remb is None or self.media_ssrc is None:
            return
        task = self._loop.create_task(self._remb.send_now([self.media_ssrc]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def fast_consumers(self) -> int:
        """How many consumers the C loop sends to now."""
        return len(self._fast) if self._fast is not None else 0

    def _extend(self, seq: int) -> int:
        highest = self._highest_ext
        if highest is None:
            self._highest_ext = seq
            return seq
        ext = highest + ((seq - highest + 0x8000) & 0xFFFF) - 0x8000
        if ext > highest:
            self._highest_ext = ext
        return ext

    async def _on_packet(self, packet: RtpPacket) -> None:
        """A packet from the receiver's tap, after aiortc's receive path: the
        first packets, and retransmissions (unwrapped from RTX). Once the
        stream is known its packets are taken on arrival (`_on_arrival`)."""
        arrived = time.time()
        if self._forwarding_on_arrival != packet.ssrc and not self._closed \
                and forward_on_arrival_enabled():
            if self._stop_arrivals is not None:
                self._stop_arrivals()
            self._stop_arrivals = aiortc_seams.forward_on_arrival(
                self._receiver, packet.ssrc, packet.payload_type, self._on_arrival)
            self._forwarding_on_arrival = packet.ssrc
        for consumer, pending in self._forward([(packet, arrived)]):
            try:
                await pending
            except Exception:
                self._forwarding_failed(consumer)

    def _on_arrival(self, packet: RtpPacket, arrived: float) -> None:
        """A packet of the stream, decrypted as its datagram arrived.

        Packets that arrive together (a video frame's burst: the event loop
        reads every datagram waiting on the socket before it runs anything
        else) are forwarded together, right after the last of them is read:
        the C loop then sends each subscriber the whole burst before the next
        one. No packet waits for one that has not arrived yet."""
        self.packets_on_arrival += 1
        self.socket_waits_s.append(time.time() - arrived)
        self._arrived.append((packet, arrived))
        if len(self._arrived) == 1:
            self._loop.call_soon(self._forward_arrived)

    def _forward_arrived(self) -> None:
        arrived, self._arrived = self._arrived, []
        pending = self._forward(arrived)
        if pending:
            task = self._loop.create_task(self._finish(pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _finish(self, pending: list[tuple[Consumer, Awaitable[None]]]) -> None:
        for consumer, sending in pending:
            try:
                await sending
            except Exception:
                self._forwarding_failed(consumer)

    def _forward(self, packets: list[tuple[RtpPacket, float]]) -> list[tuple[Consumer, Awaitable[None]]]:
        """Send packets (with their arrival times, in arrival order) to every
        consumer; returns the sends still to await (consumers whose direct
        path is not open yet)."""
        pending: list[tuple[Consumer, Awaitable[None]]] = []
        fast = self._fast
        part: list[tuple[RtpPacket, int, float]] = []
        for packet, arrived in packets:
            self.media_ssrc = packet.ssrc
            self.last_timestamp = packet.timestamp
            self.packets_in += 1
            if self.packets_in == 1:
                self.flowing.set()
            ext = self._extend(packet.sequence_number)
            part.append((packet, ext, arrived))
            # Once a video frame (about every 8th audio packet) consumers
            # that became steady join the C loop (the packets sent so far are
            # the last they got from Python), and a quarter of its members,
            # in turn, are checked and have their counters handed over.
            if fast is not None and (packet.marker or not self.packets_in & 7) \
                    and ext == self._highest_ext:
                self._send(part, pending)
                part = []
                self._tend_points += 1
                turn = self._tend_points
                for i, consumer in enumerate(self._consumers):
                    if not consumer.fast:
                        consumer.enter_fast(fast, ext)
                    elif (turn + i) % TEND_EVERY == 0:
                        consumer.tend_fast(fast, ext)
        if part:
            self._send(part, pending)
        return pending

    def _send(self, packets: list[tuple[RtpPacket, int, float]],
              pending: list[tuple[Consumer, Awaitable[None]]]) -> None:
        """Each consumer gets all of `packets` before the next one gets any."""
        consumers = self._consumers
        if not consumers or self._closed:
            return
        abs_send_time = aiortc_seams.abs_send_time_now()
        fast = self._fast
        done: list[float] = []
        if fast is not None and len(fast):
            burst = []
            for packet, ext, _ in packets:
                if len(packet.payload) <= fastpath.MAX_PAYLOAD:
                    burst.append((packet, ext))
                else:
                    # Past what fits a datagram with our longest header: not
                    # from a WebRTC sender. Lost for the C loop's members,
                    # who recover as from any loss.
                    self._forwarding_failed(None)
            done = fast.send_many(burst, abs_send_time)
        is_key: list[bool | None] = [None] * len(packets)
        for consumer in consumers:
            if consumer.fast:
                continue
            sent = False
            for i, (packet, _, _) in enumerate(packets):
                if consumer.waiting_for_keyframe:
                    if is_key[i] is None:
                        is_key[i] = self._is_keyframe_start(packet.payload)
                    if not is_key[i]:
                        continue
                try:
                    sending = consumer.forward(packet, abs_send_time)
                    sent = True
                    if sending is not None:  # its direct path is not open yet
                        pending.append((consumer, sending))
                except Exception:
                    # One subscriber's failure must not cost the others this packet.
                    self._forwarding_failed(consumer)
            if sent:
                done.append(time.time())
        if done:
            self.sent_bursts.add((arrived for _, _, arrived in packets), done)

    def _forwarding_failed(self, consumer: Consumer | None) -> None:
        self.forwarding_errors += 1
        if self.forwarding_errors & (self.forwarding_errors - 1) == 0:  # 1, 2, 4, 8...
            log.error("forwarding failed", exc_info=sys.exc_info()[0] is not None, extra={
                "producer": self.id, "consumer": consumer.id if consumer else "the C loop's members",
                "errors": self.forwarding_errors})

    def clock(self) -> float:
        return self._loop.time()

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, coalesced across consumers."""
        if self._closed or self.kind != "video":
            return
        now = self._loop.time()
        wait = self.last_keyframe_request_at + KEYFRAME_REQUEST_INTERVAL_S - now
        if self._deferred is not None:
            pass  # the deferred request answers this one too
        elif wait <= 0:
            self._send_keyframe_request()
        else:
            self._deferred = self._loop.call_later(wait, self._send_keyframe_request)
        self._arm_retry()

    def _send_keyframe_request(self) -> None:
        self._deferred = None
        if self._closed or self.media_ssrc is None:
            # Nothing has arrived yet: the first packets will include a
            # keyframe anyway; retry keeps asking until they do.
            return
        self.last_keyframe_request_at = self._loop.time()
        self.keyframe_request_times.append(self.last_keyframe_request_at)
        self.keyframe_requests_sent += 1
        task = self._loop.create_task(
            aiortc_seams.request_keyframe(self._receiver, self.media_ssrc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _arm_retry(self) -> None:
        if self._retry is None and not self._closed:
            self._retry = self._loop.call_later(KEYFRAME_RETRY_S, self._retry_if_waiting)

    def _retry_if_waiting(self) -> None:
        self._retry = None
        if any(c.wants_keyframe for c in self._consumers):
            self.request_keyframe()

    def close(self) -> None:
        self._closed = True
        for handle in (self._deferred, self._retry, self._remb_due):
            if handle is not None:
                handle.cancel()
        if self._stop_arrivals is not None:
            self._stop_arrivals()
            self._stop_arrivals = None
        for task in self._tasks:
            task.cancel()
        for consumer in list(self._consumers):
            consumer.close()
        self._consumers.clear()
