"""Closed triangle meshes built from a few primitives, as plain numpy arrays.

Each builder returns ``(vertices_m (V, 3) float64, triangles (F, 3) int32)`` with
counter-clockwise winding seen from outside, so face normals point out of the solid
(or, for the room shell, into the room where the camera is).
"""

from __future__ import annotations

import numpy as np

Mesh = tuple[np.ndarray, np.ndarray]


def box(min_m: np.ndarray, max_m: np.ndarray) -> Mesh:
    """An axis-aligned box with 4 vertices per face, so that each vertex has its
    face's normal (no smoothing across the edges)."""
    lo, hi = np.asarray(min_m, dtype=np.float64), np.asarray(max_m, dtype=np.float64)
    vertices, triangles = [], []
    for axis in range(3):
        u, v = (axis + 1) % 3, (axis + 2) % 3
        for side, value in ((-1.0, lo[axis]), (1.0, hi[axis])):
            quad = np.empty((4, 3))
            quad[:, axis] = value
            quad[:, u] = (lo[u], hi[u], hi[u], lo[u])
            quad[:, v] = (lo[v], lo[v], hi[v], hi[v])
            base = 4 * len(vertices)
            # (u, v, axis) is right-handed, so 0-1-2 runs counter-clockwise seen from +axis.
            tris = np.array([[0, 1, 2], [0, 2, 3]]) + base
            if side < 0:
                tris = tris[:, ::-1]
            vertices.append(quad)
            triangles.append(tris)
    return np.concatenate(vertices), np.concatenate(triangles).astype(np.int32)


def inverted(mesh: Mesh) -> Mesh:
    """The same surface with its normals flipped (a room seen from inside)."""
    vertices, triangles = mesh
    return vertices, triangles[:, ::-1].copy()


def revolve(
    origin_m: np.ndarray,
    axis: np.ndarray,
    ref: np.ndarray,
    axial_m: np.ndarray,
    radius_ref_m: np.ndarray,
    radius_other_m: np.ndarray,
    n_around: int,
    exponent: float = 2.0,
) -> Mesh:
    """A closed surface swept along a straight axis.

    At axial position ``axial_m[k]`` (from ``origin_m`` along ``axis``) the cross-section
    is a superellipse (``exponent`` 2: an ellipse) with half-axes ``radius_ref_m[k]``
    along ``ref`` and ``radius_other_m[k]`` along ``axis x ref``. The first and last
    stations must have zero radius: they become the two poles.
    """
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    ref = np.asarray(ref, dtype=np.float64)
    ref = ref - axis * (ref @ axis)
    ref = ref / np.linalg.norm(ref)
    other = np.cross(axis, ref)
    axial_m = np.asarray(axial_m, dtype=np.float64)
    ring_count = len(axial_m) - 2
    if ring_count < 1 or radius_ref_m[0] != 0 or radius_ref_m[-1] != 0:
        raise ValueError("revolve: a profile needs a pole at each end and rings between")

    angle = np.linspace(0.0, 2.0 * np.pi, n_around, endpoint=False)
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    power = 2.0 / exponent
    section_ref = np.sign(cos_a) * np.abs(cos_a) ** power
    section_other = np.sign(sin_a) * np.abs(sin_a) ** power

    origin = np.asarray(origin_m, dtype=np.float64)
    rings = (
        origin
        + axial_m[1:-1, None, None] * axis
        + (radius_ref_m[1:-1, None] * section_ref)[..., None] * ref
        + (radius_other_m[1:-1, None] * section_other)[..., None] * other
    ).reshape(-1, 3)
    pole_start = origin + axial_m[0] * axis
    pole_end = origin + axial_m[-1] * axis
    vertices = np.concatenate([pole_start[None], rings, pole_end[None]])

    def ring_index(ring: int, j: np.ndarray) -> np.ndarray:
        return 1 + ring * n_around + (j % n_around)

    j = np.arange(n_around)
    triangles = [np.stack([np.zeros(n_around, int), ring_index(0, j + 1), ring_index(0, j)], 1)]
    for ring in range(ring_count - 1):
        a, b = ring_index(ring, j), ring_index(ring, j + 1)
        c, d = ring_index(ring + 1, j), ring_index(ring + 1, j + 1)
        triangles += [np.stack([a, b, d], 1), np.stack([a, d, c], 1)]
    last = len(vertices) - 1
    triangles.append(
        np.stack([ring_index(ring_count - 1, j), ring_index(ring_count - 1, j + 1),
                  np.full(n_around, last)], 1)
    )
    triangles = np.concatenate(triangles).astype(np.int32)
    return vertices, _outward(vertices, triangles)


