"""Pose refinement: register a frame's depth against the spatial map to correct its pose.

A headset's tracker reports each frame's pose with a few millimetres and a few
tenths of a degree of error, which at arm's length moves an anchored point by
more than the map's own error. The map, integrated from many frames, averages
that noise out; registering the frame's own depth against it (point-to-plane
ICP, as KinectFusion-style trackers do) takes most of the frame's pose error
away. When the registration cannot be trusted it refuses, and the caller keeps
the tracker's pose and its uncertainty.

    refinement = refine_pose(T_world_depth, depth_m, depth_intrinsics, snapshot, noise=noise)
    anchor_shape(shape, refinement.apply(T_world_colour), colour_intrinsics, snapshot,
                 noise=refinement.noise)

About 50 ms of CPU per frame (bench/anchoring.py), in open3d calls that hold
the GIL for up to ~8 ms at a time: run it in an executor, not on the event loop.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import open3d as o3d

from vision.anchoring import NoiseModel
from vision.camera import Intrinsics, camera_rays, check_pose, invert_pose, norm_from_px
from vision.spatial_map import MapSnapshot

_REG = o3d.pipelines.registration
_DEFAULT_NOISE = NoiseModel()


@dataclass(frozen=True)
class RefineSettings:
    """How a refinement samples the frame, registers it and decides to refuse."""

    #: Depth pixels used for the registration, at most (sampled with a density
    #: proportional to 1/depth²; see `_sample_depth`).
    max_points: int = 3000
    #: Fewer usable depth pixels, or map points in view, than this: refused.
    min_points: int = 300
    #: Depth beyond this is ignored: a sensor's far range is noisy and seldom mapped.
    max_depth_m: float = 3.0
    #: The depth sensor's noise, one sigma, as a fraction of the depth. It sets
    #: the robust kernel and the final correspondence distance.
    depth_sigma_relative: float = 0.01
    #: A correction larger than this is not a tracker's error but a wrong match: refused.
    max_correction_m: float = 0.03
    max_correction_deg: float = 3.0
    #: Fewer of the frame's points than this fraction matching the map: refused.
    min_fitness: float = 0.3
    #: The information of the registration's weakest direction, as a fraction of
    #: its strongest's (rotations scaled by the registered points' spread): below
    #: it, e.g. a flat wall, refused.
    min_constraint_ratio: float = 1e-3


@dataclass(frozen=True, eq=False)
class PoseRefinement:
    """The outcome of registering one depth frame against the map.

    When `refined` is False, `T_world_camera` is the input pose unchanged,
    `correction_world` is the identity and `reason` says why; the measured
    fields hold what the attempt found (zero or NaN where it got no further).
    """

    T_world_camera: np.ndarray  # (4, 4) refined pose, or the input pose
    refined: bool
    reason: str
    #: World-frame rigid transform with T_refined = correction_world @ T_input. A
    #: camera rigidly attached to the depth camera takes the same correction.
    correction_world: np.ndarray
    #: How far the camera centre moved and the camera turned (of the converged
    #: registration, also when it was refused for being too large).
    correction_m: float
    correction_deg: float
    #: Fraction of the frame's sampled points with a map point within the final
    #: correspondence distance, their RMS distance, and how many they were.
    fitness: float
    inlier_rmse_m: float
    correspondences: int
    #: The centroid of the registered points (world), where the refined pose is
    #: known best; its per-axis one-sigma translation error there, and rotation
    #: error about it (largest over the axes). NaN when not refined.
    pivot_world_m: np.ndarray
    translation_sigma_m: float
    rotation_sigma_deg: float
    #: The prior the caller passed, with the pose sigmas replaced by the ones above
    #: when refined: what to anchor with.
    noise: NoiseModel

    def apply(self, T_world_other: object) -> np.ndarray:
        """The corrected pose of another camera rigidly attached to this one (e.g.
        the colour camera of the frame whose depth was registered)."""
        return self.correction_world @ check_pose(T_world_other, "T_world_other")


def refine_pose(
    T_world_camera: object,
    depth_m: object,
    depth_intrinsics: Intrinsics,
    snapshot: MapSnapshot,
    *,
    noise: NoiseModel = _DEFAULT_NOISE,
    settings: RefineSettings = RefineSettings(),
) -> PoseRefinement:
    """Refine the pose of a depth frame by registering it against the map.

    `T_world_camera` is the tracker's pose of the depth camera, `depth_m` its
    (H, W) camera-z depth in metres with 0 for no measurement. `noise` is what
    the caller assumes about the tracker's pose and the map: its map sigmas set
    the floor of the refined pose's uncertainty (a pose cannot be known better
    than the map it was registered against).
    """
    T_input = check_pose(T_world_camera)
    if not isinstance(depth_intrinsics, Intrinsics):
        raise ValueError("depth_intrinsics must be a vision.camera.Intrinsics")
    if not isinstance(snapshot, MapSnapshot):
        raise ValueError("snapshot must be a vision.spatial_map.MapSnapshot")
    depth = _check_depth(depth_m, depth_intrinsics)

    def refused(reason: str, **found: float) -> PoseRefinement:
        values = {"correction_m": 0.0, "correction_deg": 0.0, "fitness": 0.0,
                  "inlier_rmse_m": math.nan, "correspondences": 0}
        values.update(found)
        return PoseRefinement(
            T_input, False, reason, np.eye(4), pivot_world_m=np.full(3, math.nan), translation_sigma_m=math.nan,
            rotation_sigma_deg=math.nan, noise=noise, **values)

    points_camera = _sample_depth(depth, depth_intrinsics, settings)
    if len(points_camera) < settings.min_points:
        return refused(
            f"depth_m has {len(points_camera)} usable pixels within {settings.max_depth_m:g} m; "
            f"the registration needs {settings.min_points}")
    target_world, target_normals = _map_in_view(T_input, depth_intrinsics, snapshot, settings)
    if len(target_world) < settings.min_points:
        return refused(f"the map has {len(target_world)} surface points in view of this pose; "
                       f"the registration needs {settings.min_points}")

    range_m = float(np.median(points_camera[:, 2]))
    noise_m = settings.depth_sigma_relative * range_m
    source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points_camera))
    target = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(target_world))
    target.normals = o3d.utility.Vector3dVector(target_normals)
    criteria = _REG.ICPConvergenceCriteria(relative_fitness=1e-6, relative_rmse=1e-6, max_iteration=30)
    T = T_input
    # Coarse to fine: first wide enough to reach from any plausible tracker
    # error, then a few depth-noise sigmas so that other surfaces drop out.
    for distance_m in (settings.max_correction_m + 3 * noise_m, 4 * noise_m + 0.002):
        kernel = _REG.TukeyLoss(k=distance_m)
        result = _REG.registration_icp(
            source, target, distance_m, T, _REG.TransformationEstimationPointToPlane(kernel), criteria)
        T = np.asarray(result.transformation)
    if not np.all(np.isfinite(T)):
        return refused("the registration diverged (non-finite pose)")
    T = _orthonormalised(T)

    correction = T @ invert_pose(T_input)
    pairs = np.asarray(result.correspondence_set)
    found = {
        "correction_m": float(np.linalg.norm(T[:3, 3] - T_input[:3, 3])),
        "correction_deg": math.degrees(_angle(correction[:3, :3])),
        "fitness": float(result.fitness),
        "inlier_rmse_m": float(result.inlier_rmse),
        "correspondences": len(pairs),
    }
    if result.fitness < settings.min_fitness or len(pairs) < settings.min_points:
        return refused(f"only {result.fitness:.0%} of the depth frame ({len(pairs)} points) matches "
                       f"the map; at least {settings.min_fitness:.0%} must", **found)
    p_world = points_camera[pairs[:, 0]] @ T[:3, :3].T + T[:3, 3]
    q_world, n_world = target_world[pairs[:, 1]], target_normals[pairs[:, 1]]
    pivot = p_world.mean(axis=0)
    lever_m = _lever_arm(p_world, T)
    covariance, ratio = _pose_covariance(p_world, q_world, n_world, pivot, lever_m, distance_m)
    # Checked before the correction's size: along an unconstrained direction
    # (a flat wall slides) the solver may have wandered anywhere.
    if ratio < settings.min_constraint_ratio:
        return refused(f"the registration is poorly constrained (its weakest direction carries "
                       f"{max(ratio, 0.0):.1e} of the strongest's information): the depth frame sees too "
                       "little relief", **found)
    if found["correction_m"] > settings.max_correction_m or found["correction_deg"] > settings.max_correction_deg:
        return refused(
            f"the registration converged to a correction of {found['correction_m'] * 1e3:.1f} mm and "
            f"{found['correction_deg']:.2f} deg, beyond the {settings.max_correction_m * 1e3:g} mm and "
            f"{settings.max_correction_deg:g} deg a tracker's error explains", **found)

    stat_r = math.sqrt(max(np.linalg.eigvalsh(covariance[:3, :3]).max(), 0.0))
    stat_t = math.sqrt(max(np.linalg.eigvalsh(covariance[3:, 3:]).max(), 0.0))
    # The map's own error does not average out over the frame's points the way
    # depth noise does (a map-wide offset carries the registered pose with it):
    # its range-independent part floors the translation, and tilts the pose by
    # as much over the lever arm. Measured on the TSDF map of
    # tests/test_vision_anchoring.py, the statistical part is ~0.3 mm and the
    # pose's real error at the pivot 1.1-1.3 mm per axis, against a 1 mm floor
    # (docs/geometry.md, "Pose refinement").
    floor_m = noise.map_sigma_m
    sigma_t = math.hypot(stat_t, floor_m)
    sigma_r_deg = math.degrees(math.hypot(stat_r, floor_m / lever_m))
    refined_noise = dataclasses.replace(
        noise, pose_translation_sigma_m=sigma_t, pose_rotation_sigma_deg=sigma_r_deg,
        pose_pivot_world_m=tuple(float(c) for c in pivot))
    return PoseRefinement(T, True, "", correction, pivot_world_m=pivot, translation_sigma_m=sigma_t,
                          rotation_sigma_deg=sigma_r_deg, noise=refined_noise, **found)


def _check_depth(depth_m: object, intrinsics: Intrinsics) -> np.ndarray:
    try:
        depth = np.asarray(depth_m, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"depth_m must be an array of numbers: {exc}") from None
    if depth.shape != (intrinsics.height, intrinsics.width):
        raise ValueError(
            f"depth_m must have shape ({intrinsics.height}, {intrinsics.width}) as "
            f"depth_intrinsics says, got {depth.shape}")
    if not np.all(np.isfinite(depth)):
        raise ValueError("depth_m contains NaN or infinity; mark a missing measurement with 0")
    if np.any(depth < 0):
        raise ValueError("depth_m contains negative depths; mark a missing measurement with 0")
    return depth


def _sample_depth(depth: np.ndarray, intrinsics: Intrinsics, settings: RefineSettings) -> np.ndarray:
    """(N, 3) camera-frame points of a subsample of the usable depth pixels, with
    density proportional to 1 / depth².

    A depth sensor's noise grows with depth (1% of it here), and open3d's ICP
    weighs every point alike: sampled uniformly, the far background (1.5 m and
    more, σ 15 mm and more) pulled the pose off, leaving one anchored point in
    seven more than 1 mm worse than unrefined (p95 6.6 mm against 4.4 mm
    sampled this way, in tests/test_vision_anchoring.py).
    Sampling in proportion to each point's information, 1/σ², gives the
    weighted fit with an unweighted solver. Systematic sampling along the
    cumulative weight keeps it deterministic and spread over the image.
    """
    flat = depth.ravel()
    valid = np.flatnonzero((flat > 0) & (flat <= settings.max_depth_m))
    if len(valid) > settings.max_points:
        cumulative = np.cumsum(1.0 / flat[valid] ** 2)
        picks = (np.arange(settings.max_points) + 0.5) * (cumulative[-1] / settings.max_points)
        valid = valid[np.unique(np.searchsorted(cumulative, picks))]
    v_px, u_px = np.divmod(valid, intrinsics.width)
    rays = camera_rays(norm_from_px(np.stack([u_px, v_px], axis=1).astype(np.float64), intrinsics), intrinsics)
    # Depth is the camera z, not the distance along the ray.
    return rays * (flat[valid] / rays[:, 2])[:, None]


def _map_in_view(
    T: np.ndarray, intrinsics: Intrinsics, snapshot: MapSnapshot, settings: RefineSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Map points and normals (world) that the depth camera would see from pose T.

    Casting the map from the tracker's pose samples its surface where the frame
    looks, at about the frame's own density, whatever the map's size (a TSDF
    map here has ~2M triangles; sampling all of it per frame would cost
    seconds), and sees the map's live blocks only.
    """
    step = max(1, int(math.sqrt(intrinsics.width * intrinsics.height / (4 * settings.max_points))))
    v_px, u_px = np.mgrid[0:intrinsics.height:step, 0:intrinsics.width:step]
    uv_px = np.stack([u_px.ravel(), v_px.ravel()], axis=1).astype(np.float64)
    rays_camera = camera_rays(norm_from_px(uv_px, intrinsics), intrinsics)
    hits = snapshot.cast(T[:3, 3], rays_camera @ T[:3, :3].T)
    keep = hits.hit & (hits.t_m * rays_camera[:, 2] <= settings.max_depth_m)
    dirs = rays_camera[keep] @ T[:3, :3].T
    return T[:3, 3] + dirs * hits.t_m[keep, None], hits.normal_world[keep]


