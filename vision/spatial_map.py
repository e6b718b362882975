"""The spatial map: a triangle mesh of the scene in world coordinates, and ray casting on it.

A headset sends its map as mesh blocks that appear, change and disappear as the
wearer moves. Building open3d's ray-casting BVH holds the GIL for about 1 ms
per 1,000 triangles (measured: ~190 ms for 160k), so rebuilding the whole map
on every block update would stall every caller. The map is therefore kept in
two tiers:

* a *base* scene holding every block as of the last compaction, and
* an *overlay* scene holding only the blocks added or changed since then.

An update rebuilds only the overlay (cost ∝ the changed triangles). A ray that
hits a base triangle belonging to a block that has since changed or gone is
cast again from just beyond that hit, so stale geometry is never reported.
`compact()` folds the overlay into a new base; callers choose when (the map
does it by itself once the overlay holds `compact_after_triangles`).

Readers take a `MapSnapshot`, an immutable view that a concurrent update never
changes under them; publishing a new snapshot is one reference assignment.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import open3d as o3d

from vision.camera import Intrinsics, check_pose, invert_pose

#: How far past a stale hit a ray is restarted, metres.
_RESTART_EPSILON_M = 1e-5
#: A ray crossing more stale surfaces than this is reported as a miss.
_MAX_STALE_RESTARTS = 8


@dataclass(frozen=True)
class MeshBlock:
    """One piece of the map, as a headset sends it."""

    block_id: str
    vertices_world_m: np.ndarray  # (V, 3) float64
    triangles: np.ndarray  # (F, 3) int32

    @staticmethod
    def checked(block_id: str, vertices_world_m: object, triangles: object) -> MeshBlock:
        if not isinstance(block_id, str) or not block_id:
            raise ValueError("block_id must be a non-empty string")
        try:
            vertices = np.asarray(vertices_world_m, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"vertices_world_m must be numbers: {exc}") from None
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise ValueError(f"vertices_world_m must have shape (V, 3), got {vertices.shape}")
        if not np.all(np.isfinite(vertices)):
            raise ValueError("vertices_world_m contains NaN or infinity")
        try:
            tris = np.asarray(triangles)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"triangles must be integers: {exc}") from None
        if tris.ndim != 2 or tris.shape[1] != 3:
            raise ValueError(f"triangles must have shape (F, 3), got {tris.shape}")
        if tris.size and not np.issubdtype(tris.dtype, np.integer):
            raise ValueError(f"triangles must be integers, got {tris.dtype}")
        if tris.size and (tris.min() < 0 or tris.max() >= len(vertices)):
            raise ValueError(
                f"triangles index vertices 0..{len(vertices) - 1}, got {tris.min()}..{tris.max()}"
            )
        return MeshBlock(block_id, vertices, tris.astype(np.int32, copy=False))


@dataclass(frozen=True)
class RayHits:
    """What a batch of rays hit. Arrays are (N,) or (N, 3); misses have hit=False,
    t_m=inf and a zero normal."""

    hit: np.ndarray  # bool
    t_m: np.ndarray  # distance along the (unit) ray
    normal_world: np.ndarray  # unit geometric normal, facing the ray's origin


class _Tier:
    """One open3d RaycastingScene over a set of blocks, with each triangle's block index."""

    def __init__(self, blocks: list[MeshBlock]) -> None:
        self.block_ids: tuple[str, ...] = tuple(b.block_id for b in blocks)
        self.triangle_count = sum(len(b.triangles) for b in blocks)
        self.scene: o3d.t.geometry.RaycastingScene | None = None
        self.triangle_block = np.zeros(0, dtype=np.int32)
        if self.triangle_count == 0:
            return
        offsets = np.cumsum([0] + [len(b.vertices_world_m) for b in blocks[:-1]])
        vertices = np.concatenate([b.vertices_world_m for b in blocks]).astype(np.float32)
        triangles = np.concatenate(
            [b.triangles + off for b, off in zip(blocks, offsets)]
        ).astype(np.uint32)
        self.triangle_block = np.repeat(
            np.arange(len(blocks), dtype=np.int32), [len(b.triangles) for b in blocks]
        )
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(vertices), o3d.core.Tensor(triangles))
        # open3d builds the BVH lazily on the first query; pay for it here, in
        # whoever builds the tier, not in the first reader.
        scene.cast_rays(o3d.core.Tensor(np.array([[0, 0, 0, 0, 0, 1]], dtype=np.float32)))
        self.scene = scene

    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t_m, normal, triangle_block) per ray; t_m is inf and block -1 on a miss."""
        n = len(dirs)
        if self.scene is None:
            return np.full(n, np.inf), np.zeros((n, 3)), np.full(n, -1, dtype=np.int32)
        rays = np.concatenate([origins, dirs], axis=1).astype(np.float32)
        result = self.scene.cast_rays(o3d.core.Tensor(rays))
        t = result["t_hit"].numpy().astype(np.float64)
        normals = result["primitive_normals"].numpy().astype(np.float64)
        prim = result["primitive_ids"].numpy()
        hit = np.isfinite(t)
        block = np.full(n, -1, dtype=np.int32)
        block[hit] = self.triangle_block[prim[hit].astype(np.int64)]
        return t, normals, block


@dataclass(frozen=True)
class MapSnapshot:
    """The map as it was at one moment: cast rays against it from any thread."""

    version: int
    _base: _Tier
    _base_live: np.ndarray  # bool per base block: not changed or removed since
    _overlay: _Tier
    blocks: dict[str, MeshBlock] = field(repr=False)

    @property
    def triangle_count(self) -> int:
        return sum(len(b.triangles) for b in self.blocks.values())

    @property
    def is_empty(self) -> bool:
        return self.triangle_count == 0

    def _stale(self, block: np.ndarray) -> np.ndarray:
        stale = np.zeros(len(block), dtype=bool)
        hit = block >= 0
        stale[hit] = ~self._base_live[block[hit]]
        return stale

    def cast(self, origins_world_m: np.ndarray, dirs_world: np.ndarray) -> RayHits:
        """Cast rays (origins (N, 3) or (3,), unit directions (N, 3)) against the map."""
        dirs = np.asarray(dirs_world, dtype=np.float64)
        origins = np.broadcast_to(np.asarray(origins_world_m, dtype=np.float64), dirs.shape)
        t, normal, block = self._base.cast(origins, dirs)
        stale = self._stale(block)
        travelled = np.zeros(len(dirs))
        for _ in range(_MAX_STALE_RESTARTS):
            if not stale.any():
                break
            idx = np.flatnonzero(stale)
            travelled[idx] += t[idx] + _RESTART_EPSILON_M
            restart = origins[idx] + dirs[idx] * travelled[idx, None]
            t2, n2, b2 = self._base.cast(restart, dirs[idx])
            t[idx], normal[idx], block[idx] = t2, n2, b2
            stale[:] = False
            stale[idx] = self._stale(b2)
        t = t + travelled
        t[stale] = np.inf  # gave up: too many stale layers
        t_overlay, normal_overlay, _ = self._overlay.cast(origins, dirs)
        nearer = t_overlay < t
        t = np.where(nearer, t_overlay, t)
        normal = np.where(nearer[:, None], normal_overlay, normal)
        hit = np.isfinite(t)
        normal[~hit] = 0.0
        # Face the normal towards the viewer: a mesh's winding is not ours to trust.
        facing_away = np.einsum("ij,ij->i", normal, dirs) > 0
        normal[facing_away] *= -1.0
        return RayHits(hit=hit, t_m=t, normal_world=normal)


    def spans_blocked(self, origin_world_m: np.ndarray, spans_m: np.ndarray) -> np.ndarray:
        """Per segment from `origin` to `origin + span` (spans (N, 3)): does the map cross it?

        Any-hit queries stop at the first surface found, about 3x cheaper than
        `cast` for occlusion tests; with stale base blocks (changed since the last
        compaction) it falls back to `cast`.
        """
        origin = np.asarray(origin_world_m, dtype=np.float64)
        spans = np.asarray(spans_m)
        if not self._base_live.all():
            length = np.linalg.norm(spans, axis=1)
            hits = self.cast(origin, spans / np.maximum(length, 1e-12)[:, None])
            return hits.hit & (hits.t_m < length)
        rays = np.empty((len(spans), 6), dtype=np.float32)
        rays[:, :3] = origin
        rays[:, 3:] = spans
        rays = o3d.core.Tensor(rays)
        blocked = np.zeros(len(spans), dtype=bool)
        for tier in (self._base, self._overlay):
            if tier.scene is not None:
                blocked |= tier.scene.test_occlusions(rays, tnear=0.0, tfar=1.0).numpy()
        return blocked


class SpatialMap:
    """The scene's mesh in world coordinates, updated block by block or replaced whole."""

    def __init__(self, *, compact_after_triangles: int = 20_000) -> None:
        self._compact_after = compact_after_triangles
        self._lock = threading.Lock()
        self._blocks: dict[str, MeshBlock] = {}
        self._base = _Tier([])
        self._base_index: dict[str, int] = {}
        self._changed: set[str] = set()  # block ids changed or removed since the base
        self._overlay = _Tier([])
        self._version = 0
        self._snapshot = self._publish()

    def snapshot(self) -> MapSnapshot:
        """The current map. Never waits for a rebuild in progress."""
        return self._snapshot

    def set_block(self, block_id: str, vertices_world_m: object, triangles: object) -> None:
        """Add or replace one block; rebuilds only the blocks changed since the last compaction."""
        block = MeshBlock.checked(block_id, vertices_world_m, triangles)
        with self._lock:
            self._blocks[block_id] = block
            self._changed.add(block_id)
            self._rebuild_overlay()

    def remove_block(self, block_id: str) -> None:
        with self._lock:
            if self._blocks.pop(block_id, None) is None:
                raise KeyError(f"no mesh block {block_id!r} in the map")
            self._changed.add(block_id)
            self._rebuild_overlay()

    def replace(self, vertices_world_m: object, triangles: object, block_id: str = "mesh") -> None:
        """Replace the whole map by one mesh (e.g. a TSDF extraction)."""
        block = MeshBlock.checked(block_id, vertices_world_m, triangles)
        with self._lock:
            self._blocks = {block_id: block}
            self._compact_locked()

    def compact(self) -> None:
        """Fold every change into a new base (cost ∝ the whole map; holds the GIL)."""
        with self._lock:
            self._compact_locked()

    @property
    def overlay_triangle_count(self) -> int:
        return self._overlay.triangle_count

    def _rebuild_overlay(self) -> None:
        changed = [self._blocks[b] for b in sorted(self._changed) if b in self._blocks]
        if sum(len(b.triangles) for b in changed) > self._compact_after:
            self._compact_locked()
            return
        self._overlay = _Tier(changed)
        self._snapshot = self._publish()

    def _compact_locked(self) -> None:
        blocks = list(self._blocks.values())
        self._base = _Tier(blocks)
        self._base_index = {b.block_id: i for i, b in enumerate(blocks)}
        self._changed = set()
        self._overlay = _Tier([])
        self._snapshot = self._publish()

    def _publish(self) -> MapSnapshot:
        self._version += 1
        live = np.ones(len(self._base.block_ids), dtype=bool)
        for block_id in self._changed:
            index = self._base_index.get(block_id)
            if index is not None:
                live[index] = False
        return MapSnapshot(self._version, self._base, live, self._overlay, dict(self._blocks))