def ellipsoid(
    center_m: np.ndarray, axis: np.ndarray, ref: np.ndarray,
    half_axes_m: tuple[float, float, float], n_around: int = 48, n_rings: int = 32,
    exponent: float = 2.0,
) -> Mesh:
    """An ellipsoid with half-axes (along ``axis``, along ``ref``, along axis x ref)."""
    a, b, c = half_axes_m
    theta = np.linspace(0.0, np.pi, n_rings + 2)
    sin_t = np.sin(theta)
    sin_t[0] = sin_t[-1] = 0.0
    return revolve(center_m, axis, ref, -a * np.cos(theta), b * sin_t, c * sin_t,
                   n_around, exponent)


def capsule(
    start_m: np.ndarray, end_m: np.ndarray, radius_start_m: float, radius_end_m: float,
    ref: np.ndarray, n_around: int = 40, cap_rings: int = 8, spacing_m: float = 0.01,
) -> Mesh:
    """A tapered capsule: half-spheres of the two radii joined by a truncated cone."""
    start, end = np.asarray(start_m, float), np.asarray(end_m, float)
    length = float(np.linalg.norm(end - start))
    theta = np.linspace(0.0, np.pi / 2.0, cap_rings + 1)
    body = np.linspace(0.0, length, max(2, int(np.ceil(length / spacing_m)) + 1))[1:-1]
    axial = np.concatenate([
        -radius_start_m * np.cos(theta),
        body,
        length + radius_end_m * np.sin(theta[:-1]),
        [length + radius_end_m],
    ])
    radius = np.concatenate([
        radius_start_m * np.sin(theta),
        radius_start_m + (radius_end_m - radius_start_m) * body / length,
        radius_end_m * np.cos(theta[:-1]),
        [0.0],
    ])
    radius[0] = 0.0
    return revolve(start, end - start, ref, axial, radius, radius, n_around)


def loft(
    start_m: np.ndarray, axis: np.ndarray, ref: np.ndarray,
    stations_m: np.ndarray, radius_ref_m: np.ndarray, radius_other_m: np.ndarray,
    cap_start_m: float, cap_end_m: float, n_around: int = 64, spacing_m: float = 0.01,
    cap_rings: int = 10, exponent: float = 2.0,
) -> Mesh:
    """A smooth body through cross-sections given at a few stations along an axis,
    closed by rounded caps of the given lengths beyond the first and last station."""
    stations_m = np.asarray(stations_m, float)
    body = np.linspace(stations_m[0], stations_m[-1],
                       int(np.ceil((stations_m[-1] - stations_m[0]) / spacing_m)) + 1)
    ra = smooth_interp(body, stations_m, radius_ref_m)
    rb = smooth_interp(body, stations_m, radius_other_m)
    theta = np.linspace(0.0, np.pi / 2.0, cap_rings + 1)[:-1]  # pole .. just before the ring
    cap_in = np.sin(theta)
    axial = np.concatenate([
        stations_m[0] - cap_start_m * np.cos(theta), body,
        stations_m[-1] + cap_end_m * np.cos(theta[::-1]),
    ])
    radius_a = np.concatenate([ra[0] * cap_in, ra, ra[-1] * cap_in[::-1]])
    radius_b = np.concatenate([rb[0] * cap_in, rb, rb[-1] * cap_in[::-1]])
    return revolve(start_m, axis, ref, axial, radius_a, radius_b, n_around, exponent)


def smooth_interp(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise interpolation with a smoothstep between stations (no creases in a
    profile, flat at the stations)."""
    xp, fp = np.asarray(xp, float), np.asarray(fp, float)
    k = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, len(xp) - 2)
    t = np.clip((x - xp[k]) / (xp[k + 1] - xp[k]), 0.0, 1.0)
    s = t * t * (3.0 - 2.0 * t)
    return fp[k] + (fp[k + 1] - fp[k]) * s


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals."""
    v0, v1, v2 = (vertices[triangles[:, i]] for i in range(3))
    face = np.cross(v1 - v0, v2 - v0)
    normals = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(normals, triangles[:, i], face)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.maximum(length, 1e-12)


def _outward(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Flip the winding if the closed mesh encloses a negative volume."""
    v0, v1, v2 = (vertices[triangles[:, i]] for i in range(3))
    volume = np.einsum("ij,ij->", v0, np.cross(v1, v2)) / 6.0
    return triangles if volume > 0 else triangles[:, ::-1].copy()
