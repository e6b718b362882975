"""Re-projection: where anchored points appear in another frame, and whether they are seen.

The glasses and the browser redraw every annotation on every frame from that
frame's pose; this is the vectorised core they (and the server) share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vision.camera import (
    Intrinsics,
    camera_rows,
    check_points,
    check_pose,
    norm_from_px,
    pixels_of_camera_rows,
)
from vision.spatial_map import MapSnapshot


@dataclass(frozen=True)
class Reprojection:
    """Per point: image position, depth and what hides it. Arrays are (N,) or (N, 2)."""

    uv_px: np.ndarray  # NaN behind the camera
    uv_norm: np.ndarray
    depth_m: np.ndarray  # camera z; ≤ 0 behind the camera
    in_front: np.ndarray  # bool
    on_screen: np.ndarray  # bool: in front and inside the image
    occluded: np.ndarray  # bool: on screen but something on the map is nearer

    @property
    def visible(self) -> np.ndarray:
        return self.on_screen & ~self.occluded


def reproject(
    points_world_m: object,
    T_world_camera: object,
    intrinsics: Intrinsics,
    spatial_map: MapSnapshot | None = None,
    *,
    occlusion_tolerance_m: float = 0.01,
    occlusion_tolerance_relative: float = 0.01,
) -> Reprojection:
    """Project world points into a camera; with a map, test each on-screen point for occlusion.

    A point counts as occluded when the map has a surface nearer to the camera
    along its line of sight by more than the tolerance (absolute plus a fraction
    of the distance: maps built from depth are only that good).
    """
    if not isinstance(intrinsics, Intrinsics):
        raise ValueError("intrinsics must be a vision.camera.Intrinsics")
    points = check_points(points_world_m, "points_world_m", 3)
    T = check_pose(T_world_camera)
    p_cam = camera_rows(points, T)  # (3, N): see camera_rows
    u, v = pixels_of_camera_rows(p_cam, intrinsics)
    depth_m = p_cam[2]
    in_front = depth_m > 1e-6
    with np.errstate(invalid="ignore"):
        on_screen = (
            in_front
            & (u >= -0.5)
            & (u <= intrinsics.width - 0.5)
            & (v >= -0.5)
            & (v <= intrinsics.height - 0.5)
        )
    occluded = np.zeros(len(points), dtype=bool)
    if spatial_map is not None and not spatial_map.is_empty and on_screen.any():
        idx = np.flatnonzero(on_screen)
        seen = p_cam if len(idx) == len(points) else p_cam[:, idx]
        distance = np.sqrt(np.einsum("ij,ij->j", seen, seen))
        tolerance = occlusion_tolerance_m + occlusion_tolerance_relative * distance
        # Stop each line of sight `tolerance` short of its point: anything crossing
        # what is left hides the point. Spans in the camera frame, turned to the world's.
        keep = np.clip(1.0 - tolerance / distance, 0.0, 1.0)
        spans_world = T[:3, :3] @ (seen * keep)
        occluded[idx] = spatial_map.spans_blocked(T[:3, 3], spans_world.T)
    uv_px = np.empty((len(points), 2))
    uv_px[:, 0], uv_px[:, 1] = u, v
    return Reprojection(uv_px, norm_from_px(uv_px, intrinsics), depth_m, in_front, on_screen, occluded)
