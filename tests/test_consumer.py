"""A consumer's sequence-number arithmetic, driven directly for many packets.

The end-to-end tests run for seconds; these run a consumer through the 16-bit
wrap and past 32,768 packets, where a stream of 2.5 Mbit/s arrives after two
minutes.
"""

from __future__ import annotations

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtp import RtpPacket

from server.sfu.consumer import Consumer


class StubProducer:
    kind = "video"

    def __init__(self) -> None:
        self.consumers: list = []
        self.keyframe_requests = 0

    def add_consumer(self, consumer) -> None:
        self.consumers.append(consumer)

    def remove_consumer(self, consumer) -> None:
        self.consumers.remove(consumer)

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1

    def clock(self) -> float:
        return 0.0


class RecordingInjector:
    """Stands in for RtpInjector: records what would go on the wire."""

    ready = True
    #: NACKed packets sent again (RtpInjector counts them; none here).
    retransmitted = 0

    def __init__(self, next_seq: int = 1000) -> None:
        self.sent: list[tuple[int, int]] = []  # (out sequence number, RTP timestamp)
        self.next_seq = next_seq
        self.attached = False

    def attach(self, on_keyframe_request, on_ready, on_bitrate_estimate=None) -> None:
        self.attached = True
        on_ready()

    def detach(self) -> None:
        self.attached = False

    def send(self, source, sequence_number, timestamp, abs_send_time) -> None:
        # As RtpInjector on an open path: sent at once, nothing to await.
        self.sent.append((sequence_number, timestamp))
        if (sequence_number - self.next_seq) & 0xFFFF < 0x8000:
            self.next_seq = (sequence_number + 1) & 0xFFFF


@pytest.fixture
def consumer():
    consumer = Consumer(StubProducer(), RecordingInjector(), "subscriber")
    yield consumer
    consumer.close()


def packet(seq: int) -> RtpPacket:
    return RtpPacket(sequence_number=seq & 0xFFFF, timestamp=seq * 10 & 0xFFFFFFFF,
                     payload=b"\x10\x00")


async def test_forwards_contiguously_across_the_wrap_and_past_32768_packets(consumer):
    first = 60000
    for k in range(100_000):  # wraps at 65536, and runs past 32768 and 65536 packets
        assert consumer.forward(packet(first + k), b"\0\0\0") is None  # sent at once
    sent = consumer._injector.sent
    assert len(sent) == 100_000
    assert all((b[0] - a[0]) & 0xFFFF == 1 for a, b in zip(sent, sent[1:]))
    assert [ts for _, ts in sent[:3]] == [packet(first + k).timestamp for k in range(3)]


async def test_until_the_direct_path_opens_a_send_is_awaited_and_its_failure_restarts_the_consumer():
    class SlowPathInjector(RecordingInjector):
        """As RtpInjector before the nominated pair exists: aiortc's path, awaited."""
        fail = False

        def send(self, source, sequence_number, timestamp, abs_send_time):
            async def through_aiortc():
                if self.fail:
                    raise ConnectionError("transport closed")
                super(SlowPathInjector, self).send(source, sequence_number, timestamp, abs_send_time)
            return through_aiortc()

    injector = SlowPathInjector()
    producer = StubProducer()
    consumer = Consumer(producer, injector, "subscriber")
    pending = consumer.forward(packet(7), b"\0\0\0")
    assert pending is not None and consumer.packets_out == 0
    await pending
    assert consumer.packets_out == 1 and len(injector.sent) == 1
    injector.fail = True
    requests = producer.keyframe_requests
    await consumer.forward(packet(8), b"\0\0\0")
    assert consumer.packets_dropped == 1 and consumer.waiting_for_keyframe
    assert producer.keyframe_requests == requests + 1
    consumer.close()


async def test_retransmission_repeats_its_sequence_number_and_older_ones_are_dropped(consumer):
    start = 65000
    for k in range(40_000):
        consumer.forward(packet(start + k), b"\0\0\0")
    sent = consumer._injector.sent
    original = sent[39_990][0]
    consumer.forward(packet(start + 39_990), b"\0\0\0")  # a late retransmission
    assert sent[-1][0] == original



async def test_retransmission_from_before_the_consumer_started_is_dropped(consumer):
    start = 65530  # and across the wrap
    for k in range(100):
        consumer.forward(packet(start + k), b"\0\0\0")
    count = len(consumer._injector.sent)
    consumer.forward(packet(start - 5), b"\0\0\0")
    assert len(consumer._injector.sent) == count


async def test_one_failing_consumer_does_not_cost_the_others_the_packet():
    from server.sfu.producer import Producer

    class Failing:
        waiting_for_keyframe = False
        fast = False
        id = "failing"

        def enter_fast(self, fast, producer_ext):
            return False

        async def forward(self, packet, abs_send_time):
            raise RuntimeError("this subscriber's transport broke in an unexpected way")

    class Healthy:
        waiting_for_keyframe = False
        fast = False
        id = "healthy"

        def enter_fast(self, fast, producer_ext):
            return False

        def __init__(self) -> None:
            self.got: list[int] = []

        async def forward(self, packet, abs_send_time):
            self.got.append(packet.sequence_number)

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        producer = Producer(receiver, "video", "video/VP8", {}, "crew")
        healthy = Healthy()
        producer.add_consumer(Failing())
        producer.add_consumer(healthy)
        for seq in range(3):
            await producer._on_packet(packet(seq))
        assert healthy.got == [0, 1, 2]
        assert producer.forwarding_errors == 3
    finally:
        await pc.close()


