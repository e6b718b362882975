"""The C fan-out (server/sfu/_fanout.c) and its hooks into pylibsrtp
(server/sfu/fastpath.py), on real SRTP sessions and a real UDP socket. An
upgrade of pylibsrtp that moves what the hooks reach fails here first."""

from __future__ import annotations

import os
import socket
import time

import pylibsrtp
import pytest
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

from server.sfu import _fanout, fastpath
from server.sfu.fastpath import DirectRoute, FastFanout

KEY = bytes(range(30))  # AES_CM_128_HMAC_SHA1_80: 16-byte key, 14-byte salt
MID_ID, AST_ID, LEVEL_ID = 1, 3, 4


def sessions() -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    tx = pylibsrtp.Session(pylibsrtp.Policy(KEY, pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                            pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
    rx = pylibsrtp.Session(pylibsrtp.Policy(KEY, pylibsrtp.Policy.SSRC_ANY_INBOUND,
                                            pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
    return tx, rx


def extensions_map() -> HeaderExtensionsMap:
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=MID_ID, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(
            id=AST_ID, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
        RTCRtpHeaderExtensionParameters(id=LEVEL_ID, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
    ]))
    return extensions


@pytest.fixture
def link():
    """A sending socket (the 'ICE socket') and a receiver on loopback."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    yield sender, receiver
    sender.close()
    receiver.close()


def route(session: pylibsrtp.Session, sender: socket.socket, receiver: socket.socket,
          level_id: int = 0) -> DirectRoute:
    mid = b"0"
    return DirectRoute(session=session, fd=sender.fileno(), host="127.0.0.1",
                       port=receiver.getsockname()[1], ssrc=0x1234ABCD, payload_type=96,
                       ext_prefix=bytes([(MID_ID << 4) | (len(mid) - 1)]) + mid + bytes([(AST_ID << 4) | 2]),
                       abs_send_time=True, level_id=level_id, pair=None, config_version=1)


def source(seq: int, marker: int = 0, level: tuple[bool, int] | None = None) -> RtpPacket:
    packet = RtpPacket(payload_type=100, marker=marker, sequence_number=seq, timestamp=90_000 + seq,
                       ssrc=0xFEED, payload=bytes([seq & 0xFF]) * 900)
    packet.extensions.audio_level = level
    return packet


def test_the_hooks_find_what_pylibsrtp_exports() -> None:
    assert fastpath.compiled(), "server/sfu/_fanout.c was not built (scripts/setup.sh installs gcc)"
    assert fastpath.protect_address() != 0
    tx, _ = sessions()
    assert fastpath.session_address(tx) != 0


def test_each_copy_carries_its_subscribers_header_and_decrypts(link) -> None:
    sender, receiver = link
    tx, rx = sessions()
    fanout = FastFanout()
    fanout.admit(7, route(tx, sender, receiver), seq_offset=1000, timestamp_offset=5, start_ext=70_010)
    for ext in (70_009, 70_010, 70_011):  # the first is older than this consumer
        fanout.send(source(ext & 0xFFFF, marker=ext == 70_011), ext, b"\x01\x02\x03")
    got = [RtpPacket.parse(rx.unprotect(receiver.recv(2048)), extensions_map()) for _ in range(2)]
    assert [p.sequence_number for p in got] == [(70_010 + 1000) & 0xFFFF, (70_011 + 1000) & 0xFFFF]
    assert [p.timestamp for p in got] == [90_000 + (70_010 & 0xFFFF) + 5, 90_000 + (70_011 & 0xFFFF) + 5]
    assert [p.marker for p in got] == [0, 1]
    assert all(p.ssrc == 0x1234ABCD and p.payload_type == 96 for p in got)
    assert all(p.extensions.mid == "0" and p.extensions.abs_send_time == 0x010203 for p in got)
    assert got[1].payload == bytes([70_011 & 0xFF]) * 900
    # What a NACK gets back is the clear packet that was sent.
    clear = fanout.history(7, got[1].sequence_number)
    assert RtpPacket.parse(clear, extensions_map()).payload == got[1].payload
    assert fanout.history(7, (got[1].sequence_number + 1) & 0xFFFF) is None
    # A packet lost on its way in and retransmitted by the publisher goes out
    # late; the newest sent stays the one Python would number on from.
    for ext in (70_013, 70_012):
        fanout.send(source(ext & 0xFFFF), ext, b"\x01\x02\x03")
    late = [RtpPacket.parse(rx.unprotect(receiver.recv(2048)), extensions_map()).sequence_number
            for _ in range(2)]
    assert late == [(70_013 + 1000) & 0xFFFF, (70_012 + 1000) & 0xFFFF]
    counters, kept = fanout.release(7)
    assert counters["packets"] == 4 and counters["octets"] == 3600
    assert counters["last_seq"] == late[0] and counters["send_errors"] == 0
    assert set(kept) == {p.sequence_number for p in got} | set(late)
    assert len(fanout) == 0


def test_a_burst_goes_to_each_subscriber_whole_before_the_next(link) -> None:
    """send_many: each target gets every packet of the burst, in order and in
    one sendmmsg, before the next target gets any; a target that started
    inside the burst gets only its own part; more packets than one call's
    batch go out in turns."""
    sender, receiver = link
    tx, rx = sessions()
    tx2, rx2 = sessions()
    fanout = FastFanout()
    fanout.admit(1, route(tx, sender, receiver), seq_offset=0, timestamp_offset=0, start_ext=100)
    fanout.admit(2, route(tx2, sender, receiver), seq_offset=500, timestamp_offset=0, start_ext=103)
    burst = [(source(ext, marker=ext == 108), ext) for ext in range(100, 109)]
    before = time.time()
    done = fanout.send_many(burst, b"\0\0\1")
    assert len(done) == 2 and before <= done[0] <= done[1] <= time.time()
    arrivals = [receiver.recv(2048) for _ in range(15)]
    first = [RtpPacket.parse(rx.unprotect(d), extensions_map()) for d in arrivals[:9]]
    second = [RtpPacket.parse(rx2.unprotect(d), extensions_map()) for d in arrivals[9:]]
    assert [p.sequence_number for p in first] == list(range(100, 109))
    assert [p.sequence_number for p in second] == list(range(603, 609))
    assert [p.marker for p in second] == [0] * 5 + [1]
    assert all(p.payload == bytes([p.sequence_number & 0xFF]) * 900 for p in first)
    assert fanout.history(2, 608) is not None and fanout.history(2, 602) is None
    assert fanout.counters(1)["packets"] == 9 and fanout.counters(2)["last_seq"] == 608
    long_burst = [(source(ext), ext) for ext in range(200, 200 + _fanout.BATCH + 3)]
    assert len(fanout.send_many(long_burst, b"\0\0\1")) == 2
    assert fanout.counters(1)["packets"] == 9 + len(long_burst)
    seqs = [RtpPacket.parse((rx if i % 2 == 0 else rx2).unprotect(receiver.recv(2048)),
                            extensions_map()).sequence_number
            for i in range(2) for _ in range(_fanout.BATCH)]
    assert seqs[:_fanout.BATCH] == list(range(200, 200 + _fanout.BATCH))
    assert seqs[_fanout.BATCH:] == list(range(700, 700 + _fanout.BATCH))


def test_audio_level_is_written_where_negotiated(link) -> None:
    sender, receiver = link
    tx, rx = sessions()
    fanout = FastFanout()
    fanout.admit(1, route(tx, sender, receiver, level_id=LEVEL_ID), 0, 0, 0)
    fanout.send(source(5, level=(True, 42)), 5, b"\0\0\0")
    packet = RtpPacket.parse(rx.unprotect(receiver.recv(2048)), extensions_map())
    assert packet.extensions.audio_level == (True, 42)


def test_the_table_keeps_its_own_socket_and_counts_failed_sends(link) -> None:
    """The table sends on a duplicate of the socket: closing the transport's
    descriptor cannot make it write to whatever reuses the number. A send the
    kernel refuses is counted, and the other targets still get the packet."""
    sender, receiver = link
    fanout = FastFanout()
    # (Each subscriber has its own SRTP session.) An IPv6 peer on an IPv4 socket:
    # the kernel refuses every send.
    refused = DirectRoute(**{**route(sessions()[0], sender, receiver).__dict__, "host": "::1"})
    fanout.admit(1, refused, 0, 0, 0)
    fanout.admit(2, route(sessions()[0], sender, receiver), 0, 0, 0)
    fd = sender.fileno()
    sender.close()
    assert os.path.exists(f"/proc/self/fd/{fd}") is False
    for seq in range(3):
        assert fanout.send(source(seq), seq, b"\0\0\0") == 2
    assert len([receiver.recv(2048) for _ in range(3)]) == 3
    assert fanout.counters(1)["send_errors"] == 3 and fanout.counters(1)["last_errno"] != 0
    assert fanout.counters(2)["send_errors"] == 0


def test_bad_targets_are_refused_with_the_reason(link) -> None:
    sender, receiver = link
    tx, _ = sessions()
    fanout = FastFanout()
    bad = route(tx, sender, receiver)
    with pytest.raises(ValueError, match="not an IP address"):
        fanout.admit(1, DirectRoute(**{**bad.__dict__, "host": "example.org"}), 0, 0, 0)
    with pytest.raises(ValueError, match="too long"):
        fanout.admit(1, DirectRoute(**{**bad.__dict__, "ext_prefix": b"x" * 40}), 0, 0, 0)
    assert len(fanout) == 0
    fanout.admit(1, bad, 0, 0, 0)
    jumbo = source(1)
    jumbo.payload = bytes(_fanout.MAX_PAYLOAD + 1)  # no WebRTC sender makes these; the producer counts it lost
    with pytest.raises(ValueError, match="over MAX_PAYLOAD"):
        fanout.send(jumbo, 1, b"\0\0\0")
    with pytest.raises(ValueError, match="over MAX_PAYLOAD"):
        fanout.send_many([(source(2), 2), (jumbo, 3)], b"\0\0\0")
    with pytest.raises(TypeError, match="a packet is"):
        fanout._table.send_many([(b"payload", 0, 4)], b"\0\0\0")
    assert fanout.counters(1)["packets"] == 0


def test_the_largest_packet_fits_its_history_slot(link) -> None:
    """With the longest header a target can have (a 32-byte prefix, abs-send-time,
    audio level: 40 bytes of elements) the largest payload the table takes still
    fits the clear copy it keeps: the neighbouring slot is untouched, and the
    subscriber is sent the whole payload. (It once took 4 bytes more, which ran
    over into the next slot.)"""
    sender, receiver = link
    tx, _ = sessions()
    fanout = FastFanout()
    prefix = bytes([(MID_ID << 4) | 15]) + b"m" * 16 + bytes(14) + bytes([(AST_ID << 4) | 2])
    assert len(prefix) == 32  # the longest admit() takes
    longest = DirectRoute(**{**route(tx, sender, receiver, level_id=LEVEL_ID).__dict__, "ext_prefix": prefix})
    fanout.admit(1, longest, 0, 0, 0)
    fanout.send(source(2), 2, b"\0\0\0")
    neighbour = fanout.history(1, 2)
    receiver.recv(2048)
    biggest = source(1, level=(True, 30))
    biggest.payload = bytes(range(256)) * 6 + bytes(_fanout.MAX_PAYLOAD - 1536)
    assert fanout.send(biggest, 1, b"\0\0\0") == 1
    assert fanout.history(1, 2) == neighbour
    # (pylibsrtp unprotects nothing over 1,500 bytes: the clear copy kept for
    # retransmission is what the subscriber would decrypt.)
    kept = fanout.history(1, 1)
    got = RtpPacket.parse(kept, extensions_map())
    assert got.payload == biggest.payload and got.extensions.audio_level == (True, 30)
    assert len(receiver.recv(2048)) == len(kept) + 10  # AES_CM_128_HMAC_SHA1_80's tag
