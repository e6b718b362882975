"""Anchoring: turn a 2D shape drawn on a video frame into 3D points on the spatial map.

An expert draws on the frame the browser displayed; that frame's pose and
intrinsics give a ray through every point of the drawing, and the first
surface each ray meets on the map is where the drawing belongs on the patient.
Strokes are resampled so consecutive anchored points are at most
`max_spacing_m` apart on the surface; rays that miss fall back to a plane fitted
to neighbouring hits, or to a default depth, and say so (`Anchoring`).
Uncertainty per point follows the noise model of docs/geometry.md.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from vision.camera import Intrinsics, check_points, check_pose, world_rays
from vision.spatial_map import MapSnapshot, RayHits

#: 95% of a 3D isotropic Gaussian error lies within this many per-axis sigmas.
CHI3_95 = 2.7955


class Anchoring(enum.IntEnum):
    """How one anchored point was placed."""

    HIT = 0  #: its ray hit the spatial map
    PLANE = 1  #: its ray missed; placed on a plane fitted to neighbouring hits
    DEPTH = 2  #: no usable neighbours; placed at the default depth


class ShapeKind(str, enum.Enum):
    POINT = "point"
    LABEL = "label"
    IMAGE = "image"  #: where a shared image's panel hangs: one point
    STROKE = "stroke"  #: freehand or polyline, open
    ARROW = "arrow"  #: a stroke whose last point is the head
    ELLIPSE = "ellipse"  #: closed outline (see `ellipse_outline`)
    POLYGON = "polygon"  #: closed stroke, e.g. an area measurement
    RULER = "ruler"  #: two points
    ANGLE = "angle"  #: three points, the vertex in the middle


#: Kinds anchored as a single point (with a neighbourhood probe for misses).
_POINT_KINDS = {ShapeKind.POINT, ShapeKind.LABEL, ShapeKind.IMAGE}
#: Kinds whose points are anchored as drawn, without resampling between them.
_DISCRETE_KINDS = _POINT_KINDS | {ShapeKind.RULER, ShapeKind.ANGLE}
_CLOSED_KINDS = {ShapeKind.ELLIPSE, ShapeKind.POLYGON}
#: Normalised coordinates a little outside the frame are clipped (a pointer
#: released just past the edge); further out is an error.
_UV_SLACK = 0.02


@dataclass(frozen=True)
class NoiseModel:
    """What the anchoring's uncertainty assumes about its inputs (docs/geometry.md).

    Sigmas are per axis, one standard deviation.
    """

    pose_translation_sigma_m: float = 0.002
    pose_rotation_sigma_deg: float = 0.2
    #: Error of the map surface along its normal: absolute, plus a fraction of
    #: the viewing range (maps built from depth frames).
    map_sigma_m: float = 0.0005
    map_sigma_relative: float = 0.0
    #: Where the translation error is measured, in the world; None for the camera
    #: centre (a tracker's pose). A pose registered against the map
    #: (`vision.refine`) is known best where its depth met the map: there the
    #: rotation error moves a point by its distance from this pivot, not by its
    #: range, and is largely uncorrelated with the translation error.
    pose_pivot_world_m: tuple[float, float, float] | None = None

    def point_sigma_m(
        self, range_m: np.ndarray, cos_incidence: np.ndarray, lever_m: np.ndarray | None = None
    ) -> np.ndarray:
        """Per-axis sigma of an anchored point hit at `range_m` with |cos| of the
        angle between ray and surface normal `cos_incidence`; `lever_m` is its
        distance from the pose's pivot (the range when the pivot is the camera)."""
        cos = np.clip(cos_incidence, 0.25, 1.0)  # beyond ~75° the linear model breaks down
        lever = range_m if lever_m is None else lever_m
        lateral = np.hypot(self.pose_translation_sigma_m, lever * math.radians(self.pose_rotation_sigma_deg))
        surface = self.map_sigma_m + self.map_sigma_relative * range_m
        # A ray moved sideways by `lateral` slides along a tilted surface by
        # lateral / cos; a surface displaced along its normal moves the hit
        # along the ray by surface / cos.
        return np.hypot(lateral, surface) / cos


EXACT_MAP = NoiseModel(pose_translation_sigma_m=0.0, pose_rotation_sigma_deg=0.0, map_sigma_m=0.0002)


