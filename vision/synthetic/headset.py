"""Cameras of the simulated headsets."""

from __future__ import annotations

from vision.camera import Intrinsics

#: A HoloLens-2-like photo/video camera at 1280x720: about 64.7 degrees horizontal and
#: 39.2 degrees vertical field of view, principal point at the image centre, no
#: distortion (the real PV camera's is small and device-specific).
HOLOLENS_PV_1280x720 = Intrinsics(
    width=1280, height=720, fx=1010.0, fy=1010.0, cx=639.5, cy=359.5,
)
