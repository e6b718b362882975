"""The headset bridge against a headset that speaks hl2ss's wire format (the simulated
one, inside the synthetic ambulance), a real server and real aiortc peers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from clients.hololens_bridge import hl2ss_wire as wire
from clients.hololens_bridge.bridge import Bridge
from clients.hololens_bridge.headset import Hl2ssHeadset
from clients.hololens_bridge.simulated_headset import SimulatedHeadset
from tests.conftest import World, frame_code
from vision.camera import look_at, norm_from_px, project

WIDTH, HEIGHT = 320, 180


class Rig:
    """A simulated headset, a bridge publishing it into a room, and the server."""

    def __init__(self, world: World, room: str) -> None:
        self.world, self.room = world, room
        self.headset = SimulatedHeadset()
        self.bridge: Bridge | None = None

    async def start(self) -> Rig:
        await self.headset.start()
        source = Hl2ssHeadset("127.0.0.1", self.headset.ports,
                              pv=wire.PvConfig(WIDTH, HEIGHT, 30, bitrate=600_000),
                              map_interval_s=0.5)
        self.bridge = Bridge(source, self.world.server.ws, self.room, "medic",
                             make_client=lambda: self.world.client("crew", "medic", self.room, create=True))
        await self.bridge.start()
        await asyncio.wait_for(self.bridge.connected.wait(), 20)
        return self

    async def stop(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
        await self.headset.stop()


@pytest.fixture
async def rig(world: World):
    made: list[Rig] = []

    async def make(room: str) -> Rig:
        r = await Rig(world, room).start()
        made.append(r)
        return r

    yield make
    for r in made:
        await r.stop()


def pose_of(expert, rtp_timestamp: int) -> np.ndarray | None:
    for m in reversed(expert.data_messages):
        if m.get("type") == "pose" and m["rtp_timestamp"] == rtp_timestamp:
            return np.array(m["T_world_camera"]).reshape(4, 4)
    return None


async def test_headset_streams_reach_an_expert_with_each_frames_pose(world: World, rig):
    r = await rig("hl-1")
    expert = await world.expert("Dr Hl", room="hl-1")
    remote = await expert.wait_for_track("video", 20)
    from server.sfu.aiortc_seams import record_rtp_timestamps
    rtp_of_pts = record_rtp_timestamps(remote.receiver)
    checked = 0
    async with asyncio.timeout(30):
        while checked < 10:
            frame = await remote.track.recv()
            code = frame_code(frame)
            sent = r.headset.sent_frames.get(code.frame_id)
            rtp = rtp_of_pts.get(frame.pts)
            assert sent is not None and rtp is not None
            await expert.wait_until(lambda: pose_of(expert, rtp) is not None, 5)
            np.testing.assert_allclose(pose_of(expert, rtp), sent.reported_T_world_camera, atol=1e-5)
            checked += 1
    # The headset's H.264 was passed through: the picture is the headset's size.
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    # The microphone reaches the expert as audio.
    audio = await expert.wait_for_track("audio", 10)
    pcm = (await asyncio.wait_for(audio.track.recv(), 10)).to_ndarray().astype(float)
    assert audio.info.get("peer_id") == r.bridge.client.state.peer_id
    assert pcm.size > 0
    # The spatial map went to the server, every triangle of it, as blocks.
    triangles = len(r.headset.scene.triangles)
    await r.bridge.client.wait_until(lambda: sum(r.bridge.map_triangles_stored.values()) == triangles, 30)