@dataclass(frozen=True)
class Shape:
    """A 2D drawing on one frame, in normalised image coordinates."""

    kind: ShapeKind
    uv_norm: np.ndarray  # (N, 2)

    @staticmethod
    def checked(kind: str | ShapeKind, uv_norm: object) -> Shape:
        try:
            shape_kind = ShapeKind(kind)
        except ValueError:
            raise ValueError(
                f"kind must be one of {', '.join(k.value for k in ShapeKind)}; got {kind!r}"
            ) from None
        uv = check_points(uv_norm, "uv_norm", 2)
        if np.any(uv < -_UV_SLACK) or np.any(uv > 1 + _UV_SLACK):
            raise ValueError("uv_norm must lie in the frame: each coordinate in [0, 1]")
        uv = np.clip(uv, 0.0, 1.0)
        if shape_kind in _POINT_KINDS and len(uv) != 1:
            raise ValueError(f"a {shape_kind.value} has exactly one point in uv_norm, got {len(uv)}")
        if shape_kind in (ShapeKind.RULER, ShapeKind.ARROW) and len(uv) < 2:
            raise ValueError(f"a {shape_kind.value} needs at least two points in uv_norm, got {len(uv)}")
        if shape_kind == ShapeKind.RULER and len(uv) != 2:
            raise ValueError(f"a ruler has exactly two points in uv_norm, got {len(uv)}")
        if shape_kind == ShapeKind.ANGLE and len(uv) != 3:
            raise ValueError(f"an angle has exactly three points in uv_norm, got {len(uv)}")
        if shape_kind in _CLOSED_KINDS and len(uv) < 3:
            raise ValueError(f"a {shape_kind.value} needs at least three points in uv_norm, got {len(uv)}")
        return Shape(shape_kind, uv)

    @property
    def closed(self) -> bool:
        return self.kind in _CLOSED_KINDS


def ellipse_outline(
    center_uv_norm: tuple[float, float],
    radii_uv_norm: tuple[float, float],
    rotation_rad: float = 0.0,
    points: int = 64,
) -> np.ndarray:
    """The outline of an ellipse in normalised coordinates, for Shape(ELLIPSE, ...)."""
    center = check_points(center_uv_norm, "center_uv_norm", 2)[0]
    radii = check_points(radii_uv_norm, "radii_uv_norm", 2)[0]
    if np.any(radii <= 0):
        raise ValueError("radii_uv_norm must be positive")
    if not math.isfinite(rotation_rad):
        raise ValueError("rotation_rad must be finite")
    angle = np.linspace(0.0, 2 * math.pi, points, endpoint=False)
    local = np.stack([radii[0] * np.cos(angle), radii[1] * np.sin(angle)], axis=1)
    c, s = math.cos(rotation_rad), math.sin(rotation_rad)
    return local @ np.array([[c, s], [-s, c]]) + center


@dataclass(frozen=True)
class AnchoredShape:
    """A shape placed in the world. Arrays are per anchored point, in drawing order."""

    kind: ShapeKind
    closed: bool
    points_world_m: np.ndarray  # (M, 3)
    normals_world: np.ndarray  # (M, 3) unit, facing the camera that drew it
    anchoring: np.ndarray  # (M,) uint8, Anchoring values
    sigma_m: np.ndarray  # (M,) per-axis 1-sigma position uncertainty
    uv_norm: np.ndarray  # (M, 2) where each point was on the drawn frame

    @property
    def radius95_m(self) -> np.ndarray:
        """Radius containing the true position with 95% probability under the noise model."""
        return CHI3_95 * self.sigma_m

    @property
    def all_hit(self) -> bool:
        return bool(np.all(self.anchoring == Anchoring.HIT))


@dataclass(frozen=True)
class AnchorSettings:
    max_spacing_m: float = 0.003
    #: Where a ray goes when nothing near it hit the map: camera z, metres.
    default_depth_m: float = 0.6
    #: Resampling stops subdividing a segment below this many pixels (a depth edge).
    min_segment_px: float = 0.5
    max_points: int = 4096
    #: Radius of the ring of probe rays around a missed single point, pixels.
    probe_radius_px: float = 12.0


def anchor_shape(
    shape: Shape,
    T_world_camera: object,
    intrinsics: Intrinsics,
    spatial_map: MapSnapshot,
    *,
    noise: NoiseModel = NoiseModel(),
    settings: AnchorSettings = AnchorSettings(),
) -> AnchoredShape:
    """Anchor a 2D shape drawn on a frame with pose `T_world_camera` onto the map."""
    if not isinstance(intrinsics, Intrinsics):
        raise ValueError("intrinsics must be a vision.camera.Intrinsics")
    T = check_pose(T_world_camera)
    uv = shape.uv_norm
    if shape.kind in _DISCRETE_KINDS:
        hits = _cast(uv, T, intrinsics, spatial_map)
    else:
        uv, hits = _resample(uv, shape.closed, T, intrinsics, spatial_map, settings)
    points, normals, how, plane_rms = _place(uv, hits, shape.kind, T, intrinsics, spatial_map, settings)
    sigma = _sigma(points, normals, how, plane_rms, T, noise, settings)
    return AnchoredShape(shape.kind, shape.closed, points, normals, how, sigma, uv)


