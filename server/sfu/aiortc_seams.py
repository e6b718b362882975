"""Every reliance on aiortc's and aioice's internals, in one place.

aiortc has no public API for forwarding encoded RTP: its receiver always
reassembles and decodes, its sender always packetizes what a track yields.
A pass-through SFU needs to take packets out of a receiver before its jitter
buffer and to put packets into a sender's RTP path (so that the sender's own
RTCP, NACK/RTX retransmission and sender reports keep working).

The hooks below touch private, name-mangled attributes of aiortc 1.16.0 (the
version pinned in pyproject.toml). tests/test_aiortc_seams.py checks each one
against the installed aiortc, so an upgrade fails there, loudly, first.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aioice.ice
import pylibsrtp
from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpSender
from aiortc import clock as aiortc_clock
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State as _DtlsState
from aiortc.rtcrtpreceiver import TimestampMapper
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTP_HISTORY_SIZE,
    RtcpPsfbPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

from server.sfu.fastpath import DirectRoute
from server.sfu.timestamps import kernel_receive_time

SUPPORTED_AIORTC = "1.16.0"

log = logging.getLogger(__name__)

# --- ICE on loopback ----------------------------------------------------------

_original_get_host_addresses = aioice.ice.get_host_addresses


def use_loopback_ice(enabled: bool, only: bool = False) -> None:
    """Make aioice offer 127.0.0.1 as a host candidate.

    aioice leaves loopback out on purpose (RFC 8445 section 5.1.1.1), so in a
    loopback-only network namespace aiortc would offer no candidate at all.
    `only=True` offers nothing but loopback: tests use it so that no packet
    ever leaves the machine.
    """
    if not enabled:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = [] if only else _original_get_host_addresses(use_ipv4, use_ipv6)
        if use_ipv4 and "127.0.0.1" not in addresses:
            addresses.insert(0, "127.0.0.1")
        return addresses

    aioice.ice.get_host_addresses = get_host_addresses


def use_ice_host_addresses(addresses: list[str]) -> None:
    """Make aioice offer exactly `addresses` as host candidates (the
    benchmark's peers of a server that will not use loopback)."""
    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


# --- receiver side: packets out before the jitter buffer ---------------------

class _PacketTap:
    """Stands in for a receiver's jitter buffer and keeps the last packet.

    The receiver calls `add()` after it has unwrapped RTX, updated its RTCP
    statistics and sent NACKs for gaps, which is exactly the state we want.
    Returning (False, None) means no frame is ever handed to the decoder.
    """

    __slots__ = ("packet",)

    def __init__(self) -> None:
        self.packet: RtpPacket | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        self.packet = packet
        return False, None


def tap_receiver(receiver: RTCRtpReceiver,
                 on_packet: Callable[[RtpPacket], Awaitable[None]]) -> None:
    """Forward each RTP packet the receiver accepts to `on_packet`, undecoded.

    Packets arrive in network order (retransmissions late), already unwrapped
    from RTX, with the publisher's SSRC, sequence number and timestamp.
    Packets that a `forward_on_arrival` handler took are not handed over again.
    """
    tap = _PacketTap()
    receiver._RTCRtpReceiver__jitter_buffer = tap  # type: ignore[attr-defined]
    original = receiver._handle_rtp_packet

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        await original(packet, arrival_time_ms)
        forwarded = tap.packet
        if forwarded is not None:
            tap.packet = None
            arrivals = getattr(receiver.transport, _ARRIVALS_ATTRIBUTE, None)
            if arrivals is None or not arrivals.handled:
                await on_packet(forwarded)

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]


class _Handled(bytes):
    """A datagram decrypted, and taken by a handler, as it arrived; with when
    it reached its socket (`arrival_ms`, aiortc's clock: ms since 1900) and
    the packet parsed from it (aiortc need not parse it again)."""

    arrival_ms: int
    packet: RtpPacket


class _PassHandled:
    """Stands in for a DTLS transport's receiving SRTP session: a datagram
    already decrypted on arrival passes, everything else is decrypted by the
    session as before. (Decrypting twice would fail libsrtp's replay check.)"""

    __slots__ = ("session",)

    def __init__(self, session: pylibsrtp.Session) -> None:
        self.session = session

    def unprotect(self, data: bytes) -> bytes:
        return data if type(data) is _Handled else self.session.unprotect(data)

    def unprotect_rtcp(self, data: bytes) -> bytes:
        return self.session.unprotect_rtcp(data)


