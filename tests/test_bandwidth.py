"""Bandwidth feedback through the SFU, with real aiortc peers over loopback:
the crew's encoder hears the lowest of the experts' estimates (REMB), never
below the floor that keeps the picture usable for everyone."""

from __future__ import annotations

import asyncio
import itertools

import httpx

from server.sfu import aiortc_seams
from server.sfu.producer import SUBSCRIBER_BITRATE_FLOOR_BPS
from tests.conftest import World, read_frame_codes


async def test_the_crew_hears_the_slowest_experts_estimate_and_never_below_the_floor(world: World):
    crew = await world.crew()
    heard: list[int] = []
    crew_sender = next(t.sender for t in crew.client.publish_pc.getTransceivers()
                       if t.kind == "video")
    aiortc_seams.watch_remb(crew_sender, heard.append)
    slow, steady = await world.expert("slow"), await world.expert("steady")
    slow_remote = await slow.wait_for_track("video")
    steady_remote = await steady.wait_for_track("video")
    await read_frame_codes(slow_remote.track, 3)  # its receiver knows the stream's SSRCs
    room = world.server.app.state.registry.get("demo")
    producer = room.router.producer(slow_remote.info["producer_id"])
    slow_consumer = next(c for c in producer.consumers if c.subscriber_id == slow.state.peer_id)

    # The slow expert's link takes at most what `slow_link` says: its receiver
    # sends that (or its own estimate, if lower), as a receiver behind a
    # narrow link would.
    slow_link = [SUBSCRIBER_BITRATE_FLOOR_BPS * 3 // 2]
    slow_feedback = aiortc_seams.UpstreamRemb(slow_remote.receiver, lambda: slow_link[0])
    slow_ssrcs = sorted(aiortc_seams.receiver_media_ssrcs(slow_remote.receiver))

    async def slow_expert_reports(bitrate_bps: int) -> int:
        """The slow expert reports `bitrate_bps`; returns what the crew heard next."""
        slow_link[0] = bitrate_bps
        already = len(heard)
        await slow_feedback.send_now(slow_ssrcs)
        await slow.wait_until(lambda: slow_consumer.bitrate_estimate_bps == bitrate_bps, 3)
        await slow.wait_until(lambda: any(b <= max(bitrate_bps, SUBSCRIBER_BITRATE_FLOOR_BPS)
                                          for b in heard[already:]), 3)
        return next(b for b in heard[already:]
                    if b <= max(bitrate_bps, SUBSCRIBER_BITRATE_FLOOR_BPS))

    # Down to what the slow expert takes, at once: not with the server's next
    # estimate of the uplink (the first comes about 5 s into the stream).
    assert await slow_expert_reports(slow_link[0]) <= slow_link[0]
    assert producer.upstream_bitrate_bps <= slow_link[0]

    # A link too slow for a usable picture does not take the others with it.
    floor_heard = await slow_expert_reports(100_000)
    assert floor_heard > 2 * 100_000
    assert producer.subscriber_bitrate_cap() == SUBSCRIBER_BITRATE_FLOOR_BPS
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{world.server.http}/api/stats")).json()
    video = next(p for p in stats if p["producer_id"] == producer.id)
    assert 100_000 in [c["remb_bps"] for c in video["consumers"]]
    assert video["upstream_remb_bps"] == producer.upstream_bitrate_bps <= SUBSCRIBER_BITRATE_FLOOR_BPS

    # The other expert's picture went on throughout.
    codes = await read_frame_codes(steady_remote.track, 30)
    ids = [c.frame_id for c in codes]
    assert all(b > a for a, b in itertools.pairwise(ids))

    # Once the slow expert leaves, its estimate no longer holds the crew back:
    # what the crew hears next comes from the server's own estimate of the
    # uplink and the steady expert's, both above the floor on loopback.
    already = len(heard)
    await slow.close()
    await steady.wait_until(lambda: len(producer.consumers) == 1, 5)
    await steady.wait_until(lambda: producer.uplink_estimate_bps is not None, 10)
    await steady.wait_until(lambda: any(b > SUBSCRIBER_BITRATE_FLOOR_BPS for b in heard[already:]), 5)
    assert all(c.bitrate_estimate_bps != 100_000 for c in producer.consumers)


async def test_an_estimate_on_a_track_the_server_also_decodes_reaches_the_crew(world: World):
    """The ultrasound probe's producer feeds the experts and the server's own
    decoder (its model's input), which has no link to estimate: an expert's
    REMB about the probe still reaches the crew, and the probe's pictures and
    the model's overlays go on."""
    from clients.hololens_bridge.simulated import SyntheticUltrasoundTrack
    probe = SyntheticUltrasoundTrack(size=256, fps=30, seed=19)
    crew = await world.crew(ultrasound=probe)
    heard: list[int] = []
    probe_sender = next(t.sender for t in crew.client.publish_pc.getTransceivers()
                        if t.sender.track is probe)
    aiortc_seams.watch_remb(probe_sender, heard.append)
    expert = await world.expert("doc")
    await expert.wait_until(lambda: any(t.info.get("source") == "ultrasound" for t in expert.tracks))
    remote = next(t for t in expert.tracks if t.info.get("source") == "ultrasound")
    await read_frame_count(remote.track, 3)
    tap = world.server.app.state.inference.tap(remote.info["producer_id"])
    assert tap is not None

    feedback = aiortc_seams.UpstreamRemb(remote.receiver, lambda: SUBSCRIBER_BITRATE_FLOOR_BPS)
    await feedback.send_now(sorted(aiortc_seams.receiver_media_ssrcs(remote.receiver)))
    await expert.wait_until(lambda: any(b <= SUBSCRIBER_BITRATE_FLOOR_BPS for b in heard), 5)

    decoded = tap.frames_decoded
    await read_frame_count(remote.track, 15)
    await expert.wait_until(lambda: tap.frames_decoded >= decoded + 10, 10)
    # /api/stats lists the decoder among the probe's consumers, as what it is.
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{world.server.http}/api/stats")).json()
    consumers = next(p for p in stats if p["producer_id"] == remote.info["producer_id"])["consumers"]
    assert {c["subscriber_id"] for c in consumers} == {expert.state.peer_id, tap.subscriber_id}
    assert next(c for c in consumers if c["subscriber_id"] == tap.subscriber_id)["packets_out"] > 0


async def read_frame_count(track: object, count: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        for _ in range(count):
            await track.recv()  # type: ignore[attr-defined]