def _cast(uv: np.ndarray, T: np.ndarray, intrinsics: Intrinsics, spatial_map: MapSnapshot) -> RayHits:
    origin, dirs = world_rays(uv, T, intrinsics)
    return spatial_map.cast(origin, dirs)


def _resample(
    uv: np.ndarray,
    closed: bool,
    T: np.ndarray,
    intrinsics: Intrinsics,
    spatial_map: MapSnapshot,
    settings: AnchorSettings,
) -> tuple[np.ndarray, RayHits]:
    """Subdivide segments whose anchored ends are too far apart on the surface, and recast."""
    if closed:
        uv = np.concatenate([uv, uv[:1]])
    size_px = np.array([intrinsics.width, intrinsics.height], dtype=np.float64)
    # A first pass at ~4 px spacing finds edges that the drawn vertices straddle.
    uv = _subdivide(uv, np.ceil(np.linalg.norm(np.diff(uv, axis=0) * size_px, axis=1) / 4.0))
    hits = _cast(uv, T, intrinsics, spatial_map)
    origin = T[:3, 3]
    for _ in range(6):
        if len(uv) >= settings.max_points:
            break
        points = _points_or_depth(origin, uv, hits, T, intrinsics, settings)
        gap_m = np.linalg.norm(np.diff(points, axis=0), axis=1)
        seg_px = np.linalg.norm(np.diff(uv, axis=0) * size_px, axis=1)
        pieces = np.where(
            (gap_m > settings.max_spacing_m) & (seg_px > settings.min_segment_px),
            np.minimum(np.ceil(gap_m / settings.max_spacing_m), np.maximum(seg_px / settings.min_segment_px, 1)),
            1,
        )
        pieces = np.minimum(pieces, 64)
        if np.all(pieces <= 1):
            break
        uv = _subdivide(uv, pieces)
        hits = _cast(uv, T, intrinsics, spatial_map)
    if closed:  # drop the repeated first point
        uv = uv[:-1]
        hits = RayHits(hits.hit[:-1], hits.t_m[:-1], hits.normal_world[:-1])
    return uv, hits


