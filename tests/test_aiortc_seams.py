"""The hooks into aiortc's and aioice's internals (server/sfu/aiortc_seams.py).

These break loudly when an aiortc upgrade moves what the SFU relies on.
"""

from __future__ import annotations

import contextlib
import fractions
import inspect
import re
import time
from collections.abc import Callable
from pathlib import Path

import aioice.ice
import aiortc
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpCodecParameters
from aiortc.codecs import get_encoder
from aiortc.rtp import RtpPacket

from server.sfu import aiortc_seams
from server.sfu.keyframes import h264_starts_keyframe, keyframe_detector, vp8_starts_keyframe


def test_installed_aiortc_is_the_version_the_seams_were_written_for():
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    pinned = re.search(r'"aiortc==([^"]+)"', pyproject).group(1)
    assert aiortc.__version__ == pinned == aiortc_seams.SUPPORTED_AIORTC


async def test_receiver_and_sender_still_have_the_private_state_the_seams_use():
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        transceiver = pc.addTransceiver("video", direction="sendrecv")
        receiver, sender = transceiver.receiver, transceiver.sender
        estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator
        assert callable(estimator.add)
        assert list(inspect.signature(estimator.add).parameters) == [
            "arrival_time_ms", "abs_send_time", "payload_size", "ssrc"]
        for name in ("_RTCRtpReceiver__jitter_buffer", "_RTCRtpReceiver__timestamp_mapper",
                     "_RTCRtpReceiver__remote_streams", "_RTCRtpReceiver__codecs"):
            assert hasattr(receiver, name), name
        assert callable(receiver._handle_rtp_packet) and callable(receiver._send_rtcp_pli)
        # REMB both ways: sent with the receiver's RTCP SSRC; heard through
        # the sender's _handle_rtcp_packet, which the DTLS transport looks up
        # on each RTCP packet (so an instance attribute stands in for it).
        assert callable(receiver._send_rtcp) and hasattr(receiver, "_RTCRtpReceiver__rtcp_ssrc")
        assert callable(sender._handle_rtcp_packet) and hasattr(sender, "_ssrc")
        assert "await recipient._handle_rtcp_packet(packet)" in \
            inspect.getsource(aiortc.rtcdtlstransport.RTCDtlsTransport._handle_rtcp_data)
        assert receiver._enabled is True  # forward_on_arrival honours it
        for name in ("_RTCRtpSender__rtp_history", "_RTCRtpSender__rtp_header_extensions_map",
                     "_RTCRtpSender__mid", "_RTCRtpSender__ntp_timestamp",
                     "_RTCRtpSender__rtp_timestamp", "_RTCRtpSender__octet_count",
                     "_RTCRtpSender__packet_count"):
            assert hasattr(sender, name), name
        assert callable(sender._send_keyframe) and callable(sender._retransmit)
        assert hasattr(transceiver, "_codecs")
        transport = sender.transport
        assert callable(transport._send_rtp) and callable(transport._handle_rtp_data)
        assert hasattr(transport, "_rtp_header_extensions_map")
        # RtpInjector._send_direct: DTLS state and SRTP session, ICE's nominated pairs.
        assert hasattr(transport, "_state") and hasattr(transport, "_tx_srtp")
        assert isinstance(transport.transport._connection._nominated, dict)
        # forward_on_arrival: aioice hands data to its connection's
        # data_received; aiortc decrypts with _rx_srtp (which the seam stands
        # in for) and hands clear data to _handle_rtp_data.
        assert callable(transport.transport._connection.data_received)
        assert hasattr(transport, "_rx_srtp")
        receive_next = inspect.getsource(type(transport)._recv_next)
        assert "self._rx_srtp.unprotect(data)" in receive_next
        assert "self._handle_rtp_data(data, arrival_time_ms=arrival_time_ms)" in receive_next
        handle_rtp_data = inspect.getsource(type(transport)._handle_rtp_data)
        assert "self._rtp_router.route_rtp(packet)" in handle_rtp_data
        assert "receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)" in handle_rtp_data
        assert "self.receiver.data_received(data, self.local_candidate.component)" in \
            inspect.getsource(aioice.ice.StunProtocol.datagram_received)
        assert isinstance(aioice.ice.CandidatePair.remote_addr, property)
        assert "protocol" in aioice.ice.CandidatePair.__init__.__code__.co_varnames
        # The jitter buffer's add() contract the packet tap stands in for.
        pli, frame = receiver._RTCRtpReceiver__jitter_buffer.add(
            aiortc.rtp.RtpPacket(sequence_number=1, timestamp=1))
        assert (pli, frame) == (False, None)
    finally:
        await pc.close()


