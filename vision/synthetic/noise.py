"""Pose and depth noise, to test how errors in a headset's tracking and depth sensor
propagate to anchored annotations."""

from __future__ import annotations

import math

import numpy as np

from vision.camera import check_pose


def _check_sigma(value: float, name: str) -> float:
    if not isinstance(value, (int, float, np.floating, np.integer)) or not (
        math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def rotation_from_axis_angle(rotvec_rad: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices of (..., 3) axis-angle vectors (Rodrigues)."""
    rotvec_rad = np.asarray(rotvec_rad, dtype=np.float64)
    angle = np.linalg.norm(rotvec_rad, axis=-1)[..., None, None]
    k = np.zeros(rotvec_rad.shape[:-1] + (3, 3))
    x, y, z = rotvec_rad[..., 0], rotvec_rad[..., 1], rotvec_rad[..., 2]
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -z, y, -x
    k[..., 1, 0], k[..., 2, 0], k[..., 2, 1] = z, -y, x
    small = angle < 1e-12
    safe = np.where(small, 1.0, angle)
    # sin(a)/a and (1 - cos a)/a^2 of the unnormalised skew matrix.
    a = np.where(small, 1.0, np.sin(safe) / safe)
    b = np.where(small, 0.5, (1.0 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * k + b * (k @ k)


def axis_angle_from_rotation(R: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle vectors of (..., 3, 3) rotations with angle < pi."""
    R = np.asarray(R, dtype=np.float64)
    cos_angle = np.clip((np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos_angle)
    vee = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                    R[..., 1, 0] - R[..., 0, 1]], axis=-1)
    sin_angle = np.sin(angle)
    scale = np.where(angle < 1e-9, 0.5, angle / (2.0 * np.where(angle < 1e-9, 1.0, sin_angle)))
    return vee * scale[..., None]


def perturb_pose(
    T_world_camera: np.ndarray,
    sigma_translation_m: float,
    sigma_rotation_deg: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A noisy copy of a pose (4x4) or of a stack of poses (N, 4, 4).

    Translation: the camera centre moves by an isotropic Gaussian, each world axis
    ~ N(0, sigma_translation_m). Rotation: the camera turns about its own axes by an
    axis-angle vector whose components are each ~ N(0, sigma_rotation_deg), i.e.
    R' = R @ exp([w]x). The result is exactly rigid.
    """
    sigma_t = _check_sigma(sigma_translation_m, "sigma_translation_m")
    sigma_r = math.radians(_check_sigma(sigma_rotation_deg, "sigma_rotation_deg"))
    T = np.asarray(T_world_camera, dtype=np.float64)
    single = T.shape == (4, 4)
    poses = T[None] if single else T
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"T_world_camera must be 4x4 or (N, 4, 4), got shape {T.shape}")
    for i, pose in enumerate(poses):
        check_pose(pose, "T_world_camera" if single else f"T_world_camera[{i}]")
    n = len(poses)
    out = poses.copy()
    out[:, :3, :3] = poses[:, :3, :3] @ rotation_from_axis_angle(rng.normal(0.0, sigma_r, (n, 3)))
    out[:, :3, 3] += rng.normal(0.0, sigma_t, (n, 3))
    return out[0] if single else out


def noisy_depth(depth_m: np.ndarray, sigma_relative: float, rng: np.random.Generator) -> np.ndarray:
    """Depth with Gaussian noise of standard deviation ``sigma_relative * depth``.

    Zeros (no measurement) stay zero; the dtype is kept. A value the noise would push
    to zero or below (only for sigma_relative of about 0.2 and more) becomes 0, "no
    measurement", rather than a negative depth.
    """
    sigma = _check_sigma(sigma_relative, "sigma_relative")
    depth = np.asarray(depth_m)
    if not np.issubdtype(depth.dtype, np.floating):
        raise ValueError(f"depth_m must be floating point metres, got dtype {depth.dtype}")
    valid = depth > 0
    noisy = depth * (1.0 + sigma * rng.standard_normal(depth.shape))
    noisy = np.where(valid & (noisy > 0), noisy, 0.0)
    return noisy.astype(depth.dtype, copy=False)