_ARRIVALS_ATTRIBUTE = "_goldenhour_arrivals"
#: How long aiortc's bookkeeping of a packet taken on arrival may wait for
#: the end of its frame (NACKs for a gap go out that much later at most).
BOOKKEEPING_DELAY_S = 0.005


class _Arrivals:
    """One DTLS transport's handlers for RTP packets as they arrive.

    aiortc handles a datagram two event-loop hops after it arrives (aioice's
    queue, then the DTLS transport's task), and a tapped receiver hands it over
    only after its statistics, NACK and bitrate bookkeeping: about 0.15 ms of
    Python per packet, paid in series by every packet of a video frame before
    it can be forwarded. Here the datagram is decrypted and parsed inside
    aioice's datagram callback and handed to its handler at once; uvloop reads
    a burst of datagrams (a frame's packets) one callback after the other. The
    decrypted packet then goes on to aiortc as before, marked, so that the
    receiver still does its bookkeeping, and its tap does not forward it twice.
    aiortc's receiver is told when the packet reached the socket, not when
    aiortc got to it: its bitrate estimator works from arrival times.

    That bookkeeping (about 0.15 ms a packet) waits until the frame is in:
    aiortc's DTLS transport drains aioice's queue in one go, and the rest of
    a frame, trickling in, would wait in the socket behind it. So the
    datagrams a handler took are held back, with whatever arrives after them
    (arrival order is kept), until a packet with the marker bit (a video
    frame's last) or for at most BOOKKEEPING_DELAY_S (audio, a lost marker).
    Four paired runs at N=16 (2026-11-26 16:15-16:25): the server's socket
    wait p99 5.5-6.0 ms with it against 6.1-7.9 ms without, every time.
    """

    def __init__(self, transport: Any) -> None:
        #: SSRC -> (payload type, handler, the receiver it stands in front of)
        self.handlers: dict[int, tuple[int, Callable[[RtpPacket, float], None], Any]] = {}
        #: True while aiortc handles a packet a handler already took.
        self.handled = False
        self.errors = 0
        connection = transport.transport._connection
        data_received = connection.data_received
        handle_rtp_data = transport._handle_rtp_data
        extensions = transport._rtp_header_extensions_map
        handlers = self.handlers
        nominated = connection._nominated
        #: The nominated pair and its socket's fd (-1: none), resolved once per pair.
        socket_of: list[Any] = [None, -1]
        #: Datagrams held back from aiortc until the frame is in, in arrival order.
        backlog: deque[tuple[bytes, int]] = deque()
        deadline: list[asyncio.TimerHandle | None] = [None]
        loop = asyncio.get_event_loop()

        def on_datagram(data: bytes, component: int) -> None:
            # RTP, not RTCP (RFC 5761: payload types 64-95 are RTCP's range)
            if handlers and 127 < data[0] < 192 and len(data) >= 12 and not 192 <= data[1] <= 223:
                entry = handlers.get(int.from_bytes(data[8:12], "big"))
                session = transport._rx_srtp
                # (A receiver its transceiver's direction disabled drops
                # everything: so does this.)
                if entry is not None and entry[0] == data[1] & 0x7F and session is not None \
                        and entry[2]._enabled:
                    # Media comes on the nominated pair: the datagram just
                    # read from its socket is this one.
                    pair = nominated.get(component)
                    if pair is not socket_of[0]:
                        sock = pair.protocol.transport.get_extra_info("socket") \
                            if pair is not None and pair.protocol.transport is not None else None
                        socket_of[:] = [pair, sock.fileno() if sock is not None else -1]
                    arrived = kernel_receive_time(socket_of[1]) if socket_of[1] >= 0 else None
                    if arrived is None:
                        arrived = time.time()
                    if type(session) is not _PassHandled:
                        session = transport._rx_srtp = _PassHandled(session)
                    try:
                        clear = session.session.unprotect(data)
                        packet = RtpPacket.parse(clear, extensions)
                    except (pylibsrtp.Error, ValueError):
                        pass  # aiortc drops it as before, with its own log line
                    else:
                        try:
                            entry[1](packet, arrived)
                        except Exception:
                            # Never into aioice's datagram callback.
                            self.errors += 1
                            log.exception("an RTP arrival handler failed")
                        data = _Handled(clear)
                        data.arrival_ms = int((arrived + _NTP_EPOCH_OFFSET_S) * 1000)
                        data.packet = packet
                        backlog.append((data, component))
                        if packet.marker:
                            # The frame is in: its bookkeeping may run (after
                            # the handler's forwarding, scheduled before this).
                            loop.call_soon(release)
                        elif deadline[0] is None:
                            deadline[0] = loop.call_later(BOOKKEEPING_DELAY_S, release)
                        return
            if backlog:
                backlog.append((data, component))  # keeps arrival order
                return
            data_received(data, component)

        def release() -> None:
            if deadline[0] is not None:
                deadline[0].cancel()
                deadline[0] = None
            while backlog:
                data_received(*backlog.popleft())

        async def on_rtp_data(data: bytes, arrival_time_ms: int) -> None:
            if type(data) is not _Handled:
                await handle_rtp_data(data, arrival_time_ms)
                return
            # aiortc's DTLS transport handles one datagram at a time, to the end.
            # (What its _handle_rtp_data does, with the packet already parsed.)
            receiver = transport._rtp_router.route_rtp(data.packet)
            if receiver is None:
                return
            self.handled = True
            try:
                await receiver._handle_rtp_packet(data.packet, arrival_time_ms=data.arrival_ms)
            finally:
                self.handled = False

        connection.data_received = on_datagram
        transport._handle_rtp_data = on_rtp_data


