"""The SFU with real aiortc peers over loopback: a simulated crew publishing, experts
subscribing, media forwarded undecoded."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from clients.hololens_bridge.simulated import ToneTrack
from tests.conftest import World, frame_code, read_frame_codes
from server.sfu import aiortc_seams, fastpath
from server.sfu.producer import KEYFRAME_REQUEST_INTERVAL_S
from server.sfu.keyframes import vp8_starts_keyframe

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, params=["c", "python"])
def fanout(request, monkeypatch) -> str:
    """Every test here runs with the C fan-out (server/sfu/_fanout.c) and with
    the Python path alone."""
    if request.param == "c" and not fastpath.compiled():
        pytest.fail("server/sfu/_fanout.c was not built (scripts/setup.sh installs gcc)")
    monkeypatch.setenv("GOLDENHOUR_FANOUT", request.param)
    return request.param


def fast_consumers(world: World, room: str = "demo") -> int:
    """How many consumers the C loop serves in `room`, over its producers."""
    found = world.server.app.state.registry.get(room)
    return sum(p.fast_consumers for p in found.router.producers) if found else 0


def _advancing(codes: list) -> bool:
    ids = [c.frame_id for c in codes]
    return all(b > a for a, b in zip(ids, ids[1:])) and ids[-1] - ids[0] >= len(ids) - 1


async def test_three_subscribers_each_decode_frames_whose_counter_advances(world: World, fanout: str):
    await world.crew()
    experts = [await world.expert(f"expert{i}") for i in range(3)]
    tracks = [await e.wait_for_track("video") for e in experts]
    results = await asyncio.gather(*(read_frame_codes(t.track, 20) for t in tracks))
    for codes in results:
        assert _advancing(codes), [c.frame_id for c in codes]
    # Past their first keyframe every video and audio copy is the C loop's,
    # and /api/stats says so.
    assert fast_consumers(world) == (6 if fanout == "c" else 0)
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{world.server.http}/api/stats")).json()
    flags = [c["c_loop"] for producer in stats for c in producer["consumers"]]
    assert len(flags) == 6 and set(flags) == {fanout == "c"}
    # Forwarded as their datagrams arrived: all but the first few packets
    # (those before the stream's SSRC was known).
    for producer in stats:
        assert producer["packets_on_arrival"] > producer["packets_in"] - 20, producer
        # Forwarding delay: from the socket (the kernel's clock) to each copy
        # handed to the kernel, and to the last copy; on one clock, so sane.
        each, last = producer["forwarding_ms"], producer["forwarding_last_copy_ms"]
        assert each["n"] >= last["n"] > 0
        assert 0 <= each["p50"] <= each["p99"] < 1000 and 0 <= last["p50"] <= last["p99"] < 1000
        assert 0 <= producer["socket_wait_ms"]["p50"] <= producer["socket_wait_ms"]["p99"] < 1000
    # All three watch the same live stream: their frame counters overlap.
    assert len(set.intersection(*(set(c.frame_id for c in codes) for codes in results))) > 5


async def test_sender_reports_count_what_each_subscriber_was_sent(world: World, fanout: str):
    """The SFU hands its own packet and byte counts to aiortc's sender reports
    (once per frame, not per packet): a subscriber's remote-outbound statistics
    follow the packets it receives."""
    await world.crew()
    expert = await world.expert("counting")
    remote = await expert.wait_for_track("video")
    await read_frame_codes(remote.track, 5)

    async def stats() -> tuple[int, int, int]:
        report = await remote.receiver.getStats()
        inbound = next(s for s in report.values() if s.type == "inbound-rtp")
        outbound = [s for s in report.values() if s.type == "remote-outbound-rtp"]
        if not outbound:
            return inbound.packetsReceived, 0, 0
        return inbound.packetsReceived, outbound[0].packetsSent, outbound[0].bytesSent

    received_before, _, _ = await stats()
    deadline = time.monotonic() + 10
    while True:
        received, reported, octets = await stats()
        if reported > received_before:
            break
        assert time.monotonic() < deadline, f"sender reports stuck at {reported} packets"
        await asyncio.sleep(0.1)
    # What it reports was sent; the subscriber has it (nothing is lost on loopback).
    assert reported <= received
    assert fast_consumers(world) == (2 if fanout == "c" else 0)
    assert octets > 100 * reported  # payload bytes, VP8 frames of hundreds of bytes


async def test_late_subscriber_gets_a_decodable_keyframe_within_one_second(world: World):
    crew = await world.crew()
    first = await world.expert("early")
    await read_frame_codes((await first.wait_for_track("video")).track, 30)
    assert crew.camera.frame_count > 30  # the stream has run past its first keyframe

    late = world.client("expert", "late")
    joined_at = time.monotonic()
    await late.connect()
    remote = await late.wait_for_track("video")
    first_payloads: list[bytes] = []

    def record(packet) -> bool:
        # (the receiver learns its payload types only once connected)
        vp8_types = aiortc_seams.receiver_payload_types(remote.receiver, "video/VP8")
        if packet.payload_type in vp8_types and not first_payloads:
            first_payloads.append(packet.payload)
        return False  # drop nothing
    aiortc_seams.drop_incoming_rtp(remote.receiver.transport, record)

    codes = await read_frame_codes(remote.track, 1)
    elapsed = time.monotonic() - joined_at
    assert codes[0].frame_id > 30
    assert elapsed < 1.0, f"late joiner's first frame took {elapsed:.3f} s"
    # The SFU started this subscriber on a keyframe, not mid-stream.
    assert vp8_starts_keyframe(first_payloads[0])


async def test_frozen_then_killed_subscriber_does_not_stall_the_others(world: World):
    await world.crew()
    steady = await world.expert("steady")
    steady_track = (await steady.wait_for_track("video")).track
    await read_frame_codes(steady_track, 5)

    env = dict(os.environ, PYTHONPATH=str(REPO))
    doomed = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "subscriber_process.py"), world.server.ws],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, doomed.stdout.readline), 30)
        assert line.startswith("DECODED"), line
        # Frozen: it reads nothing, its socket buffers fill, it answers no RTCP.
        doomed.send_signal(signal.SIGSTOP)
        frozen_codes = await read_frame_codes(steady_track, 30)
        # Then gone: no leave, no DTLS close, no RTCP BYE.
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(5)
    finally:
        if doomed.poll() is None:
            doomed.kill()
        doomed.stdout.close()

    codes = frozen_codes + await read_frame_codes(steady_track, 30)
    ids = [c.frame_id for c in codes]
    assert max(b - a for a, b in zip(ids, ids[1:])) == 1, f"frames skipped: {ids}"
    room = world.server.app.state.registry.get("demo")
    await steady.wait_until(lambda: len(room.peers) == 2)  # crew and steady only


async def test_two_crews_in_one_room_are_both_forwarded(world: World):
    crew_1 = await world.crew(name="medic-1")
    crew_2 = await world.crew(name="medic-2", width=480, height=272)
    expert = await world.expert("doc")
    video_1 = await expert.wait_for_track("video", peer_id=crew_1.client.state.peer_id)
    video_2 = await expert.wait_for_track("video", peer_id=crew_2.client.state.peer_id)
    frames = await asyncio.gather(video_1.track.recv(), video_2.track.recv())
    assert [f.width for f in frames] == [640, 480]
    codes = await asyncio.gather(read_frame_codes(video_1.track, 10),
                                 read_frame_codes(video_2.track, 10))
    assert all(_advancing(c) for c in codes)
    # Each crew hears the other crew's microphone, but is not sent its video.
    await crew_1.client.wait_for_track("audio", peer_id=crew_2.client.state.peer_id)
    assert not [t for t in crew_1.client.tracks if t.track.kind == "video"]


async def test_two_rooms_do_not_leak_media_into_each_other(world: World):
    crew_a = await world.crew(room="bay-a", name="medic-a", width=640, height=360)
    crew_b = await world.crew(room="bay-b", name="medic-b", width=480, height=272)
    expert_a = await world.expert("doc-a", room="bay-a")
    expert_b = await world.expert("doc-b", room="bay-b")
    video_a = await expert_a.wait_for_track("video")
    video_b = await expert_b.wait_for_track("video")
    frame_a = await video_a.track.recv()
    frame_b = await video_b.track.recv()
    assert (frame_a.width, frame_b.width) == (640, 480)

    a_id, b_id = crew_a.client.state.peer_id, crew_b.client.state.peer_id
    await expert_a.wait_until(lambda: len(expert_a.tracks) == 2)
    assert {t.info["peer_id"] for t in expert_a.tracks} == {a_id}
    assert {t.info["peer_id"] for t in expert_b.tracks} == {b_id}
    await read_frame_codes(video_a.track, 10)
    assert {m["peer_id"] for m in expert_a.data_messages} == {a_id}
    assert {m["peer_id"] for m in expert_b.data_messages} == {b_id}


async def test_poses_arrive_keyed_by_the_rtp_timestamp_of_their_frame(world: World):
    crew = await world.crew()
    expert = world.client("expert", "doc")
    await expert.connect()
    remote = await expert.wait_for_track("video")
    rtp_of_pts = aiortc_seams.record_rtp_timestamps(remote.receiver)

    matched = 0
    async with asyncio.timeout(10):
        while matched < 20:
            frame = await remote.track.recv()
            code = frame_code(frame)
            rtp = rtp_of_pts.get(frame.pts)
            pose = next((p for p in reversed(expert.data_messages)
                         if p.get("rtp_timestamp") == rtp), None)
            if pose is None:
                continue  # this frame's pose may still be on its way
            assert pose["frame_id"] == code.frame_id
            assert pose["intrinsics"]["width"] == frame.width
            assert len(pose["T_world_camera"]) == 16
            matched += 1
    room = world.server.app.state.registry.get("demo")
    history = room.pose_history(remote.info["producer_id"])
    assert history is not None and history.get(rtp) is not None
    # Every frame that went on the wire with the channel open had its pose
    # (counted on the wire, not at capture: frames still in the encoder are not late).
    assert crew.poses_sent >= matched and crew.frames_without_pose == 0


async def test_expert_audio_reaches_the_crew_and_the_other_experts(world: World):
    crew = await world.crew()
    speaker = await world.expert("speaker")
    listener = await world.expert("listener")
    await speaker.publish([ToneTrack()])
    speaker_id = speaker.state.peer_id

    # The simulated headset plays what it hears (here: measures it).
    await crew.client.wait_for_track("audio", peer_id=speaker_id)
    await crew.client.wait_until(lambda: crew.audio_frames_heard > 25
                                 and crew.audio_rms_heard > 300)
    for client in (listener,):
        remote = await client.wait_for_track("audio", peer_id=speaker_id)
        samples = []
        async with asyncio.timeout(10):
            while sum(len(s) for s in samples) < 48000 // 2:
                frame = await remote.track.recv()
                samples.append(frame.to_ndarray().reshape(-1))
        pcm = np.concatenate(samples).astype(np.float64)
        assert np.sqrt(np.mean(pcm[-9600:] ** 2)) > 300, "the expert's tone arrived silent"
    # The speaker does not hear itself.
    assert not [t for t in speaker.tracks if t.info.get("peer_id") == speaker_id]


async def test_keyframe_requests_from_subscribers_are_coalesced_upstream(world: World):
    await world.crew()
    experts = [await world.expert(f"e{i}") for i in range(2)]
    remotes = [await e.wait_for_track("video") for e in experts]
    for remote in remotes:
        await read_frame_codes(remote.track, 15)  # join-time requests have all fired
    room = world.server.app.state.registry.get("demo")
    producer = room.router.producer(remotes[0].info["producer_id"])
    before = producer.keyframe_requests_sent

    asking_started = producer.clock()
    for _ in range(5):
        for remote in remotes:
            for media_ssrc in aiortc_seams.receiver_media_ssrcs(remote.receiver):
                await aiortc_seams.request_keyframe(remote.receiver, media_ssrc)
    consumers = producer.consumers
    # aiortc's own receivers may add a PLI of their own: at least our five.
    await experts[0].wait_until(lambda: all(c.keyframe_requests >= 5 for c in consumers), 3)
    last_asked = max(c.last_keyframe_request_at for c in consumers)
    # Coalesced but never dropped: a request goes upstream after the last ask.
    await experts[0].wait_until(lambda: producer.last_keyframe_request_at >= last_asked, 3)
    # Coalesced: upstream requests are never closer than the interval, whoever
    # asked (our ten asks, a subscriber's own PLI, a join-time re-ask)...
    sent = list(producer.keyframe_request_times)
    assert all(b - a >= KEYFRAME_REQUEST_INTERVAL_S - 1e-3 for a, b in zip(sent, sent[1:])), [round(b - a, 4) for a, b in zip(sent, sent[1:])]
    # ...so the ten asks, made within a few milliseconds, became one or two
    # requests (on a busy machine, one more per interval the asking spanned).
    window_end = last_asked + KEYFRAME_REQUEST_INTERVAL_S + 0.05
    during = [t for t in sent if asking_started <= t <= window_end]
    most = int((window_end - asking_started) / KEYFRAME_REQUEST_INTERVAL_S) + 1
    assert 1 <= len(during) <= most < 10
    assert producer.keyframe_requests_sent - before >= len(during)


async def test_packet_loss_to_one_subscriber_is_repaired_by_retransmission(world: World, fanout: str):
    await world.crew()
    lossy = await world.expert("lossy")
    clean = await world.expert("clean")
    lossy_remote = await lossy.wait_for_track("video")
    clean_remote = await clean.wait_for_track("video")
    await read_frame_codes(lossy_remote.track, 3)

    dropped: set[int] = set()
    retransmitted: list[int] = []
    media_ssrcs = aiortc_seams.receiver_media_ssrcs(lossy_remote.receiver)
    rtx_types = aiortc_seams.receiver_payload_types(lossy_remote.receiver, "video/rtx")
    assert rtx_types, "RTX was not negotiated with the subscriber"

    def lose_every_25th(packet) -> bool:
        if packet.payload_type in rtx_types:
            retransmitted.append(packet.sequence_number)
            return False
        if packet.ssrc not in media_ssrcs:
            return False  # audio
        if packet.sequence_number % 25 == 0 and packet.sequence_number not in dropped:
            dropped.add(packet.sequence_number)
            return True
        return False

    aiortc_seams.drop_incoming_rtp(lossy_remote.receiver.transport, lose_every_25th)
    lossy_codes, clean_codes = await asyncio.gather(
        read_frame_codes(lossy_remote.track, 60), read_frame_codes(clean_remote.track, 60))
    assert len(dropped) >= 3
    assert len(retransmitted) >= len(dropped) - 1
    # With the C loop, the retransmitted packets came from its history.
    assert fast_consumers(world) == (4 if fanout == "c" else 0)
    # /api/stats counts them for the lossy expert's video alone.
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{world.server.http}/api/stats")).json()
    counted = {(p["kind"], c["subscriber_id"]): c["packets_retransmitted"]
               for p in stats for c in p["consumers"]}
    assert counted[("video", lossy.state.peer_id)] >= len(retransmitted)
    assert counted[("video", clean.state.peer_id)] == 0
    assert counted[("audio", lossy.state.peer_id)] == 0
    for codes in (lossy_codes, clean_codes):
        ids = [c.frame_id for c in codes]
        assert max(b - a for a, b in zip(ids, ids[1:])) == 1, ids


async def test_packet_loss_from_the_crew_is_repaired_before_it_reaches_the_experts(
        world: World, fanout: str):
    """Loss on the crew's uplink: the server's receiver asks the crew again
    (NACK), the retransmission comes back over RTX, past the on-arrival path,
    and is forwarded late to every expert, who never miss a frame."""
    await world.crew()
    experts = [await world.expert(f"e{i}") for i in range(2)]
    remotes = [await e.wait_for_track("video") for e in experts]
    for remote in remotes:
        await read_frame_codes(remote.track, 5)
    room = world.server.app.state.registry.get("demo")
    producer = room.router.producer(remotes[0].info["producer_id"])
    assert producer.packets_on_arrival > 0
    dropped: set[int] = set()

    def lose_every_25th(ssrc: int, payload_type: int, seq: int) -> bool:
        if ssrc == producer.media_ssrc and seq % 25 == 0 and seq not in dropped:
            dropped.add(seq)
            return True
        return False
    aiortc_seams.drop_arriving_rtp(producer._receiver.transport, lose_every_25th)
    late_before = producer.packets_in - producer.packets_on_arrival

    results = await asyncio.gather(*(read_frame_codes(r.track, 60) for r in remotes))
    assert len(dropped) >= 3
    # The retransmissions took the path after aiortc's receiver.
    assert producer.packets_in - producer.packets_on_arrival - late_before >= len(dropped) - 1
    for codes in results:
        ids = [c.frame_id for c in codes]
        assert max(b - a for a, b in zip(ids, ids[1:])) == 1, ids


async def test_forwarding_after_the_receiver_still_works_when_chosen(world: World, monkeypatch):
    """GOLDENHOUR_FORWARD=after-receiver (the way out, and the benchmark's
    comparison) forwards from the receiver's tap alone."""
    monkeypatch.setenv("GOLDENHOUR_FORWARD", "after-receiver")
    await world.crew()
    expert = await world.expert("doc")
    remote = await expert.wait_for_track("video")
    assert _advancing(await read_frame_codes(remote.track, 15))
    room = world.server.app.state.registry.get("demo")
    producer = room.router.producer(remote.info["producer_id"])
    assert producer.packets_in > 15 and producer.packets_on_arrival == 0


