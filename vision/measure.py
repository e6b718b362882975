"""Measurements on anchored shapes, in the units users see (mm, mm², degrees).

Each result carries a one-sigma uncertainty propagated from the anchored
points' own (docs/geometry.md, "Uncertainty"). Point errors are treated as
independent, which overstates the error of a length when, as usual, most of it
is a pose error common to both ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vision.anchoring import Anchoring, AnchoredShape


@dataclass(frozen=True)
class Measurement:
    value: float
    sigma: float  #: one standard deviation, same unit
    unit: str  #: "mm", "mm²" or "deg"
    #: False when a point it depends on missed the map (plane or default depth)
    on_map: bool

    def __str__(self) -> str:
        return f"{self.value:.1f} ± {self.sigma:.1f} {self.unit}"


def _on_map(shape: AnchoredShape, index: np.ndarray | slice) -> bool:
    return bool(np.all(shape.anchoring[index] == Anchoring.HIT))


def distance(shape: AnchoredShape) -> Measurement:
    """Straight-line distance between a shape's first and last points (a ruler)."""
    a, b = shape.points_world_m[0], shape.points_world_m[-1]
    sigma_m = math.hypot(shape.sigma_m[0], shape.sigma_m[-1])
    ends = np.array([0, len(shape.points_world_m) - 1])
    return Measurement(float(np.linalg.norm(b - a)) * 1e3, sigma_m * 1e3, "mm", _on_map(shape, ends))


def path_length(shape: AnchoredShape) -> Measurement:
    """Length along the surface through every anchored point (closed shapes: the perimeter)."""
    points = shape.points_world_m
    if shape.closed:
        points = np.concatenate([points, points[:1]])
    if len(points) < 2:
        raise ValueError("path_length needs a shape with at least two points")
    length_m = float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())
    # Interior points move with their neighbours; the ends bound the error.
    sigma_m = math.hypot(shape.sigma_m[0], shape.sigma_m[-1])
    return Measurement(length_m * 1e3, sigma_m * 1e3, "mm", _on_map(shape, slice(None)))


def area(shape: AnchoredShape) -> Measurement:
    """Area enclosed by a closed shape, projected onto its best-fit plane (mm²).

    Exact for flat regions; on a curved surface it is the area of the region's
    shadow on that plane, smaller than the surface area by the cosine of the
    local tilt.
    """
    if not shape.closed:
        raise ValueError("area needs a closed shape (polygon or ellipse)")
    points = shape.points_world_m
    if len(points) < 3:
        raise ValueError("area needs at least three points")
    centroid = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centroid, full_matrices=False)
    xy = (points - centroid) @ vt[:2].T
    x, y = xy[:, 0], xy[:, 1]
    area_m2 = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    perimeter_m = float(np.linalg.norm(np.diff(np.concatenate([xy, xy[:1]]), axis=0), axis=1).sum())
    # A boundary displaced outward by sigma grows the area by perimeter * sigma.
    sigma_m2 = perimeter_m * float(np.mean(shape.sigma_m))
    return Measurement(area_m2 * 1e6, sigma_m2 * 1e6, "mm²", _on_map(shape, slice(None)))


def angle(shape: AnchoredShape) -> Measurement:
    """Angle at the middle of three points (first, vertex, last), degrees."""
    if len(shape.points_world_m) != 3:
        raise ValueError(f"angle needs exactly three points, got {len(shape.points_world_m)}")
    a, b, c = shape.points_world_m
    sa, sb, sc = shape.sigma_m
    ba, bc = a - b, c - b
    la, lc = float(np.linalg.norm(ba)), float(np.linalg.norm(bc))
    if la < 1e-9 or lc < 1e-9:
        raise ValueError("angle: an arm has zero length (two points coincide)")
    cos = float(np.clip(ba @ bc / (la * lc), -1.0, 1.0))
    sigma_rad = math.sqrt((sa / la) ** 2 + (sc / lc) ** 2 + sb**2 * (1 / la**2 + 1 / lc**2))
    return Measurement(math.degrees(math.acos(cos)), math.degrees(sigma_rad), "deg", _on_map(shape, slice(None)))