def forward_on_arrival(receiver: RTCRtpReceiver, ssrc: int, payload_type: int,
                       handler: Callable[[RtpPacket, float], None]) -> Callable[[], None]:
    """Hand `receiver`'s RTP packets with `ssrc` and `payload_type` (the media
    stream, not its RTX) to `handler(packet, arrived)` as their datagrams
    arrive, decrypted and parsed, before aiortc's receiver sees them
    (`arrived`: when the datagram reached its socket, the kernel's receive
    timestamp, as time.time()). `receiver`'s tap then skips
    them. Returns what stops it. Call once the receiver's transport is final
    (after negotiation: BUNDLE may replace it) and connected.
    """
    transport = receiver.transport
    arrivals = getattr(transport, _ARRIVALS_ATTRIBUTE, None)
    if arrivals is None:
        arrivals = _Arrivals(transport)
        setattr(transport, _ARRIVALS_ATTRIBUTE, arrivals)
    entry = (payload_type, handler, receiver)
    arrivals.handlers[ssrc] = entry

    def stop() -> None:
        if arrivals.handlers.get(ssrc) is entry:
            del arrivals.handlers[ssrc]

    return stop


class UpstreamRemb:
    """The REMB (draft-alvestrand-rmcat-remb) a video receiver sends its
    publisher: aiortc's own estimate of the uplink, capped by `cap()` (the
    SFU's word for what its subscribers can take), and at most one per
    `min_interval_ms`.

    aiortc's remote bitrate estimator returns a new estimate for every packet
    while it judges the link overused, and the receiver sends each one: a
    REMB (RTCP build, SRTCP, sendto) per packet, on exactly the busy machine
    that can least afford it. libwebrtc rate-limits the same feedback. The
    first estimate after the interval is sent, so a falling estimate still
    reaches the publisher within `min_interval_ms`. `send_now()` sends the
    capped estimate without waiting for aiortc's next one, for when the cap
    itself moved.
    """

    def __init__(self, receiver: RTCRtpReceiver, cap: Callable[[], int | None],
                 min_interval_ms: int = 200) -> None:
        self._receiver = receiver
        self._cap = cap
        self.min_interval_ms = min_interval_ms
        #: aiortc's latest estimate of the uplink (bits/s), and the SSRCs it covers.
        self.own_bps: int | None = None
        self._ssrcs: list[int] = []
        #: The latest REMB sent upstream (bits/s) and when (aiortc's clock:
        #: ms since 1900, which its arrival times also use).
        self.sent_bps: int | None = None
        self.sent_at_ms = -(1 << 62)
        estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
        if estimator is None:
            return
        estimate = estimator.add

        def add(arrival_time_ms: int, abs_send_time: int, payload_size: int, ssrc: int):
            remb = estimate(arrival_time_ms=arrival_time_ms, abs_send_time=abs_send_time,
                            payload_size=payload_size, ssrc=ssrc)
            if remb is None:
                return None
            self.own_bps, self._ssrcs = remb
            if arrival_time_ms - self.sent_at_ms < self.min_interval_ms:
                return None
            bitrate = self.wanted_bps()
            self.sent_bps, self.sent_at_ms = bitrate, arrival_time_ms
            return bitrate, self._ssrcs

        estimator.add = add

    def wanted_bps(self) -> int | None:
        """What a REMB sent now would say (None: nothing to say yet)."""
        try:
            cap = self._cap()
        except Exception:
            # Called from aiortc's receive path: an error here would end the
            # publisher's DTLS transport. Its own estimate still goes out.
            log.exception("the subscribers' bitrate cap failed; sending the uplink's estimate")
            cap = None
        own = self.own_bps
        if cap is None or own is None:
            return cap if own is None else own
        return min(own, cap)

    def due_in_ms(self) -> int:
        """How long until the minimum interval since the last REMB is over."""
        return max(0, self.sent_at_ms + self.min_interval_ms - aiortc_clock.current_ms())

    async def send_now(self, media_ssrcs: list[int]) -> None:
        """Send the capped estimate at once, for the streams aiortc's
        estimate covers (before it has one: `media_ssrcs`)."""
        bitrate = self.wanted_bps()
        if bitrate is not None:
            self.sent_bps, self.sent_at_ms = bitrate, aiortc_clock.current_ms()
            await send_remb(self._receiver, bitrate, self._ssrcs or media_ssrcs)


