"""Recent camera poses of one video producer, keyed by RTP timestamp."""

from __future__ import annotations

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

    def __len__(self) -> int:
        return len(self._poses)

    def add(self, pose: CameraPose) -> None:
        self._poses[pose.rtp_timestamp] = pose
        self._poses.move_to_end(pose.rtp_timestamp)
        while len(self._poses) > self._capacity:
            self._poses.popitem(last=False)

    def get(self, rtp_timestamp: int) -> CameraPose | None:
        return self._poses.get(rtp_timestamp)

    def latest(self) -> CameraPose | None:
        if not self._poses:
            return None
        return next(reversed(self._poses.values()))