def _subdivide(uv: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """Split segment i of polyline `uv` into pieces[i] equal parts (vectorised)."""
    pieces = np.maximum(pieces.astype(np.int64), 1)
    seg = np.repeat(np.arange(len(pieces)), pieces)
    starts = np.cumsum(pieces) - pieces
    frac = (np.arange(len(seg)) - starts[seg]) / pieces[seg]
    inner = uv[seg] + (uv[seg + 1] - uv[seg]) * frac[:, None]
    return np.concatenate([inner, uv[-1:]])


def _points_or_depth(
    origin: np.ndarray, uv: np.ndarray, hits: RayHits, T: np.ndarray, intrinsics: Intrinsics, settings: AnchorSettings
) -> np.ndarray:
    """Hit points, with misses at the default depth: good enough to measure gaps."""
    _, dirs = world_rays(uv, T, intrinsics)
    t = np.where(hits.hit, hits.t_m, _default_t(dirs, T, settings))
    return origin + dirs * t[:, None]


def _default_t(dirs_world: np.ndarray, T: np.ndarray, settings: AnchorSettings) -> np.ndarray:
    cos_axis = dirs_world @ T[:3, 2]  # ray against the optical axis
    return settings.default_depth_m / np.maximum(cos_axis, 1e-3)


def _place(
    uv: np.ndarray,
    hits: RayHits,
    kind: ShapeKind,
    T: np.ndarray,
    intrinsics: Intrinsics,
    spatial_map: MapSnapshot,
    settings: AnchorSettings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    origin, dirs = world_rays(uv, T, intrinsics)
    points = origin + dirs * np.where(hits.hit, hits.t_m, 0.0)[:, None]
    normals = hits.normal_world.copy()
    how = np.full(len(uv), Anchoring.HIT, dtype=np.uint8)
    plane_rms = np.zeros(len(uv))
    miss = np.flatnonzero(~hits.hit)
    if len(miss) == 0:
        return points, normals, how, plane_rms
    if kind in _DISCRETE_KINDS:
        neighbours = [_probe_ring(uv[i], T, intrinsics, spatial_map, settings) for i in miss]
        groups = [(np.array([i]), nb) for i, nb in zip(miss, neighbours)]
    else:
        hit_points = points[hits.hit]
        hit_index = np.flatnonzero(hits.hit)
        groups = []
        for run in _runs(miss):
            # Up to 16 hits either side of the run, by position along the stroke.
            before = hit_index[hit_index < run[0]][-16:]
            after = hit_index[hit_index > run[-1]][:16]
            chosen = np.concatenate([before, after])
            groups.append((run, hit_points[np.searchsorted(hit_index, chosen)]))
    camera_forward = T[:3, 2]
    for run, neighbour_points in groups:
        plane = _fit_plane(neighbour_points, camera_forward)
        placed = False
        if plane is not None:
            normal, offset, rms = plane
            denom = dirs[run] @ normal
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (offset - origin @ normal) / denom
            ok = (np.abs(denom) > 0.1) & (t > 0.05) & (t < 10.0)
            if np.all(ok):
                points[run] = origin + dirs[run] * t[:, None]
                normals[run] = normal if normal @ camera_forward < 0 else -normal
                how[run] = Anchoring.PLANE
                plane_rms[run] = rms
                placed = True
        if not placed:
            points[run] = origin + dirs[run] * _default_t(dirs[run], T, settings)[:, None]
            normals[run] = -camera_forward
            how[run] = Anchoring.DEPTH
    return points, normals, how, plane_rms


def _runs(indices: np.ndarray) -> list[np.ndarray]:
    """Split sorted indices into runs of consecutive values."""
    breaks = np.flatnonzero(np.diff(indices) > 1) + 1
    return np.split(indices, breaks)


def _probe_ring(
    uv: np.ndarray, T: np.ndarray, intrinsics: Intrinsics, spatial_map: MapSnapshot, settings: AnchorSettings
) -> np.ndarray:
    """World points hit by 16 rays on two rings around a missed point."""
    angles = np.linspace(0, 2 * math.pi, 8, endpoint=False)
    offsets_px = np.concatenate(
        [r * np.stack([np.cos(angles), np.sin(angles)], axis=1) for r in (settings.probe_radius_px, 2 * settings.probe_radius_px)]
    )
    ring = np.clip(uv + offsets_px / np.array([intrinsics.width, intrinsics.height]), 0.0, 1.0)
    origin, dirs = world_rays(ring, T, intrinsics)
    hits = spatial_map.cast(origin, dirs)
    return origin + dirs[hits.hit] * hits.t_m[hits.hit, None]


def _fit_plane(points: np.ndarray, camera_forward: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """(unit normal, offset, rms residual) of the least-squares plane n·x = offset.

    Three or more well-spread points give a fitted plane; one or two give a
    plane facing the camera through their centroid; none gives None.
    """
    if len(points) == 0:
        return None
    centroid = points.mean(axis=0)
    if len(points) >= 3:
        _, singular, vt = np.linalg.svd(points - centroid, full_matrices=False)
        # Collinear points (a thin line of hits) pin no plane down.
        if singular[1] > 1e-3 * math.sqrt(len(points)):
            normal = vt[2]
            rms = float(singular[2] / math.sqrt(len(points)))
            return normal, float(normal @ centroid), rms
    return -camera_forward, float(-camera_forward @ centroid), 0.0


def _sigma(
    points: np.ndarray,
    normals: np.ndarray,
    how: np.ndarray,
    plane_rms: np.ndarray,
    T: np.ndarray,
    noise: NoiseModel,
    settings: AnchorSettings,
) -> np.ndarray:
    to_point = points - T[:3, 3]
    range_m = np.linalg.norm(to_point, axis=1)
    dirs = to_point / np.maximum(range_m, 1e-9)[:, None]
    cos_incidence = np.abs(np.einsum("ij,ij->i", dirs, normals))
    lever_m = None
    if noise.pose_pivot_world_m is not None:
        lever_m = np.linalg.norm(points - np.asarray(noise.pose_pivot_world_m), axis=1)
    sigma = noise.point_sigma_m(range_m, cos_incidence, lever_m)
    plane = how == Anchoring.PLANE
    # Off the map the surface is a guess: its fit residual plus 1 cm for the
    # surface not continuing the plane.
    sigma[plane] = np.hypot(sigma[plane], plane_rms[plane] + 0.01)
    # At a default depth only the direction is known: the depth could be off
    # by about as much as the depth itself.
    sigma[how == Anchoring.DEPTH] = 0.5 * settings.default_depth_m
    return sigma