def test_loopback_ice_offers_127_0_0_1_and_can_offer_nothing_else():
    try:
        aiortc_seams.use_loopback_ice(True, only=True)
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]
        aiortc_seams.use_loopback_ice(True, only=False)
        assert "127.0.0.1" in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    finally:
        aiortc_seams.use_loopback_ice(True, only=True)  # what the test suite runs with


def test_ice_can_offer_exactly_the_addresses_given():
    """The benchmark's Janus peers offer the address of an interface of
    their own (Janus never gathers on loopback)."""
    try:
        aiortc_seams.use_ice_host_addresses(["10.77.0.1", "fd00::1"])
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["10.77.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["10.77.0.1", "fd00::1"]
    finally:
        aiortc_seams.use_loopback_ice(True, only=True)  # what the test suite runs with


def _encoded(mime_type: str, force_keyframe: bool, frames_before: int = 0) -> list[bytes]:
    encoder = get_encoder(RTCRtpCodecParameters(
        mimeType=mime_type, clockRate=90000, payloadType=96,
        parameters={"packetization-mode": "1", "profile-level-id": "42e01f"}
        if mime_type == "video/H264" else {}))
    rng = np.random.default_rng(1)
    payloads: list[bytes] = []
    for i in range(frames_before + 1):
        image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = i * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=force_keyframe and i == frames_before)
    return payloads


@pytest.mark.parametrize("mime_type, detector", [("video/VP8", vp8_starts_keyframe),
                                                 ("video/H264", h264_starts_keyframe)])
def test_keyframe_start_is_recognised_in_real_encoder_output(mime_type, detector):
    key = _encoded(mime_type, force_keyframe=True)
    delta = _encoded(mime_type, force_keyframe=False, frames_before=2)
    assert detector(key[0]), "first packet of a keyframe not recognised"
    assert not any(detector(p) for p in delta), "a delta frame taken for a keyframe"
    assert keyframe_detector(mime_type) is detector
    assert keyframe_detector("audio/opus")(b"\x00")


def test_keyframe_detectors_survive_truncated_payloads():
    for payload in (b"", b"\x90", b"\x90\x80", b"\x7c", b"\x18\x00"):
        vp8_starts_keyframe(payload)
        h264_starts_keyframe(payload)
    with pytest.raises(ValueError, match="no keyframe detector"):
        keyframe_detector("video/AV1")


@pytest.mark.parametrize("cap_bps", [None, 150_000])
async def test_remb_is_sent_at_most_once_per_interval_while_overused(cap_bps):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator
        upstream = aiortc_seams.UpstreamRemb(receiver, lambda: cap_bps, min_interval_ms=200)
        sent = []
        # 2 s of 250 packets/s whose arrival spacing grows: a queue building up,
        # which aiortc's detector calls overuse (and would answer per packet).
        arrival = 0.0
        for i in range(500):
            send_time_ms = i * 4
            arrival += 4 + (0.6 if i > 100 else 0)
            abs_send_time = int(send_time_ms / 1000 * (1 << 18)) & 0xFFFFFF
            remb = estimator.add(arrival_time_ms=int(arrival), abs_send_time=abs_send_time,
                                 payload_size=1200, ssrc=1)
            if remb is not None:
                sent.append(int(arrival))
                # aiortc's own estimate, capped by what the subscribers take.
                assert remb[0] == min(upstream.own_bps, cap_bps or upstream.own_bps) \
                    == upstream.sent_bps
                assert remb[1] == [1]
        assert sent, "no REMB at all: the estimator never produced an estimate"
        assert all(b - a >= 200 for a, b in zip(sent, sent[1:]))
        if cap_bps is not None:
            assert upstream.own_bps > cap_bps, "the cap was never the lower of the two"
    finally:
        await pc.close()


def test_the_benchmarks_aiortc_hooks_still_find_their_targets():
    """bench/sender_seams.py pins aiortc's VP8 bitrate constants and hears a
    sender's keyframe requests (its `_send_keyframe`, checked above) for a track
    of pre-encoded packets, which the sender packs as they are;
    bench/receiver_seams.py silences a receiver's REMB estimator (checked above)
    and wraps its jitter buffer's add()."""
    from aiortc.codecs import vpx
    from aiortc.jitterbuffer import JitterBuffer
    for name in ("DEFAULT_BITRATE", "MIN_BITRATE", "MAX_BITRATE"):
        assert isinstance(getattr(vpx, name), int), name
    assert callable(JitterBuffer.add)
    assert list(inspect.signature(vpx.Vp8Encoder.pack).parameters) == ["self", "packet"]


