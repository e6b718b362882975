"""Where a paramedic's head (and headset camera) goes around the stretcher.

``paramedic_trajectory`` is a smooth time series: the paramedic kneels or stands
beside the stretcher, leans in, looks from one part of the patient to another with
small natural head sway and rotation. ``random_views`` gives independent plausible
head poses aimed at one point on the patient, for statistics over many views.
Every eye position is in free space (``SyntheticScene.is_free_space``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import open3d as o3d

from vision.camera import Intrinsics, check_points, look_at, project
from vision.synthetic.headset import HOLOLENS_PV_1280x720
from vision.synthetic.noise import rotation_from_axis_angle
from vision.synthetic.scene import SyntheticScene

#: Room a head needs around the headset camera.
HEAD_CLEARANCE_M = 0.15
#: The head's sway stays within this of its planned path (each axis sways < 8 mm).
_SWAY_BOUND_M = 0.015
#: Eye heights above the floor, from kneeling (thighs upright) to standing under the
#: 1.9 m ceiling.
EYE_HEIGHT_RANGE_M = (0.95, 1.75)

#: Where a paramedic looks while working (landmark names); the gaze wanders around them.
_GAZE_LANDMARKS = (
    "sternum", "sternum", "umbilicus", "forehead", "nose_tip", "left_temple", "right_temple",
    "left_elbow", "left_wrist", "left_hand", "right_elbow", "right_wrist", "right_hand",
    "left_shoulder", "right_shoulder", "left_knee", "right_knee",
)


@dataclass(frozen=True, eq=False)
class Posed:
    """One frame of a trajectory: when, where the camera is, and the point the head
    is turned towards (not necessarily on a surface)."""

    timestamp_s: float
    T_world_camera: np.ndarray
    gaze_target_world_m: np.ndarray


@dataclass(frozen=True, eq=False)
class View:
    """One head pose looking at ``target_world_m``, which it sees unoccluded."""

    T_world_camera: np.ndarray
    target_world_m: np.ndarray


def paramedic_trajectory(
    scene: SyntheticScene,
    duration_s: float,
    fps: float = 30.0,
    seed: int = 0,
    *,
    side: str | None = None,
) -> list[Posed]:
    """A smooth head trajectory at ``fps`` (timestamps i / fps from 0) for ``duration_s``.

    ``side`` is the patient's side the paramedic works from, "left" (+Z) or "right"
    (-Z); by default the seed picks. Every few seconds the paramedic chooses a new
    place to look at and a new head position (kneeling, or standing and leaning in),
    and moves there with a minimum-jerk profile after a pause; on top of that the
    head sways by a few millimetres and turns by a degree or two.
    """
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be positive, got {duration_s!r}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps!r}")
    if side not in (None, "left", "right"):
        raise ValueError(f"side must be 'left', 'right' or None, got {side!r}")
    rng = np.random.default_rng([seed, 0x7A1])
    if side is None:
        side = "left" if rng.random() < 0.5 else "right"
    side_sign = 1.0 if side == "left" else -1.0

    n_frames = max(1, round(duration_s * fps))
    timestamps_s = np.arange(n_frames) / fps

    key_times = [0.0]
    while key_times[-1] < timestamps_s[-1]:
        key_times.append(key_times[-1] + rng.uniform(1.8, 3.5))
    key_times = np.array(key_times)

    eyes = np.empty((n_frames, 3))
    targets = np.empty((n_frames, 3))
    key_eye, key_target = _paramedic_keypose(scene, rng, side_sign, previous_eye=None)
    for k in range(len(key_times) - 1):
        frames = np.flatnonzero((timestamps_s >= key_times[k]) & (timestamps_s < key_times[k + 1]))
        if len(frames) == 0:
            continue
        s = (timestamps_s[frames] - key_times[k]) / (key_times[k + 1] - key_times[k])
        # Hold still for the first 35% of the interval, then move (minimum jerk).
        u = np.clip((s - 0.35) / 0.65, 0.0, 1.0)
        ease = (u**3 * (10.0 - 15.0 * u + 6.0 * u * u))[:, None]
        for _ in range(200):
            next_eye, next_target = _paramedic_keypose(scene, rng, side_sign, key_eye)
            seg_eyes = key_eye + ease * (next_eye - key_eye)
            if scene.is_free_space(seg_eyes, HEAD_CLEARANCE_M + _SWAY_BOUND_M).all():
                break
        else:
            raise RuntimeError("paramedic_trajectory: found no free path for the head")
        eyes[frames] = seg_eyes
        targets[frames] = key_target + ease * (next_target - key_target)
        key_eye, key_target = next_eye, next_target

    # The planned path keeps _SWAY_BOUND_M more clearance than a head needs, so the
    # swaying head stays in free space.
    eyes = eyes + _sway(rng, timestamps_s, amplitude=(0.004, 0.008), freq_hz=(0.15, 0.6), dims=3)
    jitter_deg = _sway(rng, timestamps_s, amplitude=(0.6, 1.5), freq_hz=(0.2, 1.2), dims=3)
    jitter_rad = np.radians(jitter_deg)
    jitter = rotation_from_axis_angle(jitter_rad)

    out = []
    for i in range(n_frames):
        T = look_at(eyes[i], targets[i])
        T[:3, :3] = T[:3, :3] @ jitter[i]
        out.append(Posed(float(timestamps_s[i]), T, targets[i].copy()))
    return out


def _paramedic_keypose(
    scene: SyntheticScene,
    rng: np.random.Generator,
    side_sign: float,
    previous_eye: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """A (head position, gaze target) the paramedic can move to next."""
    for _ in range(1000):
        name = _GAZE_LANDMARKS[rng.integers(len(_GAZE_LANDMARKS))]
        target = scene.landmarks_world_m[name] + rng.uniform(-0.03, 0.03, 3) * (1, 0.3, 1)
        kneeling = rng.random() < 0.4
        eye_y = rng.uniform(0.98, 1.25) if kneeling else rng.uniform(1.3, 1.65)
        eye = np.array([
            np.clip(target[0] + rng.uniform(-0.35, 0.35), -1.1, 1.15),
            eye_y,
            side_sign * rng.uniform(0.25, 0.75),
        ])
        distance_m = np.linalg.norm(eye - target)
        if not 0.4 <= distance_m <= 1.2:
            continue
        if previous_eye is not None and np.linalg.norm(eye - previous_eye) > 0.5:
            continue
        if scene.is_free_space(eye, HEAD_CLEARANCE_M + _SWAY_BOUND_M)[0]:
            return eye, target
    raise RuntimeError("paramedic_trajectory: no free head position near the patient")


def _sway(
    rng: np.random.Generator, t_s: np.ndarray, amplitude: tuple[float, float],
    freq_hz: tuple[float, float], dims: int, waves: int = 2,
) -> np.ndarray:
    """(len(t_s), dims) smooth random motion: a few sinusoids per dimension."""
    out = np.zeros((len(t_s), dims))
    for d in range(dims):
        for _ in range(waves):
            out[:, d] += rng.uniform(*amplitude) / waves * np.sin(
                2 * np.pi * rng.uniform(*freq_hz) * t_s + rng.uniform(0, 2 * np.pi))
    return out


def random_views(
    scene: SyntheticScene,
    n: int,
    seed: int = 0,
    target: np.ndarray | str | None = None,
    *,
    intrinsics: Intrinsics = HOLOLENS_PV_1280x720,
    distance_range_m: tuple[float, float] = (0.4, 1.2),
    max_incidence_deg: float = 70.0,
) -> list[View]:
    """``n`` random plausible head poses, each seeing its target point unoccluded.

    ``target``: a world point (3,), a landmark name, or None for a fresh random point
    on the upward-facing skin or clothes of the patient for every view. The eye is
    ``distance_range_m`` from the target, above or beside it, at a kneeling to
    standing head height, in free space; the line of sight is clear; the surface
    faces the camera (the angle between its normal and the line of sight is at most
    ``max_incidence_deg``, when the target lies on the mesh); the target appears
    in the central 70% of the image, and the camera rolls up to 12 degrees.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    rng = np.random.default_rng([seed, 0x51E])
    fixed_target = _resolve_target(scene, target)
    raycasting = scene.raycasting_scene()
    cos_max = math.cos(math.radians(max_incidence_deg))
    half_fov_x = math.atan(intrinsics.width / 2 / intrinsics.fx)
    half_fov_y = math.atan(intrinsics.height / 2 / intrinsics.fy)

    views: list[View] = []
    for _ in range(1000):
        if len(views) >= n:
            break
        batch = 256
        if fixed_target is None:
            targets, normals = scene.sample_patient_surface(batch, rng, min_normal_y=0.3)
        else:
            targets = np.repeat(fixed_target[0][None], batch, axis=0)
            normals = np.repeat(fixed_target[1][None], batch, axis=0)
        azimuth = rng.uniform(0, 2 * np.pi, batch)
        sin_elevation = rng.uniform(math.sin(math.radians(15)), 1.0, batch)
        cos_elevation = np.sqrt(1 - sin_elevation**2)
        directions = np.stack(
            [cos_elevation * np.cos(azimuth), sin_elevation, cos_elevation * np.sin(azimuth)], 1)
        distance_m = rng.uniform(*distance_range_m, batch)
        eyes = targets + distance_m[:, None] * directions

        ok = (eyes[:, 1] >= EYE_HEIGHT_RANGE_M[0]) & (eyes[:, 1] <= EYE_HEIGHT_RANGE_M[1])
        has_normal = np.isfinite(normals[:, 0])
        incidence_cos = np.einsum("ij,ij->i", np.nan_to_num(normals), directions)
        ok &= ~has_normal | (incidence_cos >= cos_max)
        ok &= scene.is_free_space(eyes, HEAD_CLEARANCE_M)
        # Clear line of sight: the first hit from the eye is the target itself.
        rays = np.concatenate([eyes, -directions], axis=1).astype(np.float32)
        t_hit = raycasting.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        ok &= t_hit >= distance_m - 0.002

        for i in np.flatnonzero(ok):
            if len(views) >= n:
                break
            # Aim off-centre and roll, so the target lands anywhere central.
            T = look_at(eyes[i], targets[i])
            turn = np.array([
                rng.uniform(-0.55, 0.55) * half_fov_y,  # about camera x: the target moves up/down
                rng.uniform(-0.55, 0.55) * half_fov_x,  # about camera y: left/right
                math.radians(rng.uniform(-12, 12)),  # roll
            ])
            T[:3, :3] = T[:3, :3] @ rotation_from_axis_angle(turn)
            uv_px, depth_m = project(targets[i][None], T, intrinsics)
            inside = (
                depth_m[0] > 0
                and 0.15 * intrinsics.width <= uv_px[0, 0] <= 0.85 * intrinsics.width
                and 0.15 * intrinsics.height <= uv_px[0, 1] <= 0.85 * intrinsics.height
            )
            if inside:
                views.append(View(T, targets[i].copy()))
    if len(views) < n:
        raise RuntimeError(f"random_views: found only {len(views)} of {n} views of the target")
    return views


def _resolve_target(
    scene: SyntheticScene, target: np.ndarray | str | None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(point, outward normal or NaNs when the point is not on the mesh), or None."""
    if target is None:
        return None
    if isinstance(target, str):
        if target not in scene.landmarks_world_m:
            raise ValueError(f"target: unknown landmark {target!r}")
        return scene.landmarks_world_m[target], scene.landmark_normals_world[target]
    point = check_points(target, "target", 3)
    if len(point) != 1:
        raise ValueError(f"target must be one point, got {len(point)}")
    closest = scene.raycasting_scene().compute_closest_points(
        o3d.core.Tensor(point.astype(np.float32)))
    gap_m = np.linalg.norm(closest["points"].numpy()[0] - point[0])
    if gap_m >= 1e-3:
        return point[0], np.full(3, np.nan)
    return point[0], closest["primitive_normals"].numpy()[0].astype(np.float64)
