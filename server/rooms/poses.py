"""Recent camera poses of one video producer, keyed by RTP timestamp."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from server.signaling.messages import CameraPose


class PoseHistory:
    """The last `capacity` camera poses of one producer (10 s at 30 fps by default).

    An expert draws on a frame that is already a few hundred milliseconds old
    when the annotation reaches the server; the annotation service looks up
    that frame's pose here by the RTP timestamp the browser saw.
    """

    def __init__(self, capacity: int = 300) -> None:
        self._capacity = capacity
        self._poses: OrderedDict[int, CameraPose] = OrderedDict()
        self._arrived = asyncio.Event()
        self._waiting = 0

    def __len__(self) -> int:
        return len(self._poses)

    def add(self, pose: CameraPose) -> None:
        self._poses[pose.rtp_timestamp] = pose
        self._poses.move_to_end(pose.rtp_timestamp)
        while len(self._poses) > self._capacity:
            self._poses.popitem(last=False)
        # Wake whoever waits for a pose that had not arrived yet (rarely anyone:
        # poses come 30 times a second, so keep this path free when no one waits).
        if self._waiting:
            self._arrived.set()
            self._arrived = asyncio.Event()

    def get(self, rtp_timestamp: int) -> CameraPose | None:
        return self._poses.get(rtp_timestamp)

    def latest(self) -> CameraPose | None:
        if not self._poses:
            return None
        return next(reversed(self._poses.values()))

    def find(self, rtp_timestamp: int, slack: int = 0) -> CameraPose | None:
        """The pose at this RTP timestamp, or within `slack` ticks of it."""
        for delta in range(slack + 1):
            for candidate in ((rtp_timestamp + delta) & 0xFFFFFFFF, (rtp_timestamp - delta) & 0xFFFFFFFF):
                pose = self._poses.get(candidate)
                if pose is not None:
                    return pose
        return None

    async def wait_for(self, rtp_timestamp: int, slack: int, timeout_s: float) -> CameraPose | None:
        """The pose at this RTP timestamp, waiting up to `timeout_s` for it to arrive.

        Video and poses travel separately (RTP and the SCTP data channel), so an
        expert can draw on a frame whose pose reaches the server a little later.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (pose := self.find(rtp_timestamp, slack)) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self._waiting += 1
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return None
            finally:
                self._waiting -= 1
        return pose