async def test_h264_is_forwarded_and_the_server_decodes_nothing(world: World):
    crew = await world.crew(video_codec="video/H264")
    expert = await world.expert("doc")
    remote = await expert.wait_for_track("video")
    assert remote.info["codec"] == "video/H264"
    codes = await read_frame_codes(remote.track, 15)
    assert _advancing(codes)

    room = world.server.app.state.registry.get("demo")
    producer = room.router.producer(remote.info["producer_id"])
    assert producer.mime_type == "video/H264" and producer.packets_in > 15
    # The server's own receiver never produced a frame: nothing was decoded.
    server_receiver = producer._receiver
    # (aiortc would put each decoded frame on this queue; nobody reads it.)
    assert server_receiver.track._queue.qsize() == 0
    assert crew.poses_sent > 0


async def test_a_reconnecting_crew_reuses_the_viewers_m_lines(world: World):
    expert = await world.expert("doc")
    room = world.server.app.state.registry.get("demo")
    for attempt in range(3):  # a crew losing its network and coming back
        started_ms = int(time.time() * 1000) & 0xFFFFFFFF
        crew = await world.crew(name=f"medic-try{attempt}")
        crew_id = crew.client.state.peer_id
        remote = await expert.wait_for_track("video", peer_id=crew_id)
        codes = await read_frame_codes(remote.track, 12)
        # Past any frames of the previous crew still queued in the track,
        # this crew's frames: captured after it started, counter from ~0.
        fresh = [c for c in codes if c.capture_ms >= started_ms]
        assert len(fresh) >= 5 and fresh[0].frame_id < 60 and _advancing(fresh)
        await crew.stop()
        await expert.wait_until(lambda: ("left", crew_id) in expert.peer_events)
    # One video and one audio m-line, however often the crew came back.
    peer = next(p for p in room.peers if p.name == "doc")
    assert sorted(slot.kind for slot in peer._slots) == ["audio", "video"]
    assert len(expert.tracks) == 2


async def test_an_observer_watches_and_hears_without_publishing(world: World):
    crew = await world.crew()
    observer = world.client("observer", "student")
    await observer.connect()
    video = await observer.wait_for_track("video", peer_id=crew.client.state.peer_id)
    await observer.wait_for_track("audio", peer_id=crew.client.state.peer_id)
    assert _advancing(await read_frame_codes(video.track, 10))
    room = world.server.app.state.registry.get("demo")
    assert not [p for p in room.router.producers if p.peer_id == observer.state.peer_id]