def _pose_covariance(
    p_world: np.ndarray, q_world: np.ndarray, n_world: np.ndarray, pivot: np.ndarray,
    lever_m: float, kernel_m: float,
) -> tuple[np.ndarray, float]:
    """(6x6 covariance of (rotation about `pivot`, translation of `pivot`),
    ratio of the weakest to the strongest constraint) of a point-to-plane fit.

    With J = ((p - pivot) × n, n) and Tukey weights w, the fit solves
    H δ = -Σ w r J with H = Σ w J Jᵀ; its covariance is the sandwich
    H⁻¹ (Σ w² r² J Jᵀ) H⁻¹, which holds when the residuals' variance differs
    from point to point (depth noise grows with depth). About the registered
    points' centroid, rotation and translation are nearly uncorrelated.
    """
    residual = np.einsum("ij,ij->i", p_world - q_world, n_world)
    weight = np.where(np.abs(residual) < kernel_m, (1 - (residual / kernel_m) ** 2) ** 2, 0.0)
    J = np.concatenate([np.cross(p_world - pivot, n_world), n_world], axis=1)
    H = (J * weight[:, None]).T @ J
    scale = np.concatenate([np.full(3, 1.0 / lever_m), np.ones(3)])
    eig = np.linalg.eigvalsh(H * np.outer(scale, scale))
    ratio = float(eig[0] / eig[-1]) if eig[-1] > 0 else 0.0
    if ratio <= 1e-12:
        return np.full((6, 6), np.inf), ratio
    H_inv = np.linalg.inv(H)
    Jr = J * (weight * residual)[:, None]
    return H_inv @ (Jr.T @ Jr) @ H_inv, ratio


def _lever_arm(p_world: np.ndarray, T: np.ndarray) -> float:
    """RMS distance of the registered points from their centroid, across the
    line of sight: how far a rotation error moves them."""
    offsets = p_world - p_world.mean(axis=0)
    along = offsets @ T[:3, 2]
    across = offsets - along[:, None] * T[:3, 2]
    return max(float(np.sqrt((across**2).sum(axis=1).mean())), 1e-3)


def _angle(R: np.ndarray) -> float:
    return math.acos(float(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)))


def _orthonormalised(T: np.ndarray) -> np.ndarray:
    """ICP's product of incremental updates drifts from orthonormal in the last
    bits; snap it back so check_pose accepts it downstream."""
    u, _, vt = np.linalg.svd(T[:3, :3])
    out = T.copy()
    out[:3, :3] = u @ vt
    return out