async def test_a_new_consumer_starts_on_the_first_packet_of_a_keyframe():
    from server.sfu.producer import Producer

    delta_start, keyframe_start, continuation = b"\x10\x01\x00", b"\x10\x00\x00", b"\x00\x00"
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        producer = Producer(receiver, "video", "video/VP8", {}, "crew")
        consumer = Consumer(producer, RecordingInjector(), "subscriber")
        stream = [delta_start, continuation, continuation, keyframe_start, continuation,
                  delta_start, continuation]
        for seq, payload in enumerate(stream):
            await producer._on_packet(RtpPacket(sequence_number=seq, timestamp=seq // 3,
                                                payload=payload))
        sent = consumer._injector.sent
        assert len(sent) == 4  # from the keyframe's first packet on
        assert [(b - a) & 0xFFFF for (a, _), (b, _) in zip(sent, sent[1:])] == [1, 1, 1]
        producer.close()
    finally:
        await pc.close()


def test_a_consumer_taking_over_a_transceiver_continues_its_sequence_numbers():
    injector = RecordingInjector(next_seq=500)
    first = Consumer(StubProducer(), injector, "subscriber")
    import asyncio

    async def feed(consumer, start, count):
        for k in range(count):
            consumer.forward(packet(start + k), b"\0\0\0")
    asyncio.run(feed(first, 40000, 10))
    first.close()
    assert not injector.attached
    second = Consumer(StubProducer(), injector, "subscriber")  # the next crew's camera
    asyncio.run(feed(second, 7, 10))
    assert [seq for seq, _ in injector.sent] == list(range(500, 520))


async def test_a_request_while_one_is_deferred_is_answered_by_the_deferred_one():
    """The coalescing window has passed but the deferred request's timer has
    not run yet (the event loop is busy with a burst of datagrams): a new ask
    must not send a second request upstream next to the deferred one."""
    from server.sfu.producer import KEYFRAME_REQUEST_INTERVAL_S, Producer

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        producer = Producer(receiver, "video", "video/VP8", {}, "crew")
        producer.media_ssrc = 1234
        producer.request_keyframe()  # goes at once
        producer.request_keyframe()  # deferred to the window's end
        assert producer.keyframe_requests_sent == 1 and producer._deferred is not None
        # The window is over; the deferred request is due but has not run.
        producer.last_keyframe_request_at -= KEYFRAME_REQUEST_INTERVAL_S
        producer.request_keyframe()
        assert producer.keyframe_requests_sent == 1
        assert producer._deferred is not None  # the one request still to go
        producer.close()
    finally:
        await pc.close()


async def test_packets_that_arrive_together_are_forwarded_together_once_read():
    """The on-arrival path collects the datagrams the event loop reads in one
    go and forwards them right after, in arrival order, once; a packet that
    arrives later is its own burst."""
    import asyncio

    from server.sfu.producer import Producer

    class Recording:
        waiting_for_keyframe = False
        fast = False
        id = "recording"

        def __init__(self) -> None:
            self.got: list[int] = []

        def enter_fast(self, fast, producer_ext):
            return False

        def forward(self, packet, abs_send_time):
            self.got.append(packet.sequence_number)

        def close(self) -> None:
            pass

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        producer = Producer(receiver, "video", "video/VP8", {}, "crew")
        consumer = Recording()
        producer.add_consumer(consumer)
        for seq in (10, 11, 12):
            producer._on_arrival(RtpPacket(sequence_number=seq, payload=b"\x10\x00\x00"), 0.0)
        assert consumer.got == []  # still reading the burst
        await asyncio.sleep(0)  # the event loop runs its callbacks
        assert consumer.got == [10, 11, 12]
        producer._on_arrival(RtpPacket(sequence_number=13, payload=b"\x00"), 0.0)
        await asyncio.sleep(0)
        assert consumer.got == [10, 11, 12, 13]
        assert producer.packets_on_arrival == producer.packets_in == 4
        producer.close()
    finally:
        await pc.close()


def test_forwarding_delays_pair_every_copy_with_its_packets_arrival():
    """Each copy's delay is its consumer's send time minus its packet's
    arrival; a packet's last copy is the latest consumer's. The log keeps
    between `keep` and twice `keep` bursts, the newest."""
    from server.sfu.producer import BurstLog, forwarding_delays_s

    log = BurstLog(keep=2)
    assert [len(a) for a in forwarding_delays_s(*log.take())] == [0, 0]
    log.add([1.0, 1.5], [2.0, 3.0, 4.0])  # two packets, three consumers
    log.add([10.0], [10.25])
    each, last = forwarding_delays_s(*log.take())
    assert sorted(each.tolist()) == [0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert last.tolist() == [3.0, 2.5, 0.25]
    for start in (20.0, 30.0, 40.0):  # five bursts: past twice keep
        log.add([start], [start + 0.5])
    each, last = forwarding_delays_s(*log.take(reset=True))
    assert last.tolist() == [0.5, 0.5, 0.5]  # the oldest two forgotten
    assert [len(a) for a in forwarding_delays_s(*log.take())] == [0, 0]