async def test_a_datagram_read_late_keeps_its_kernel_receive_timestamp():
    """The SFU's forwarding delay starts at a datagram's kernel receive
    timestamp (SIOCGSTAMPNS), and bench/receiver_seams.py times the
    benchmark's subscribers' datagrams the same way, through aioice's protocol
    class: a datagram read late must still carry the time it arrived."""
    import asyncio
    import socket
    import time

    from server.sfu.timestamps import kernel_receive_time

    assert callable(aioice.ice.StunProtocol.datagram_received)

    loop = asyncio.get_running_loop()
    got: asyncio.Queue = asyncio.Queue()

    class Reader(asyncio.DatagramProtocol):
        def connection_made(self, transport) -> None:
            self.fd = transport.get_extra_info("socket").fileno()

        def datagram_received(self, data: bytes, addr) -> None:
            got.put_nowait((data, kernel_receive_time(self.fd), time.time()))

    transport, reader = await loop.create_datagram_endpoint(Reader, local_addr=("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        target = transport.get_extra_info("sockname")
        sender.sendto(b"first", target)  # its read turns timestamping on
        await got.get()
        sent = time.time()
        sender.sendto(b"second", target)
        time.sleep(0.05)  # the event loop reads it 50 ms late
        data, stamped, read = await got.get()
        assert data == b"second"
        assert stamped is not None and sent - 0.001 <= stamped < sent + 0.02
        assert read - stamped > 0.04
    finally:
        sender.close()
        transport.close()


@contextlib.asynccontextmanager
async def _audio_call(on_tapped: Callable[[RtpPacket], None]):
    """A real aiortc call over loopback (an Opus track one way) whose
    receiver is tapped, yielding (receiver, receiving peer connection, the
    first packet tapped)."""
    import asyncio

    from aiortc.mediastreams import AudioStreamTrack

    aiortc_seams.use_loopback_ice(True, only=True)
    sender_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    first = asyncio.get_running_loop().create_future()
    try:
        sender_pc.addTrack(AudioStreamTrack())
        await sender_pc.setLocalDescription(await sender_pc.createOffer())
        await receiver_pc.setRemoteDescription(sender_pc.localDescription)
        receiver = receiver_pc.getTransceivers()[0].receiver

        async def tapped(packet) -> None:
            on_tapped(packet)
            if not first.done():
                first.set_result(packet)
        aiortc_seams.tap_receiver(receiver, tapped)
        await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
        await sender_pc.setRemoteDescription(receiver_pc.localDescription)
        yield receiver, receiver_pc, await asyncio.wait_for(first, 10)
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_packets_taken_on_arrival_still_pass_through_the_receivers_bookkeeping():
    """forward_on_arrival hands a stream's packets over as their datagrams
    arrive, decrypted and in order; aiortc's receiver still counts them (its
    RTCP reports depend on it) and its tap does not hand them over again."""
    import asyncio

    tapped: list[int] = []
    arrived: list[int] = []
    async with _audio_call(lambda packet: tapped.append(packet.sequence_number)) \
            as (receiver, _, packet):
        enough = asyncio.get_running_loop().create_future()
        arrival_times: dict[int, float] = {}
        receiver_times: dict[int, int] = {}

        def on_arrival(packet, arrived_at: float) -> None:
            # when the datagram reached the socket: the kernel's clock, time.time()'s
            assert time.time() - 5 < arrived_at <= time.time()
            arrival_times[packet.sequence_number] = arrived_at
            arrived.append(packet.sequence_number)
            if len(arrived) == 40 and not enough.done():
                enough.set_result(None)
        stop = aiortc_seams.forward_on_arrival(receiver, packet.ssrc, packet.payload_type,
                                               on_arrival)
        handle_rtp_packet = receiver._handle_rtp_packet

        async def timed(packet, arrival_time_ms: int) -> None:
            receiver_times[packet.sequence_number] = arrival_time_ms
            await handle_rtp_packet(packet, arrival_time_ms)
        receiver._handle_rtp_packet = timed
        await asyncio.wait_for(enough, 10)
        tapped_before_stop = len(tapped)
        stop()
        count_after_stop = len(arrived)
        await_tap = len(tapped) + 5
        async with asyncio.timeout(10):
            while len(tapped) < await_tap:
                await asyncio.sleep(0.02)

        # In order, none missing, and never handed over twice.
        assert arrived[:count_after_stop] == list(range(arrived[0], arrived[0] + count_after_stop))
        assert not set(arrived) & set(tapped[1:])
        assert tapped_before_stop <= len(tapped) - 5
        # After stop() the tap has them again, and nothing arrives early.
        assert len(arrived) == count_after_stop
        # Its bitrate estimator is told when each packet reached the socket
        # (aiortc's clock: ms since 1900), not when aiortc got to it.
        both = set(arrival_times) & set(receiver_times)
        assert len(both) >= 30
        assert all(receiver_times[seq] == int((arrival_times[seq] + 2208988800) * 1000)
                   for seq in both)
        # The receiver counted every packet, the ones taken on arrival included.
        report = await receiver.getStats()
        inbound = next(s for s in report.values() if s.type == "inbound-rtp")
        assert inbound.packetsReceived >= len(tapped) + len(arrived)


async def test_an_arrival_handler_that_fails_costs_nothing_but_its_packet():
    """A handler's exception never reaches aioice's datagram callback: the
    packet goes on to aiortc, which counts it, and the connection stays up."""
    import asyncio

    failures: list[int] = []
    async with _audio_call(lambda packet: None) as (receiver, receiver_pc, packet):
        def failing(packet, arrived_at: float) -> None:
            failures.append(packet.sequence_number)
            raise RuntimeError("a broken handler")
        aiortc_seams.forward_on_arrival(receiver, packet.ssrc, packet.payload_type, failing)

        async def received() -> int:
            report = await receiver.getStats()
            return next(s for s in report.values() if s.type == "inbound-rtp").packetsReceived
        before = await received()
        async with asyncio.timeout(10):
            while len(failures) < 20:
                await asyncio.sleep(0.02)
        assert await received() >= before + 15
        assert receiver_pc.connectionState == "connected"
        arrivals = getattr(receiver.transport, "_goldenhour_arrivals")
        assert arrivals.errors == len(failures)


async def test_aiortcs_bookkeeping_of_a_frame_waits_until_the_frame_is_in():
    """The datagrams a handler took reach aiortc's queue only once the
    frame's marker packet is in (a video frame's last), in arrival order with
    whatever came after them; without a marker (audio), after
    BOOKKEEPING_DELAY_S at most. The handler has each packet at once.
    Real SRTP sessions; aioice's connection and aiortc's DTLS transport are
    stood in for by the attributes the seam uses (checked against aiortc in
    test_receiver_and_sender_still_have_the_private_state_the_seams_use)."""
    import asyncio

    import pylibsrtp
    from aiortc.rtp import HeaderExtensionsMap

    key = bytes(range(30))
    tx = pylibsrtp.Session(pylibsrtp.Policy(key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx = pylibsrtp.Session(pylibsrtp.Policy(key, pylibsrtp.Policy.SSRC_ANY_INBOUND))

    class Connection:
        def __init__(self) -> None:
            self.queue: list[bytes] = []
            self._nominated: dict = {}

        def data_received(self, data: bytes, component: int) -> None:
            self.queue.append(data)

    class Ice:
        _connection = Connection()

    class Dtls:
        transport = Ice()
        _rtp_header_extensions_map = HeaderExtensionsMap()
        _rx_srtp = rx

        async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
            pass

    class Receiver:
        transport = Dtls()
        _enabled = True

    taken: list[int] = []
    receiver = Receiver()
    aiortc_seams.forward_on_arrival(receiver, 0x1234, 96,
                                    lambda packet, arrived: taken.append(packet.sequence_number))
    connection = Receiver.transport.transport._connection

    def arrive(seq: int, marker: bool = False, payload_type: int = 96) -> bytes:
        data = tx.protect(RtpPacket(payload_type=payload_type, marker=marker, sequence_number=seq,
                                    timestamp=3000, ssrc=0x1234, payload=b"\x10" * 100).serialize())
        connection.data_received(data, 1)
        return data

    arrive(1)
    arrive(2)
    rtx = arrive(3, payload_type=97)  # not the handler's: aiortc's, after those before it
    assert taken == [1, 2] and connection.queue == []
    arrive(4, marker=True)
    assert taken == [1, 2, 4] and connection.queue == []
    await asyncio.sleep(0)  # the event loop's next turn: the frame is in
    assert [int.from_bytes(d[2:4], "big") for d in connection.queue] == [1, 2, 3, 4]
    assert connection.queue[2] == rtx  # not taken: passed on as it came
    # The ones taken are decrypted (aiortc's session lets them through).
    assert RtpPacket.parse(Receiver.transport._rx_srtp.unprotect(connection.queue[0])).payload \
        == b"\x10" * 100

    connection.queue.clear()
    arrive(5)  # no marker follows
    await asyncio.sleep(0)
    assert connection.queue == [] and taken[-1] == 5
    async with asyncio.timeout(1):
        while not connection.queue:
            await asyncio.sleep(aiortc_seams.BOOKKEEPING_DELAY_S / 5)
    assert [int.from_bytes(d[2:4], "big") for d in connection.queue] == [5]

    # A receiver its transceiver's direction disabled (aiortc drops what it
    # gets): nothing is taken, everything goes to aiortc as it came.
    connection.queue.clear()
    receiver._enabled = False
    sent = arrive(6, marker=True)
    assert taken[-1] == 5 and connection.queue == [sent]