class TsdfMapper:
    """Builds a map from depth frames with known poses, for devices that send no mesh.

    Wraps open3d's VoxelBlockGrid (open3d-cpu 0.20's legacy ScalableTSDFVolume
    extracts an empty mesh from float depth here). Depth must be undistorted
    (pinhole): integration projects voxels with the pinhole model only.
    """

    def __init__(
        self,
        voxel_length_m: float = 0.005,
        # Truncation must exceed the depth noise: at 1% of 1.5 m, 4 voxels (16 mm)
        # clipped it and biased the surface (p95 anchoring error 10 mm vs 8.4 mm).
        sdf_trunc_voxels: float = 8.0,
        max_depth_m: float = 3.0,
        block_count: int = 40_000,
    ) -> None:
        if not voxel_length_m > 0 or not sdf_trunc_voxels >= 1:
            raise ValueError("voxel_length_m must be positive and sdf_trunc_voxels at least 1")
        self._grid = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight"),
            attr_dtypes=(o3d.core.float32, o3d.core.float32),
            attr_channels=((1), (1)),
            voxel_size=voxel_length_m,
            block_resolution=16,
            block_count=block_count,
        )
        self._trunc_voxels = sdf_trunc_voxels
        self._max_depth_m = max_depth_m
        self.frames = 0

    def integrate(self, depth_m: np.ndarray, T_world_camera: object, intrinsics: Intrinsics) -> None:
        T = check_pose(T_world_camera)
        depth = np.asarray(depth_m, dtype=np.float32)
        if depth.shape != (intrinsics.height, intrinsics.width):
            raise ValueError(
                f"depth_m must have shape ({intrinsics.height}, {intrinsics.width}), got {depth.shape}"
            )
        if intrinsics.has_distortion:
            raise ValueError("intrinsics.distortion: undistort depth before TSDF integration")
        depth = np.ascontiguousarray(np.where(np.isfinite(depth) & (depth > 0), depth, 0.0), dtype=np.float32)
        image = o3d.t.geometry.Image(o3d.core.Tensor(depth))
        K = o3d.core.Tensor(intrinsics.K, o3d.core.float64)
        T_camera_world = o3d.core.Tensor(invert_pose(T), o3d.core.float64)
        blocks = self._grid.compute_unique_block_coordinates(
            image, K, T_camera_world, 1.0, self._max_depth_m, self._trunc_voxels
        )
        self._grid.integrate(blocks, image, K, T_camera_world, 1.0, self._max_depth_m, self._trunc_voxels)
        self.frames += 1

    def extract_mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """(vertices_world_m, triangles) of the zero level set, from voxels seen by
        at least min(3, frames) frames."""
        if self.frames == 0:
            return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int32)
        try:
            mesh = self._grid.extract_triangle_mesh(weight_threshold=float(min(3, self.frames)))
        except RuntimeError:  # open3d raises on an empty extraction
            return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int32)
        return (
            mesh.vertex.positions.numpy().astype(np.float64),
            mesh.triangle.indices.numpy().astype(np.int32),
        )


def split_into_blocks(
    vertices_world_m: np.ndarray, triangles: np.ndarray, per_block: int = 1000
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Cut a mesh into spatially coherent blocks of about `per_block` triangles, as a
    headset's spatial-mapping surfaces are: [(block_id, vertices_world_m, triangles)]."""
    centers = vertices_world_m[triangles].mean(axis=1)
    order = np.lexsort((centers[:, 2], centers[:, 0]))
    blocks = []
    for n, start in enumerate(range(0, len(order), per_block)):
        tri = triangles[order[start : start + per_block]]
        used, inverse = np.unique(tri, return_inverse=True)
        blocks.append((f"block-{n}", vertices_world_m[used], inverse.reshape(-1, 3).astype(np.int32)))
    return blocks
