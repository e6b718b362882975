"""PoseHistory: lookup with slack, and waiting for a pose that arrives after its frame."""

from __future__ import annotations

import asyncio

from server.rooms.poses import PoseHistory
from server.signaling import messages as m


def pose(rtp: int) -> m.CameraPose:
    return m.CameraPose(rtp_timestamp=rtp, T_world_camera=[1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
                        intrinsics=m.Intrinsics(width=640, height=360, fx=500.0, fy=500.0, cx=320.0, cy=180.0))


async def test_a_late_pose_is_waited_for_and_a_missing_one_times_out():
    history = PoseHistory()
    history.add(pose(3000))
    assert history.find(2999, slack=2).rtp_timestamp == 3000
    assert history.find(2990, slack=2) is None

    waiter = asyncio.create_task(history.wait_for(6000, slack=2, timeout_s=5.0))
    await asyncio.sleep(0)  # the waiter is parked on the event
    history.add(pose(4000))  # another frame's pose wakes it, and it waits on
    await asyncio.sleep(0)
    assert not waiter.done()
    history.add(pose(6001))
    assert (await asyncio.wait_for(waiter, 1.0)).rtp_timestamp == 6001
    assert await history.wait_for(9000, slack=0, timeout_s=0.05) is None