async def send_remb(receiver: RTCRtpReceiver, bitrate_bps: int, media_ssrcs: list[int]) -> None:
    """Send a REMB from `receiver` to its sender: at most `bitrate_bps` for
    the streams `media_ssrcs`. Nothing before the receiver has an RTCP SSRC
    (before negotiation)."""
    rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
    if rtcp_ssrc is not None:
        await receiver._send_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0,
                                                 fci=pack_remb_fci(bitrate_bps, media_ssrcs)))


def watch_remb(sender: RTCRtpSender, on_estimate: Callable[[int], None]) -> None:
    """Call `on_estimate(bits_per_second)` for every REMB the sender's peer
    sends about the sender's stream; aiortc's own handling (an encoder's
    target bitrate, when the sender has one) carries on."""
    handle = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                pass  # an application-layer feedback message that is not REMB
            else:
                if sender._ssrc in ssrcs:
                    try:
                        on_estimate(bitrate)
                    except Exception:
                        # Raised into aiortc's RTCP handling, it would end this
                        # subscriber's DTLS transport.
                        log.exception("a REMB handler failed; the REMB is ignored")
        await handle(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


async def request_keyframe(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Send a PLI for `media_ssrc` to the publisher behind `receiver`."""
    await receiver._send_rtcp_pli(media_ssrc)


def receiver_media_ssrcs(receiver: RTCRtpReceiver) -> set[int]:
    """The SSRCs a receiver has seen media on (RTX included)."""
    return set(receiver._RTCRtpReceiver__remote_streams)  # type: ignore[attr-defined]


def receiver_payload_types(receiver: RTCRtpReceiver, mime_type: str) -> set[int]:
    """The payload types a receiver negotiated for `mime_type` (e.g. video/rtx)."""
    codecs = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
    return {pt for pt, codec in codecs.items() if codec.mimeType.lower() == mime_type.lower()}


def record_rtp_timestamps(receiver: RTCRtpReceiver) -> dict[int, int]:
    """Map each decoded frame's pts back to the RTP timestamp it arrived with.

    aiortc rebases RTP timestamps to start at 0 before decoding; clients that
    look up a frame's camera pose need the original. Returns a dict filled as
    frames are decoded (pts -> RTP timestamp), bounded to the last 512 frames.
    """
    table: dict[int, int] = {}
    mapper: TimestampMapper = receiver._RTCRtpReceiver__timestamp_mapper  # type: ignore
    original = mapper.map

    def map_and_record(timestamp: int) -> int:
        pts = original(timestamp)
        table[pts] = timestamp
        if len(table) > 512:
            del table[next(iter(table))]
        return pts

    mapper.map = map_and_record  # type: ignore[method-assign]
    return table


# --- sender side: packets in without a track ---------------------------------

class HoldTrack(MediaStreamTrack):
    """A track that never yields, so a forwarding sender's own RTP loop idles.

    An aiortc sender with no track polls every 20 ms; with this track its RTP
    task sleeps on one future until stopped, costing nothing per subscriber.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._stopped = asyncio.get_event_loop().create_future()

    async def recv(self) -> Any:
        await asyncio.shield(self._stopped)
        raise MediaStreamError

    def stop(self) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)
        super().stop()


_DTLS_CONNECTED = _DtlsState.CONNECTED
_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
_ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
_AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
_NTP_EPOCH_OFFSET_S = 2208988800  # 1900-01-01 to 1970-01-01


def abs_send_time_now() -> bytes:
    """The abs-send-time header extension value for now: 6.18 fixed-point seconds."""
    return ((int((time.time() + _NTP_EPOCH_OFFSET_S) * (1 << 18))) & 0xFFFFFF).to_bytes(3, "big")


class RtpInjector:
    """Puts already-encoded RTP packets into an aiortc sender's RTP path.

    The forwarding path is the SFU's per-packet, per-subscriber cost, so the
    header is packed by hand (RFC 3550 fixed header plus RFC 8285 one-byte
    extensions for mid and abs-send-time) instead of building an aiortc
    RtpPacket: 2-3 us instead of about 28 us. The bytes go into our own
    retransmission history; when this subscriber NACKs, the packet is parsed
    back into the sender's history and the sender's own `_retransmit` answers
    (over RTX when negotiated). The counters its RTCP sender reports read are
    kept up to date.
    """

    def __init__(self, sender: RTCRtpSender) -> None:
        self._sender = sender
        self.payload_type: int | None = None
        #: The sequence number the next packet should carry, so that the
        #: subscriber sees one contiguous stream across consumers (a departed
        #: producer's transceiver is reused for the next one).
        self.next_seq = random.randrange(0, 32768)
        #: RTP timestamp of the newest packet sent (None before the first).
        self.last_timestamp: int | None = None
        self._history: dict[int, bytes] = {}
        self._aiortc_history: dict[int, RtpPacket] = sender._RTCRtpSender__rtp_history  # type: ignore
        self._extensions_map = sender._RTCRtpSender__rtp_header_extensions_map  # type: ignore
        self._transport = sender.transport
        self._started = asyncio.Event()
        self._ext_prefix = b""
        self._ext_padding = b""
        self._ext_words = 0
        self._with_ast = False
        self._level_id = 0
        self._pair: Any = None
        self._sendto: Callable[[bytes, Any], None] | None = None
        self._remote_addr: Any = None
        self._packets = 0
        self._octets = 0
        #: Packets sent again because this subscriber NACKed them.
        self.retransmitted = 0
        self._on_keyframe_request: Callable[[], None] = _nothing
        self._on_ready: Callable[[], None] = _nothing
        self._on_bitrate_estimate: Callable[[int], None] = _ignore_estimate
        self._hold = HoldTrack(sender.kind)
        #: Bumped whenever negotiation changes the header we write.
        self._config_version = 0
        #: While the C loop sends for this sender: its counters and clear
        #: packets (server/sfu/fastpath.py), and our counters when it started.
        self._fast: Any = None
        self._fast_key = 0
        self._fast_base = (0, 0)
        sender.replaceTrack(self._hold)
        # A subscriber's PLI/FIR reaches the sender's `_send_keyframe`, which
        # would only flag its (unused) encoder: route it to the SFU instead.
        sender._send_keyframe = lambda: self._on_keyframe_request()  # type: ignore[method-assign]
        watch_remb(sender, lambda bitrate: self._on_bitrate_estimate(bitrate))
        original_send = sender.send
        original_retransmit = sender._retransmit

        async def send(parameters: Any) -> None:
            self._configure(parameters)
            self._transport = sender.transport
            await original_send(parameters)
            # aiortc calls send() again on every renegotiation: ready once.
            if not self._started.is_set():
                self._started.set()
                self._on_ready()

        async def retransmit(sequence_number: int) -> None:
            data = None
            if self._fast is not None:
                data = self._fast.history(self._fast_key, sequence_number)
            if data is None:
                data = self._history.get(sequence_number % RTP_HISTORY_SIZE)
                if data is None or int.from_bytes(data[2:4], "big") != sequence_number:
                    return
            packet = RtpPacket.parse(data, self._extensions_map)
            self._aiortc_history[sequence_number % RTP_HISTORY_SIZE] = packet
            await original_retransmit(sequence_number)
            self.retransmitted += 1

        sender.send = send  # type: ignore[method-assign]
        sender._retransmit = retransmit  # type: ignore[method-assign]

    def attach(self, on_keyframe_request: Callable[[], None],
               on_ready: Callable[[], None],
               on_bitrate_estimate: Callable[[int], None] | None = None) -> None:
        """Give the sender to a (new) consumer: its subscriber's keyframe
        requests go to `on_keyframe_request`, its estimates of what its link
        can take (REMB, bits/s) to `on_bitrate_estimate`; `on_ready` is called
        once the transport can carry media (at once, if it already can)."""
        self._on_keyframe_request = on_keyframe_request
        self._on_ready = on_ready
        self._on_bitrate_estimate = on_bitrate_estimate or _ignore_estimate
        if self.ready:
            on_ready()

    def detach(self) -> None:
        self._on_keyframe_request = self._on_ready = _nothing
        self._on_bitrate_estimate = _ignore_estimate

    def close(self) -> None:
        self.detach()
        self._hold.stop()

    def _configure(self, parameters: Any) -> None:
        self._config_version += 1
        self.payload_type = parameters.codecs[0].payloadType
        ids = {ext.uri: ext.id for ext in parameters.headerExtensions if 1 <= ext.id <= 14}
        mid = (parameters.muxId or "").encode()
        mid_ext = b""
        if ids.get(_MID_URI) and 1 <= len(mid) <= 16:
            mid_ext = bytes([(ids[_MID_URI] << 4) | (len(mid) - 1)]) + mid
        ast_id = ids.get(_ABS_SEND_TIME_URI, 0)
        self._level_id = ids.get(_AUDIO_LEVEL_URI, 0)
        # Per packet only abs-send-time (and audio level) change: keep the rest
        # of the RFC 8285 one-byte-header block ready.
        self._ext_prefix = mid_ext + (bytes([(ast_id << 4) | 2]) if ast_id else b"")
        self._with_ast = bool(ast_id)
        fixed_length = len(self._ext_prefix) + (3 if ast_id else 0)
        self._ext_padding = b"\0" * (-fixed_length % 4)
        self._ext_words = (fixed_length + len(self._ext_padding)) >> 2

    @property
    def ready(self) -> bool:
        # Checked for every packet of every consumer: the transport's public
        # `state` formats an enum into a string each time.
        return self._transport._state is _DTLS_CONNECTED and self._started.is_set()

    def _send_direct(self, data: bytes) -> bool:
        """Protect and send on the nominated ICE pair's socket, synchronously.

        The same steps as RTCDtlsTransport._send_rtp -> RTCIceTransport._send
        -> aioice Connection.send -> StunProtocol.send_data, without four
        coroutine frames per packet per subscriber. Returns False when the
        path is not plain (not yet connected, no nominated pair), and the
        caller takes aiortc's path.
        """
        dtls = self._transport
        if dtls._state is not _DTLS_CONNECTED:
            return False
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            return False
        if pair is not self._pair:  # resolve once per nominated pair
            self._pair = pair
            self._sendto = pair.protocol.transport.sendto
            self._remote_addr = pair.remote_addr
        self._sendto(dtls._tx_srtp.protect(data), self._remote_addr)
        return True

    @property
    def ssrc(self) -> int:
        return self._sender._ssrc

    # --- the C loop (server/sfu/fastpath.py) ----------------------------------

    def direct_route(self) -> DirectRoute | None:
        """What the C loop needs to send this sender's packets itself: the
        nominated pair's socket and address, the transport's SRTP session, the
        header. None while there is no plain direct path."""
        dtls = self._transport
        if dtls._state is not _DTLS_CONNECTED or not self._started.is_set() or self.payload_type is None:
            return None
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return None
        sock = pair.protocol.transport.get_extra_info("socket")
        if sock is None:
            return None
        return DirectRoute(session=dtls._tx_srtp, fd=sock.fileno(), host=pair.remote_addr[0],
                           port=pair.remote_addr[1], ssrc=self._sender._ssrc,
                           payload_type=self.payload_type, ext_prefix=self._ext_prefix,
                           abs_send_time=self._with_ast, level_id=self._level_id,
                           pair=pair, config_version=self._config_version)

    def route_holds(self, route: DirectRoute) -> bool:
        """Whether the C loop may go on sending on `route`."""
        dtls = self._transport
        return (dtls._state is _DTLS_CONNECTED and dtls._tx_srtp is route.session
                and dtls.transport._connection._nominated.get(1) is route.pair
                and self._config_version == route.config_version)

    def begin_fast(self, fast: Any, key: int) -> None:
        """The C loop sends from now on (its table under `key`)."""
        self._fast, self._fast_key = fast, key
        self._fast_base = (self._packets, self._octets)

    def sync_fast(self, counters: dict[str, Any] | None) -> None:
        """Take over what the C loop sent: sequence numbers, timestamps and the
        sender report's counters."""
        if not counters or not counters["sent_any"]:
            return
        self._packets = self._fast_base[0] + counters["packets"]
        self._octets = self._fast_base[1] + counters["octets"]
        self.next_seq = (counters["last_seq"] + 1) & 0xFFFF
        self.last_timestamp = counters["last_timestamp"]
        self._report_counters(counters["last_timestamp"])

    def end_fast(self, counters: dict[str, Any] | None, kept: dict[int, bytes]) -> None:
        """Python sends again; the packets the C loop still kept stay retransmittable."""
        self.sync_fast(counters)
        for seq, data in kept.items():
            self._history[seq % RTP_HISTORY_SIZE] = data
        self._fast = None

    def send(self, source: RtpPacket, sequence_number: int, timestamp: int,
             abs_send_time: bytes) -> Coroutine[Any, Any, None] | None:
        """Send `source`'s payload as our packet `sequence_number`.

        On the nominated ICE pair it is sent at once and this returns None: no
        coroutine per packet per subscriber on the forwarding path. Until that
        path is open it returns the coroutine that sends through aiortc, which
        the caller awaits. `abs_send_time` comes from abs_send_time_now(),
        computed once per incoming packet for all of its copies.
        """
        level = source.extensions.audio_level
        if level is not None and self._level_id:
            ext = self._ext_prefix + (abs_send_time if self._with_ast else b"") + bytes(
                ((self._level_id << 4), (0x80 if level[0] else 0) | level[1]))
            ext += b"\0" * (-len(ext) % 4)
            words = len(ext) >> 2
        else:
            ext = self._ext_prefix + (abs_send_time if self._with_ast else b"") \
                + self._ext_padding
            words = self._ext_words
        if words:
            header = _HEADER_WITH_EXTENSION.pack(
                0x90, (source.marker << 7) | self.payload_type, sequence_number, timestamp,
                self._sender._ssrc, 0xBEDE, words)
        else:
            header = _HEADER.pack(0x80, (source.marker << 7) | self.payload_type,
                                  sequence_number, timestamp, self._sender._ssrc)
        data = b"".join((header, ext, source.payload))
        self._history[sequence_number % RTP_HISTORY_SIZE] = data
        if not self._send_direct(data):
            return self._send_through_aiortc(data, len(source.payload), sequence_number, timestamp)
        self._sent(len(source.payload), sequence_number, timestamp, source.marker)
        return None

    async def _send_through_aiortc(self, data: bytes, payload_bytes: int, sequence_number: int,
                                   timestamp: int) -> None:
        await self._transport._send_rtp(data)
        self._sent(payload_bytes, sequence_number, timestamp, True)

    def _sent(self, payload_bytes: int, sequence_number: int, timestamp: int,
              marker: bool) -> None:
        if (sequence_number - self.next_seq) & 0xFFFF < 0x8000:
            self.next_seq = (sequence_number + 1) & 0xFFFF
            self.last_timestamp = timestamp
        self._packets += 1
        self._octets += payload_bytes
        # The sender report's counters (read about once a second) are handed to
        # the aiortc sender at the end of each video frame and every 16th packet
        # otherwise (audio sets the marker only at a talkspurt's start), not for
        # every packet of every consumer.
        if marker or not self._packets & 15:
            self._report_counters(timestamp)

    def _report_counters(self, timestamp: int) -> None:
        sender = self._sender
        sender._RTCRtpSender__packet_count = self._packets  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count = self._octets  # type: ignore[attr-defined]
        # Sender reports pair these two for lip sync: always set them together.
        sender._RTCRtpSender__rtp_timestamp = timestamp  # type: ignore[attr-defined]
        sender._RTCRtpSender__ntp_timestamp = int(  # type: ignore[attr-defined]
            (time.time() + _NTP_EPOCH_OFFSET_S) * (1 << 32))


def _nothing() -> None:
    pass


def _ignore_estimate(bitrate: int) -> None:
    pass


_HEADER = struct.Struct("!BBHLL")
_HEADER_WITH_EXTENSION = struct.Struct("!BBHLLHH")


def negotiated_codecs(transceiver: Any) -> list[Any]:
    """The codecs a transceiver negotiated, preferred first (RTX entries included)."""
    return list(transceiver._codecs)


def watch_sent_rtp(sender: RTCRtpSender,
                   on_packet: Callable[[int, int, bool], None]) -> None:
    """Call on_packet(sequence_number, rtp_timestamp, marker) for each RTP packet
    `sender` puts on the wire.

    aiortc picks a random RTP timestamp origin inside its sender's RTP task and
    never exposes it; a publisher that keys camera poses by RTP timestamp
    learns the mapping from what actually goes out. Call after the transport
    exists (after setLocalDescription).
    """
    transport = sender.transport
    original = transport._send_rtp
    watched: dict[int, Callable[[int, int, bool], None]] = getattr(
        transport, "_goldenhour_watched", {})
    watched[sender._ssrc] = on_packet
    if getattr(transport, "_goldenhour_watched", None) is None:
        transport._goldenhour_watched = watched  # type: ignore[attr-defined]

        async def send_rtp(data: bytes) -> None:
            # RTP, not RTCP (RFC 5761: payload types 64-95 are RTCP's range)
            if len(data) >= 12 and not 192 <= data[1] <= 223:
                callback = watched.get(int.from_bytes(data[8:12], "big"))
                if callback is not None:
                    callback(int.from_bytes(data[2:4], "big"),
                             int.from_bytes(data[4:8], "big"), bool(data[1] & 0x80))
            await original(data)

        transport._send_rtp = send_rtp  # type: ignore[method-assign]


def drop_incoming_rtp(transport: Any, should_drop: Callable[[RtpPacket], bool]) -> None:
    """Drop the RTP packets a DTLS transport receives for which should_drop(packet)
    holds, after decryption and before routing: simulated network loss for tests
    and benchmarks, on the receiving side of one peer only."""
    original = transport._handle_rtp_data
    extensions = transport._rtp_header_extensions_map

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        try:
            packet = RtpPacket.parse(data, extensions)
        except ValueError:
            packet = None
        if packet is not None and should_drop(packet):
            return
        await original(data, arrival_time_ms)

    transport._handle_rtp_data = handle_rtp_data


def drop_arriving_rtp(transport: Any, should_drop: Callable[[int, int, int], bool]) -> None:
    """Drop the SRTP datagrams a DTLS transport's ICE connection receives for
    which should_drop(ssrc, payload_type, sequence_number) holds (from the
    clear RTP header), before anything else sees them: simulated network loss
    in front of a `forward_on_arrival` handler. Install it after the handler."""
    connection = transport.transport._connection
    original = connection.data_received

    def data_received(data: bytes, component: int) -> None:
        if 127 < data[0] < 192 and len(data) >= 12 and not 192 <= data[1] <= 223 and should_drop(
                int.from_bytes(data[8:12], "big"), data[1] & 0x7F, int.from_bytes(data[2:4], "big")):
            return
        original(data, component)

    connection.data_received = data_received
