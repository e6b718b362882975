"""A procedurally built ambulance interior with a patient on the stretcher: ground truth
for anchoring, re-projection and measurement tests.

Where things are is written down in vision/synthetic/layout.py: the patient lies
supine along the world X axis, head towards +X, face up (+Y), patient's left at +Z,
mattress top at Y = 0.70 m. Landmarks are points exactly on the patient mesh, found
by casting rays at the finished mesh and taking the hit as a barycentric
combination of the hit triangle's corners.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import open3d as o3d

from vision.camera import check_points
from vision.synthetic import _mesh, layout, texture

SCENE_PARTS: tuple[str, ...] = (
    "floor", "wall", "ceiling", "cabinet", "seat", "stretcher", "mattress", "equipment",
)
PATIENT_PARTS: tuple[str, ...] = (
    "head", "neck", "torso",
    "left_upper_arm", "left_forearm", "left_hand",
    "right_upper_arm", "right_forearm", "right_hand",
    "left_thigh", "left_lower_leg", "left_foot",
    "right_thigh", "right_lower_leg", "right_foot",
)
PART_NAMES: tuple[str, ...] = SCENE_PARTS + PATIENT_PARTS

#: The body part each landmark lies on.
LANDMARK_PARTS: Mapping[str, str] = MappingProxyType({
    "forehead": "head", "nose_tip": "head", "left_temple": "head", "right_temple": "head",
    "sternum": "torso", "umbilicus": "torso",
    "left_shoulder": "left_upper_arm", "right_shoulder": "right_upper_arm",
    "left_elbow": "left_forearm", "right_elbow": "right_forearm",
    "left_wrist": "left_forearm", "right_wrist": "right_forearm",
    "left_hand": "left_hand", "right_hand": "right_hand",
    "left_knee": "left_lower_leg", "right_knee": "right_lower_leg",
    "left_toe": "left_foot", "right_toe": "right_foot",
})

#: Segments of known length for ruler tests: both ends on the upper (+Y) side of the
#: forearm, so that one camera above the patient sees both.
FOREARM_SEGMENTS: tuple[tuple[str, str], ...] = (
    ("left_elbow", "left_wrist"), ("right_elbow", "right_wrist"),
)

#: One float32 (r, g, b) or (x, y, z) row as an opaque item.
_ROW = np.dtype((np.void, 12))

#: Guards the lazily built members of every scene's cache (renders may run in threads).
_CACHE_LOCK = threading.RLock()


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """One ambulance interior with a patient: a single triangle mesh (world metres,
    +Y up) whose triangles are labelled by part, plus ground-truth landmarks.

    Arrays are read-only. ``vertex_colors`` are the procedural texture sampled at the
    vertices (for viewers); the renderer evaluates the texture per pixel instead.
    """

    vertices_world_m: np.ndarray  # (V, 3) float64, values exactly representable in float32
    triangles: np.ndarray  # (F, 3) int32, counter-clockwise seen from the free side
    vertex_colors: np.ndarray  # (V, 3) float32 in [0, 1]
    vertex_normals_world: np.ndarray  # (V, 3) float32, unit
    triangle_part: np.ndarray  # (F,) int16, index into part_names
    part_names: tuple[str, ...]
    landmarks_world_m: Mapping[str, np.ndarray]  # name -> (3,) float64, on the patient mesh
    landmark_normals_world: Mapping[str, np.ndarray]  # name -> (3,) unit outward normal
    landmark_parts: Mapping[str, str]
    patient_center_world_m: np.ndarray  # (3,) centre of the patient's bounding box
    interior_bounds_world_m: np.ndarray  # (2, 3) min and max corner of the free compartment
    obstacle_boxes_world_m: np.ndarray  # (K, 2, 3) boxes around furniture and equipment
    seed: int
    _cache: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (f"SyntheticScene(seed={self.seed}, {len(self.vertices_world_m)} vertices, "
                f"{len(self.triangles)} triangles, {len(self.landmarks_world_m)} landmarks)")

    # --- parts ---------------------------------------------------------------

    def part_id(self, name: str) -> int:
        try:
            return self.part_names.index(name)
        except ValueError:
            raise ValueError(f"unknown part {name!r}; parts are {self.part_names}") from None

    @property
    def patient_part_ids(self) -> np.ndarray:
        return np.array([self.part_id(name) for name in PATIENT_PARTS], dtype=np.int16)

    def is_patient_part(self, part_id: np.ndarray) -> np.ndarray:
        """Elementwise: does a part id (-1 for nothing) belong to the patient?"""
        lookup = self._cache.get("is_patient")
        if lookup is None:  # idempotent, so a race only builds it twice
            lookup = np.zeros(len(self.part_names) + 1, dtype=bool)
            lookup[self.patient_part_ids] = True
            self._cache["is_patient"] = lookup
        return lookup[np.asarray(part_id)]  # -1 indexes the trailing False

    @property
    def patient_triangle_mask(self) -> np.ndarray:
        return self.is_patient_part(self.triangle_part)

    # --- ground truth ---------------------------------------------------------

    def segment_length_m(self, a: str, b: str) -> float:
        """Straight 3D distance between two landmarks, in metres."""
        for name in (a, b):
            if name not in self.landmarks_world_m:
                raise ValueError(f"unknown landmark {name!r}")
        return float(np.linalg.norm(self.landmarks_world_m[a] - self.landmarks_world_m[b]))

    @property
    def forearm_segments(self) -> tuple[tuple[str, str], ...]:
        """(elbow, wrist) landmark pairs whose length a ruler test can check."""
        return FOREARM_SEGMENTS

    def sample_patient_surface(
        self, n: int, rng: np.random.Generator, *, min_normal_y: float = -1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(points_world_m (n, 3), normals_world (n, 3)): points uniformly distributed
        by area on the patient's triangles whose outward normal has a Y component of
        at least ``min_normal_y`` (0.3: the sides and top a camera above can see)."""
        key = ("patient_surface", min_normal_y)
        with _CACHE_LOCK:
            if key not in self._cache:
                self._cache[key] = self._patient_surface(min_normal_y)
        tris, normal, probability = self._cache[key]
        pick = rng.choice(len(tris), size=n, p=probability)
        a, b = rng.random((2, n))
        flip = a + b > 1
        a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
        corners = tris[pick]
        v = self.vertices_world_m
        points = (v[corners[:, 0]] * (1 - a - b)[:, None] + v[corners[:, 1]] * a[:, None]
                  + v[corners[:, 2]] * b[:, None])
        return points, normal[pick]

    def _patient_surface(self, min_normal_y: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient triangles facing at least ``min_normal_y`` up, their unit normals and
        their areas as probabilities."""
        v = self.vertices_world_m
        tris = self.triangles[self.patient_triangle_mask]
        cross = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
        area = np.linalg.norm(cross, axis=1)
        normal = cross / np.maximum(area, 1e-18)[:, None]
        keep = (normal[:, 1] >= min_normal_y) & (area > 0)
        return tris[keep], normal[keep], area[keep] / area[keep].sum()

    # --- appearance -----------------------------------------------------------

    def albedo_rgb(self, part_id: np.ndarray, points_world_m: np.ndarray) -> np.ndarray:
        """(N, 3) float32 surface colour in [0, 1] of each point on the given part."""
        material_of_part, materials = self._materials()
        return _albedo_rgb(material_of_part, materials, self.seed, part_id, points_world_m)

    def interpolated_normals(self, triangle_id: np.ndarray, uv: np.ndarray) -> np.ndarray:
        """(N, 3) float32 unit normals interpolated from the vertex normals at points
        given by triangle and barycentric (u, v) (open3d's primitive_uvs: the point is
        (1 - u - v) * corner0 + u * corner1 + v * corner2)."""
        corners = self._cache.get("corner_normals")
        if corners is None:  # idempotent, so a race only builds it twice
            n = self.vertex_normals_world[self.triangles]
            corners = np.concatenate([n[:, 0], n[:, 1] - n[:, 0], n[:, 2] - n[:, 0]], axis=1)
            self._cache["corner_normals"] = corners
        rows = np.take(corners, triangle_id, axis=0)
        normals = rows[:, 0:3] + rows[:, 3:6] * uv[:, 0:1] + rows[:, 6:9] * uv[:, 1:2]
        normals *= (1.0 / np.sqrt(np.einsum("ij,ij->i", normals, normals)))[:, None]
        return normals

    def _materials(self) -> tuple[np.ndarray, tuple[str, ...]]:
        if "materials" not in self._cache:  # idempotent, so a race only builds it twice
            self._cache["materials"] = _materials_of(self.part_names)
        return self._cache["materials"]

    # --- geometry queries -------------------------------------------------------

    def raycasting_scene(self) -> o3d.t.geometry.RaycastingScene:
        """An open3d RaycastingScene of the whole mesh, built once and reused. Its
        geometry 0 is this mesh, so hit primitive ids index ``triangles``."""
        with _CACHE_LOCK:
            if "raycasting" not in self._cache:
                raycasting = o3d.t.geometry.RaycastingScene()
                raycasting.add_triangles(
                    o3d.core.Tensor(self.vertices_world_m.astype(np.float32)),
                    o3d.core.Tensor(self.triangles.astype(np.uint32)),
                )
                self._cache["raycasting"] = raycasting
            return self._cache["raycasting"]

    def is_free_space(self, points_world_m: np.ndarray, clearance_m: float = 0.15) -> np.ndarray:
        """(N,) bool: is there room for a head (a ball of ``clearance_m``) at each point,
        inside the compartment and away from furniture, equipment and the patient?"""
        p = check_points(points_world_m, "points_world_m", 3)
        lo, hi = self.interior_bounds_world_m
        free = np.all((p > lo + clearance_m) & (p < hi - clearance_m), axis=1)
        boxes = self.obstacle_boxes_world_m
        in_box = np.all(
            (p[:, None, :] > boxes[None, :, 0] - clearance_m)
            & (p[:, None, :] < boxes[None, :, 1] + clearance_m),
            axis=2,
        ).any(axis=1)
        distance_m = self.raycasting_scene().compute_distance(
            o3d.core.Tensor(p.astype(np.float32))).numpy()
        return free & ~in_box & (distance_m >= clearance_m)

    # --- open3d meshes ------------------------------------------------------------

    def tensor_mesh(self) -> o3d.t.geometry.TriangleMesh:
        """The scene as an open3d tensor mesh with vertex colours and normals and a
        per-triangle "part" attribute."""
        mesh = o3d.t.geometry.TriangleMesh()
        mesh.vertex.positions = o3d.core.Tensor(self.vertices_world_m.astype(np.float32))
        mesh.vertex.colors = o3d.core.Tensor(np.ascontiguousarray(self.vertex_colors))
        mesh.vertex.normals = o3d.core.Tensor(np.ascontiguousarray(self.vertex_normals_world))
        mesh.triangle.indices = o3d.core.Tensor(np.ascontiguousarray(self.triangles))
        mesh.triangle.part = o3d.core.Tensor(self.triangle_part.astype(np.int32))
        return mesh

    def legacy_mesh(self) -> o3d.geometry.TriangleMesh:
        mesh = o3d.geometry.TriangleMesh(
            o3d.utility.Vector3dVector(self.vertices_world_m.copy()),
            o3d.utility.Vector3iVector(self.triangles.copy()),
        )
        mesh.vertex_colors = o3d.utility.Vector3dVector(self.vertex_colors.astype(np.float64))
        mesh.vertex_normals = o3d.utility.Vector3dVector(
            self.vertex_normals_world.astype(np.float64))
        return mesh


def _materials_of(part_names: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """(material index of each part, material names)."""
    materials = texture.MATERIALS
    return (
        np.array([materials.index(texture.MATERIAL_OF_PART[n]) for n in part_names], np.int8),
        materials,
    )


def _albedo_rgb(
    material_of_part: np.ndarray, materials: tuple[str, ...], seed: int,
    part_id: np.ndarray, points_world_m: np.ndarray,
) -> np.ndarray:
    part_id = np.asarray(part_id)
    points_world_m = np.ascontiguousarray(points_world_m)
    material = material_of_part[part_id]
    out = np.empty((len(part_id), 3), dtype=np.float32)
    # Rows are moved as 12-byte opaque items: np.take and np.put on those are
    # several times faster than fancy indexing of (N, 3) rows (measured here).
    out_rows = out.view(_ROW).reshape(-1)
    for index in np.flatnonzero(np.bincount(material, minlength=len(materials))):
        rows = np.flatnonzero(material == index)
        albedo = texture.albedo_rgb(materials[index], np.take(points_world_m, rows, axis=0), seed)
        np.put(out_rows, rows, np.ascontiguousarray(albedo).view(_ROW).reshape(-1))
    return out


# --- building ----------------------------------------------------------------------

_X, _Y, _Z = np.eye(3)


class _Builder:
    """Collects primitives as (part, mesh) and merges them into one labelled mesh."""

    def __init__(self) -> None:
        self.vertices: list[np.ndarray] = []
        self.triangles: list[np.ndarray] = []
        self.normals: list[np.ndarray] = []
        self.parts: list[np.ndarray] = []
        self.count = 0

    def add(self, part: str, mesh: _mesh.Mesh, normals: np.ndarray | None = None) -> None:
        vertices, triangles = mesh
        if normals is None:
            normals = _mesh.vertex_normals(vertices, triangles)
        self.vertices.append(vertices)
        self.triangles.append(triangles + self.count)
        self.normals.append(normals)
        self.parts.append(np.full(len(triangles), PART_NAMES.index(part), dtype=np.int16))
        self.count += len(vertices)

    def merged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        # Round to float32 once, so the float64 copy and open3d's float32 copy are the
        # same surface and landmarks computed in float64 lie on what rays hit.
        vertices = np.concatenate(self.vertices).astype(np.float32).astype(np.float64)
        return (
            vertices,
            np.concatenate(self.triangles).astype(np.int32),
            np.concatenate(self.normals).astype(np.float32),
            np.concatenate(self.parts),
        )


def _room(builder: _Builder) -> None:
    vertices, triangles = _mesh.inverted(_mesh.box(layout.INTERIOR_MIN_M, layout.INTERIOR_MAX_M))
    # box() emits two triangles per face, faces ordered -X, +X, -Y, +Y, -Z, +Z.
    face_parts = ("wall", "wall", "floor", "ceiling", "wall", "wall")
    for face, part in enumerate(face_parts):
        tris = triangles[2 * face: 2 * face + 2]
        quad = vertices[4 * face: 4 * face + 4]
        builder.add(part, (quad, tris - 4 * face))


def _furniture(builder: _Builder, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    boxes = []
    for part, lo, hi in layout.FURNITURE_BOXES_M:
        builder.add(part, _mesh.box(lo, hi))
        boxes.append((np.array(lo), np.array(hi)))
    # A little seed-dependent equipment: monitor on the counter, a bag on the bench,
    # a sharps box on the wall, an oxygen cylinder in the rear corner.
    x = rng.uniform(0.75, 1.25)
    equipment = [
        ((x, 0.95, -1.05), (x + 0.30, 0.95 + rng.uniform(0.2, 0.3), -0.82)),
        ((rng.uniform(-1.35, -0.5), 0.45, 0.68), None),
        ((rng.uniform(-0.8, 0.2), 1.12, -1.10), None),
    ]
    lo_bag = np.array(equipment[1][0])
    equipment[1] = (tuple(lo_bag), tuple(lo_bag + (0.45, rng.uniform(0.2, 0.3), 0.30)))
    lo_sharps = np.array(equipment[2][0])
    equipment[2] = (tuple(lo_sharps), tuple(lo_sharps + (0.22, 0.25, 0.12)))
    for lo, hi in equipment:
        builder.add("equipment", _mesh.box(lo, hi))
        boxes.append((np.array(lo), np.array(hi)))
    bottle = np.array([rng.uniform(-1.62, -1.55), 0.0, -0.92])
    radius = 0.09
    builder.add("equipment", _mesh.capsule(
        bottle + (0, radius, 0), bottle + (0, 0.95, 0), radius, radius, _X, n_around=24,
        cap_rings=4, spacing_m=0.1))
    boxes.append((bottle - (radius, 0, radius), bottle + (radius, 0.95 + radius, radius)))
    return boxes


def _patient(builder: _Builder) -> None:
    L = layout
    builder.add("head", _mesh.ellipsoid(L.HEAD_CENTER_M, _X, _Y, L.HEAD_HALF_AXES_M, 72, 54))
    builder.add("head", _mesh.ellipsoid(L.NOSE_CENTER_M, _X, _Y, L.NOSE_HALF_AXES_M, 24, 16))
    for side in (1.0, -1.0):
        ear = L.HEAD_CENTER_M + (-0.005, -0.005, side * 0.077)
        builder.add("head", _mesh.ellipsoid(ear, _X, _Y, (0.03, 0.018, 0.012), 20, 12))
    builder.add("neck", _mesh.capsule(L.NECK_START_M, L.NECK_END_M, 0.055, 0.052, _Y, 48))
    builder.add("torso", _mesh.loft(
        (0.0, L.TORSO_AXIS_Y_M, 0.0), _X, _Y, L.TORSO_STATIONS_X_M,
        L.TORSO_HALF_THICKNESS_M, L.TORSO_HALF_WIDTH_M, cap_start_m=0.05, cap_end_m=0.06,
        n_around=96, spacing_m=0.01, exponent=2.6,
    ))
    for side, mirror in (("left", lambda p: np.asarray(p, float)), ("right", L.mirror_z)):
        shoulder, elbow, wrist = (mirror(L.LEFT_SHOULDER_JOINT_M), mirror(L.LEFT_ELBOW_JOINT_M),
                                  mirror(L.LEFT_WRIST_JOINT_M))
        hip, knee, ankle = (mirror(L.LEFT_HIP_JOINT_M), mirror(L.LEFT_KNEE_JOINT_M),
                            mirror(L.LEFT_ANKLE_JOINT_M))
        limb = {"n_around": 48, "cap_rings": 8, "spacing_m": 0.008}
        for part, start, end, radii in (
            ("upper_arm", shoulder, elbow, L.UPPER_ARM_RADII_M),
            ("forearm", elbow, wrist, L.FOREARM_RADII_M),
            ("thigh", hip, knee, L.THIGH_RADII_M),
            ("lower_leg", knee, ankle, L.LOWER_LEG_RADII_M),
        ):
            builder.add(f"{side}_{part}", _mesh.capsule(start, end, *radii, _Y, **limb))
        builder.add(f"{side}_hand", _mesh.ellipsoid(
            _hand_center(wrist, elbow), _forearm_axis(elbow, wrist), _Y, (0.085, 0.02, 0.045),
            48, 32))
        foot_axis = mirror(np.array([-0.12, 1.0, 0.12]))
        builder.add(f"{side}_foot", _mesh.ellipsoid(
            _foot_center(ankle), foot_axis, _X, (0.115, 0.045, 0.05), 48, 32))


def _forearm_axis(elbow: np.ndarray, wrist: np.ndarray) -> np.ndarray:
    axis = wrist - elbow
    return axis / np.linalg.norm(axis)


def _hand_center(wrist: np.ndarray, elbow: np.ndarray) -> np.ndarray:
    axis = _forearm_axis(elbow, wrist)
    center = wrist + 0.092 * axis
    center[1] = layout.MATTRESS_TOP_Y_M + 0.022
    return center


def _foot_center(ankle: np.ndarray) -> np.ndarray:
    return np.array([ankle[0] - 0.015, layout.MATTRESS_TOP_Y_M + 0.115, ankle[2] * 1.04])


def _landmark_rays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each landmark is where a ray hits the patient: straight down (-Y) onto the upper
    side of the body, or sideways onto the temples."""
    L = layout
    rays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def down(name: str, point: np.ndarray) -> None:
        rays[name] = (np.array([point[0], 1.4, point[2]]), -_Y)

    head = L.HEAD_CENTER_M
    down("forehead", head + (0.075, 0, 0))
    down("nose_tip", L.NOSE_CENTER_M)
    temple_y = head[1] + 0.03
    rays["left_temple"] = (np.array([head[0] + 0.05, temple_y, 0.6]), -_Z)
    rays["right_temple"] = (np.array([head[0] + 0.05, temple_y, -0.6]), _Z)
    down("sternum", np.array([0.45, 0, 0]))
    down("umbilicus", np.array([0.20, 0, 0]))
    for side, mirror in (("left", lambda p: np.asarray(p, float)), ("right", L.mirror_z)):
        elbow, wrist = mirror(L.LEFT_ELBOW_JOINT_M), mirror(L.LEFT_WRIST_JOINT_M)
        down(f"{side}_shoulder", mirror(L.LEFT_SHOULDER_JOINT_M))
        down(f"{side}_elbow", elbow)
        down(f"{side}_wrist", wrist)
        down(f"{side}_hand", _hand_center(wrist, elbow))
        down(f"{side}_knee", mirror(L.LEFT_KNEE_JOINT_M))
        ankle = mirror(L.LEFT_ANKLE_JOINT_M)
        foot_axis = mirror(np.array([-0.12, 1.0, 0.12]))
        toe = _foot_center(ankle) + 0.09 * foot_axis / np.linalg.norm(foot_axis)
        down(f"{side}_toe", toe)
    return rays


def _find_landmarks(
    vertices: np.ndarray, triangles: np.ndarray, normals: np.ndarray, triangle_part: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Cast each landmark's ray at the patient alone (so furniture, which varies with
    the seed, cannot change the result), then intersect it with the hit triangle again
    in float64, so the landmark lies on that triangle to float64 precision."""
    patient_ids = [PART_NAMES.index(name) for name in PATIENT_PARTS]
    patient_triangles = np.flatnonzero(np.isin(triangle_part, patient_ids))
    raycasting = o3d.t.geometry.RaycastingScene()
    raycasting.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)),
                             o3d.core.Tensor(triangles[patient_triangles].astype(np.uint32)))
    rays = _landmark_rays()
    names = list(rays)
    ray_array = np.array([np.concatenate(rays[n]) for n in names])
    hits = raycasting.cast_rays(o3d.core.Tensor(ray_array.astype(np.float32)))
    missed = [name for name, t in zip(names, hits["t_hit"].numpy()) if not np.isfinite(t)]
    if missed:
        raise RuntimeError(f"landmark rays missed the patient: {missed}")
    primitive = patient_triangles[hits["primitive_ids"].numpy().astype(np.int64)]
    landmarks, landmark_normals = {}, {}
    for i, name in enumerate(names):
        part = PART_NAMES[triangle_part[primitive[i]]]
        if part != LANDMARK_PARTS[name]:
            raise RuntimeError(f"landmark {name} landed on {part}, not {LANDMARK_PARTS[name]}")
        corners = triangles[primitive[i]]
        weights = _barycentric_hit(ray_array[i, :3], ray_array[i, 3:], vertices[corners])
        landmarks[name] = weights @ vertices[corners]
        normal = weights @ normals[corners].astype(np.float64)
        landmark_normals[name] = normal / np.linalg.norm(normal)
    return landmarks, landmark_normals


def _barycentric_hit(origin: np.ndarray, direction: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Barycentric weights of where a ray crosses a triangle's plane (Moller-Trumbore,
    float64), clipped onto the triangle against rounding at an edge."""
    v0, v1, v2 = corners
    e1, e2 = v1 - v0, v2 - v0
    p = np.cross(direction, e2)
    det = e1 @ p
    s = origin - v0
    u = (s @ p) / det
    v = (direction @ np.cross(s, e1)) / det
    weights = np.clip(np.array([1.0 - u - v, u, v]), 0.0, 1.0)
    return weights / weights.sum()


def ambulance_scene(seed: int = 0) -> SyntheticScene:
    """Build the ambulance with its patient. The geometry of the room, the stretcher
    and the patient is the same for every seed (see layout.py); the seed picks the
    colours (skin tone, clothes, labels), the texture noise and where a few pieces
    of equipment stand."""
    rng = np.random.default_rng([seed, 0xA3B])
    builder = _Builder()
    _room(builder)
    obstacles = _furniture(builder, rng)
    _patient(builder)
    vertices, triangles, normals, triangle_part = builder.merged()

    landmarks, landmark_normals = _find_landmarks(vertices, triangles, normals, triangle_part)

    vertex_part = np.empty(len(vertices), dtype=np.int16)
    vertex_part[triangles.ravel()] = np.repeat(triangle_part, 3)
    patient_ids = [PART_NAMES.index(n) for n in PATIENT_PARTS]
    patient_vertices = vertices[np.isin(vertex_part, patient_ids)]
    center = 0.5 * (patient_vertices.min(axis=0) + patient_vertices.max(axis=0))

    for array in (vertices, triangles, normals, triangle_part, center):
        array.setflags(write=False)
    for point in (*landmarks.values(), *landmark_normals.values()):
        point.setflags(write=False)
    obstacle_boxes = np.array([[lo, hi] for lo, hi in obstacles], dtype=np.float64)
    obstacle_boxes.setflags(write=False)
    bounds = np.array([layout.INTERIOR_MIN_M, layout.INTERIOR_MAX_M])
    bounds.setflags(write=False)

    material_of_part, materials = _materials_of(PART_NAMES)
    colors = _albedo_rgb(material_of_part, materials, seed, vertex_part, vertices)
    colors.setflags(write=False)
    return SyntheticScene(
        vertices_world_m=vertices,
        triangles=triangles,
        vertex_colors=colors,
        vertex_normals_world=normals,
        triangle_part=triangle_part,
        part_names=PART_NAMES,
        landmarks_world_m=MappingProxyType(landmarks),
        landmark_normals_world=MappingProxyType(landmark_normals),
        landmark_parts=LANDMARK_PARTS,
        patient_center_world_m=center,
        interior_bounds_world_m=bounds,
        obstacle_boxes_world_m=obstacle_boxes,
        seed=int(seed),
    )
