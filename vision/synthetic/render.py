"""Render a synthetic scene from any camera pose: colour, depth, triangle and part ids.

One ray per pixel centre (through vision.camera.camera_rays, so lens distortion is
followed), cast with open3d's RaycastingScene on the CPU. Colour is the procedural
texture at the hit, Lambert-shaded by a headlight at the camera plus ambient light.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import open3d as o3d

from vision.camera import Intrinsics, camera_rays, check_pose, norm_from_px
from vision.synthetic.scene import SyntheticScene

_AMBIENT = 0.35
_HEADLIGHT = 0.65


@dataclass(frozen=True, eq=False)
class Rendering:
    """One rendered frame, with the pose and camera that made it."""

    color_rgb: np.ndarray | None  # (H, W, 3) uint8; None when rendered with color=False
    depth_m: np.ndarray  # (H, W) float32: camera z of the hit (OpenCV), 0 where nothing is hit
    triangle_id: np.ndarray  # (H, W) int32 index into scene.triangles, -1 where nothing is hit
    part_id: np.ndarray  # (H, W) int16 index into scene.part_names, -1 where nothing is hit
    T_world_camera: np.ndarray  # (4, 4)
    intrinsics: Intrinsics


_RAY_CACHE: OrderedDict[Intrinsics, np.ndarray] = OrderedDict()
_RAY_CACHE_SIZE = 4
#: Renders may run in executor threads (a simulated headset, a benchmark).
_RAY_CACHE_LOCK = threading.Lock()


def pixel_rays_camera(intrinsics: Intrinsics) -> np.ndarray:
    """(H*W, 3) float32 unit rays in the camera frame through every pixel centre,
    row-major (pixel (u, v) is row v * W + u)."""
    return _ray_basis(intrinsics)[:, 3:]


def _ray_basis(intrinsics: Intrinsics) -> np.ndarray:
    """(H*W, 6) float32 rows (1, 0, 0, ray_camera): one (N, 6) @ (6, 6) product with
    the pose gives open3d's (origin, direction) rays, several times faster than
    assembling them column by column. Cached per camera: undistorting a 1280x720
    grid costs about half a second."""
    with _RAY_CACHE_LOCK:
        basis = _RAY_CACHE.get(intrinsics)
        if basis is not None:
            _RAY_CACHE.move_to_end(intrinsics)
            return basis
    v_px, u_px = np.mgrid[0:intrinsics.height, 0:intrinsics.width]
    uv_px = np.stack([u_px.ravel(), v_px.ravel()], axis=1).astype(np.float64)
    basis = np.zeros((len(uv_px), 6), dtype=np.float32)
    basis[:, 0] = 1.0
    basis[:, 3:] = camera_rays(norm_from_px(uv_px, intrinsics), intrinsics)
    basis.setflags(write=False)
    with _RAY_CACHE_LOCK:
        _RAY_CACHE[intrinsics] = basis
        while len(_RAY_CACHE) > _RAY_CACHE_SIZE:
            _RAY_CACHE.popitem(last=False)
    return basis


def render(
    scene: SyntheticScene,
    T_world_camera: np.ndarray,
    intrinsics: Intrinsics,
    *,
    raycasting_scene: o3d.t.geometry.RaycastingScene | None = None,
    color: bool = True,
) -> Rendering:
    """Render ``scene`` seen by a camera at ``T_world_camera`` (camera-to-world).

    ``raycasting_scene`` defaults to ``scene.raycasting_scene()`` (built once per
    scene); one passed in must hold the scene's mesh as its geometry 0. With
    ``color=False`` only depth and ids are made (texturing and shading are about half
    the cost of a frame), and ``color_rgb`` is None.
    """
    T_world_camera = check_pose(T_world_camera)
    if raycasting_scene is None:
        raycasting_scene = scene.raycasting_scene()
    height, width = intrinsics.height, intrinsics.width

    basis = _ray_basis(intrinsics)
    rays_camera = basis[:, 3:]
    pose_rows = np.zeros((6, 6), dtype=np.float32)
    pose_rows[0, :3] = T_world_camera[:3, 3]
    pose_rows[3:, 3:] = T_world_camera[:3, :3].T
    rays = basis @ pose_rows  # (N, 6): origin, unit direction in the world

    hits = raycasting_scene.cast_rays(o3d.core.Tensor.from_numpy(rays))
    t_hit = hits["t_hit"].numpy()
    hit = np.isfinite(t_hit)
    # Inside the closed compartment every ray hits: skip the gathers then.
    rows: slice | np.ndarray = slice(None) if hit.all() else np.flatnonzero(hit)
    n_rays = len(rays)

    t_rows = t_hit[rows]
    depth_m = np.zeros(n_rays, dtype=np.float32)
    depth_m[rows] = t_rows * rays_camera[rows, 2]
    triangle_id = np.full(n_rays, -1, dtype=np.int32)
    triangle_id[rows] = hits["primitive_ids"].numpy()[rows]
    part_id = np.full(n_rays, -1, dtype=np.int16)
    part_id[rows] = scene.triangle_part[triangle_id[rows]]
    color_rgb = _shaded_color(scene, rays, rows, hits, triangle_id, part_id) if color else None

    return Rendering(
        color_rgb=None if color_rgb is None else color_rgb.reshape(height, width, 3),
        depth_m=depth_m.reshape(height, width),
        triangle_id=triangle_id.reshape(height, width),
        part_id=part_id.reshape(height, width),
        T_world_camera=T_world_camera,
        intrinsics=intrinsics,
    )


def _shaded_color(
    scene: SyntheticScene, rays: np.ndarray, rows: slice | np.ndarray, hits: dict,
    triangle_id: np.ndarray, part_id: np.ndarray,
) -> np.ndarray:
    """(N, 3) uint8: the procedural texture at each hit, Lambert-shaded by a headlight."""
    t_rows = hits["t_hit"].numpy()[rows]
    directions = rays[rows, 3:]
    points_world_m = directions * t_rows[:, None]
    points_world_m += rays[0, :3]
    normals = hits["primitive_normals"].numpy()[rows]
    # Smooth (interpolated vertex) normals on the patient, whose curved surfaces are
    # faceted; furniture is made of boxes, whose face normals are exact.
    hit_part = part_id[rows]
    curved = np.flatnonzero(scene.is_patient_part(hit_part))
    if len(curved):
        normals[curved] = scene.interpolated_normals(
            triangle_id[rows][curved], hits["primitive_uvs"].numpy()[rows][curved])
    # Headlight: light arrives along the viewing ray; abs() lights both faces.
    shade = np.abs(np.einsum("ij,ij->i", normals, directions))
    shade *= _HEADLIGHT * 255.0
    shade += _AMBIENT * 255.0
    rgb = scene.albedo_rgb(hit_part, points_world_m)
    rgb *= shade[:, None]
    rgb += 0.5  # round; albedo <= 1 and ambient + headlight = 1 keep it <= 255.5
    color_rgb = np.zeros((len(rays), 3), dtype=np.uint8)
    color_rgb[rows] = rgb
    return color_rgb
