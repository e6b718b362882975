"""The simulated headset's camera inside vision/'s synthetic ambulance: every frame is
a rendering of the scene at the camera's current pose, so anchored annotations
can be checked against the scene's ground truth.

Rendering a frame costs tens of milliseconds (more on a busy machine), so it
runs in a worker thread and only when the pose has changed; while the camera
holds still the last picture is sent again. Frames are numbered by wall-clock
time, so RTP timestamps keep pace with real time even when rendering lags.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from concurrent.futures import ThreadPoolExecutor

import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack

from clients.sdk import framecode
from vision.camera import Intrinsics, check_pose, look_at
from vision.synthetic import HOLOLENS_PV_1280x720, SyntheticScene, ambulance_scene, render

VIDEO_CLOCK_RATE = 90000


def scaled_intrinsics(width: int, height: int, full: Intrinsics = HOLOLENS_PV_1280x720) -> Intrinsics:
    """The headset camera's intrinsics at another resolution (same field of view)."""
    sx, sy = width / full.width, height / full.height
    return Intrinsics(width, height, full.fx * sx, full.fy * sy,
                      (full.cx + 0.5) * sx - 0.5, (full.cy + 0.5) * sy - 0.5, full.distortion)


def default_pose(scene: SyntheticScene) -> np.ndarray:
    """A paramedic standing at the patient's left, looking down at the chest."""
    sternum = scene.landmarks_world_m["sternum"]
    return look_at(sternum + np.array([-0.15, 0.55, 0.35]), sternum + np.array([-0.1, 0.0, 0.0]))


class SceneCameraTrack(MediaStreamTrack):
    """The headset's camera looking into the synthetic ambulance."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 360, fps: int = 30,
                 scene: SyntheticScene | None = None, T_world_camera: np.ndarray | None = None) -> None:
        super().__init__()
        self.scene = scene if scene is not None else ambulance_scene(0)
        self.width, self.height, self.fps = width, height, fps
        self.intrinsics = scaled_intrinsics(width, height)
        self._pose = check_pose(T_world_camera if T_world_camera is not None else default_pose(self.scene))
        self._rendered_pose: np.ndarray | None = None
        self._picture: np.ndarray | None = None  # I420, (h * 3 / 2, w) uint8
        self._renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scene-render")
        self._start: float | None = None
        self._rtp_origin: int | None = None
        self._first_pts: int | None = None
        self.frame_count = 0
        self._last_frame_id = -1
        #: pts (90 kHz) -> (frame_id, capture_ms, T_world_camera) of recent frames
        self.captured: dict[int, tuple[int, int, np.ndarray]] = {}
        #: Set whenever a frame rendered at a new pose is first sent.
        self.new_pose_sent = asyncio.Event()

    @property
    def pose(self) -> np.ndarray:
        return self._pose.copy()

    def set_pose(self, T_world_camera: np.ndarray) -> None:
        """Move the camera: frames from now on are rendered at this pose."""
        self._pose = check_pose(T_world_camera)
        self.new_pose_sent.clear()

    def frame_of_rtp(self, timestamp: int) -> tuple[int, int, np.ndarray] | None:
        """(frame_id, capture_ms, T_world_camera) of the frame an outgoing RTP
        timestamp belongs to (see SyntheticCameraTrack.frame_of_rtp).

        aiortc sends pts plus a random origin. The first frame's pts is not 0
        here (frames are numbered by the wall clock, and the first rendering
        takes a while), so the origin is the first timestamp minus that pts;
        assuming 0 paired every frame with an earlier frame's pose."""
        if self._rtp_origin is None:
            if self._first_pts is None:
                return None
            self._rtp_origin = (timestamp - self._first_pts) & 0xFFFFFFFF
        interval = VIDEO_CLOCK_RATE // self.fps
        pts = round(((timestamp - self._rtp_origin) & 0xFFFFFFFF) / interval) * interval
        return self.captured.get(pts)

    def _render(self, T: np.ndarray) -> np.ndarray:
        rgb = render(self.scene, T, self.intrinsics).color_rgb
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        # Next frame slot on the wall clock; slots missed while rendering are skipped.
        frame_id = max(self._last_frame_id + 1, int((time.monotonic() - self._start) * self.fps))
        delay = self._start + frame_id / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pose = self._pose
        fresh = self._rendered_pose is None or not np.array_equal(pose, self._rendered_pose)
        if fresh:
            loop = asyncio.get_running_loop()
            self._picture = await loop.run_in_executor(self._renderer, self._render, pose)
            self._rendered_pose = pose
            frame_id = max(frame_id, int((time.monotonic() - self._start) * self.fps))
        self._last_frame_id = frame_id
        self.frame_count += 1
        capture_ms = int(time.time() * 1000)
        picture = self._picture.copy()
        framecode.paint(picture[: self.height], frame_id, capture_ms)
        frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
        pts = frame_id * (VIDEO_CLOCK_RATE // self.fps)
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        if self._first_pts is None:
            self._first_pts = pts
        self.captured[pts] = (frame_id, capture_ms, self._rendered_pose)
        if len(self.captured) > 300:
            del self.captured[next(iter(self.captured))]
        if fresh:
            self.new_pose_sent.set()
        return frame

    def stop(self) -> None:
        super().stop()
        self._renderer.shutdown(wait=False, cancel_futures=True)
