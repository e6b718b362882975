"""vision/ conventions, spatial map and bad input, on simple meshes with known answers."""

from __future__ import annotations

import math

import cv2
import numpy as np
import open3d as o3d
import pytest

from vision.anchoring import Anchoring, Shape, anchor_shape, ellipse_outline, EXACT_MAP
from vision.camera import (
    Intrinsics,
    check_pose,
    invert_pose,
    look_at,
    norm_from_px,
    project,
    px_from_norm,
    unity_from_world_points,
    unity_from_world_transform,
    unity_quaternion_from_world_rotation,
    world_from_unity_points,
    world_from_unity_transform,
    world_rays,
)
from vision import measure
from vision.reprojection import reproject
from vision.spatial_map import SpatialMap, TsdfMapper

CAMERA = Intrinsics.from_fov(1280, 720, 64.7)


def box_mesh(center, size):
    mesh = o3d.geometry.TriangleMesh.create_box(*size)
    mesh.translate(np.asarray(center, dtype=float) - np.asarray(size) / 2)
    return np.asarray(mesh.vertices), np.asarray(mesh.triangles)


def random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


# --- conventions --------------------------------------------------------------


def test_projection_matches_opencv_with_distortion():
    rng = np.random.default_rng(1)
    intrinsics = Intrinsics(1280, 720, 1000.0, 1002.0, 641.2, 358.9, (0.08, -0.04, 0.001, -0.002, 0.01))
    T = look_at([0.3, 1.2, 0.8], [0, 0.5, 0])
    points = rng.uniform([-0.3, 0.3, -0.3], [0.3, 0.7, 0.3], (500, 3))
    uv_px, depth_m = project(points, T, intrinsics)
    T_cw = invert_pose(T)
    rvec, _ = cv2.Rodrigues(T_cw[:3, :3])
    expected, _ = cv2.projectPoints(points, rvec, T_cw[:3, 3], intrinsics.K, np.array(intrinsics.distortion))
    assert np.max(np.abs(expected[:, 0] - uv_px)) < 1e-6
    assert np.all(depth_m > 0)


def test_rays_through_projected_pixels_pass_through_the_points():
    rng = np.random.default_rng(2)
    intrinsics = Intrinsics(1280, 720, 1000.0, 1000.0, 640.0, 360.0, (0.1, -0.05, 0.0, 0.001))
    T = look_at([0, 1.5, 1.0], [0, 0.5, 0])
    points = rng.uniform([-0.2, 0.3, -0.2], [0.2, 0.7, 0.2], (200, 3))
    uv_px, _ = project(points, T, intrinsics)
    origin, dirs = world_rays(norm_from_px(uv_px, intrinsics), T, intrinsics)
    along = np.einsum("ij,ij->i", points - origin, dirs)
    closest = origin + dirs * along[:, None]
    assert np.max(np.linalg.norm(closest - points, axis=1)) < 1e-7


def test_normalised_coordinates_span_the_image_edges():
    corners = px_from_norm(np.array([[0.0, 0.0], [1.0, 1.0]]), CAMERA)
    assert np.allclose(corners, [[-0.5, -0.5], [1279.5, 719.5]])
    assert np.allclose(norm_from_px(np.array([[639.5, 359.5]]), CAMERA), [[0.5, 0.5]])


def test_look_at_sees_world_up_as_image_up():
    T = look_at([0, 0, 2], [0, 0, 0])
    uv_px, _ = project(np.array([[0, 0.1, 0], [0, -0.1, 0], [0.1, 0, 0]]), T, CAMERA)
    assert uv_px[0, 1] < uv_px[1, 1]  # +Y world is higher in the image (smaller v)
    assert uv_px[2, 0] > CAMERA.cx  # +X world is to the right when looking down -Z


def test_unity_conversions_round_trip_and_flip_handedness():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(10, 3))
    unity = unity_from_world_points(points)
    assert np.allclose(unity[:, :2], points[:, :2]) and np.allclose(unity[:, 2], -points[:, 2])
    assert np.allclose(world_from_unity_points(unity), points)
    T = np.eye(4)
    T[:3, :3] = random_rotation(rng)
    T[:3, 3] = rng.normal(size=3)
    T_unity = unity_from_world_transform(T)
    # The same physical motion: transforming then converting equals converting then transforming.
    moved_world = points @ T[:3, :3].T + T[:3, 3]
    moved_unity = unity @ T_unity[:3, :3].T + T_unity[:3, 3]
    assert np.allclose(unity_from_world_points(moved_world), moved_unity)
    assert np.isclose(np.linalg.det(T_unity[:3, :3]), 1.0)
    assert np.allclose(world_from_unity_transform(T_unity), T)


def test_unity_quaternion_rotates_like_the_matrix():
    rng = np.random.default_rng(4)
    for _ in range(20):
        R = random_rotation(rng)
        x, y, z, w = unity_quaternion_from_world_rotation(R)
        # Rotate a Unity-frame vector by the quaternion and compare with S R S.
        v = rng.normal(size=3)
        qv = np.array([x, y, z])
        rotated = v + 2 * w * np.cross(qv, v) + 2 * np.cross(qv, np.cross(qv, v))
        S = np.diag([1.0, 1.0, -1.0])
        assert np.allclose(rotated, S @ R @ S @ v)


# --- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "pose, field",
    [
        (np.full((4, 4), np.nan), "NaN"),
        (np.diag([2.0, 1.0, 1.0, 1.0]), "rigid"),
        (np.diag([1.0, 1.0, -1.0, 1.0]), "rigid"),
        (np.eye(3), "4x4"),
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], "last row"),
    ],
)
def test_non_rigid_or_malformed_pose_is_refused_by_name(pose, field):
    with pytest.raises(ValueError, match="T_world_camera") as info:
        check_pose(pose)
    assert field in str(info.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(fx=0.0), "fx"),
        (dict(fy=-3.0), "fy"),
        (dict(cx=math.nan), "cx"),
        (dict(width=0), "width"),
        (dict(distortion=(0.1, 0.2, 0.3)), "distortion"),
        (dict(distortion=(0.1, math.inf, 0.0, 0.0)), "distortion"),
    ],
)
def test_degenerate_intrinsics_are_refused_by_name(kwargs, field):
    args = dict(width=1280, height=720, fx=1000.0, fy=1000.0, cx=640.0, cy=360.0) | kwargs
    with pytest.raises(ValueError, match=f"intrinsics.{field}"):
        Intrinsics(**args)


@pytest.mark.parametrize(
    "kind, uv, message",
    [
        ("stroke", [[0.1, 0.1], [math.nan, 0.2]], r"uv_norm\[1\] contains NaN"),
        ("stroke", [[0.1, math.inf]], "NaN or infinity"),
        ("stroke", np.zeros((0, 2)), "uv_norm is empty"),
        ("point", [[0.1, 0.1], [0.2, 0.2]], "exactly one point"),
        ("ruler", [[0.1, 0.1]], "at least two points"),
        ("polygon", [[0.1, 0.1], [0.2, 0.2]], "at least three"),
        ("stroke", [[0.1, 3.0]], "in the frame"),
        ("scribble", [[0.1, 0.1]], "kind must be one of"),
        ("stroke", "not numbers", "uv_norm"),
    ],
)
def test_bad_shapes_are_refused_by_name(kind, uv, message):
    with pytest.raises(ValueError, match=message):
        Shape.checked(kind, uv)


def test_bad_mesh_blocks_are_refused_and_the_map_is_unchanged():
    spatial_map = SpatialMap()
    vertices, triangles = box_mesh([0, 0, 1], [0.2, 0.2, 0.2])
    spatial_map.set_block("a", vertices, triangles)
    before = spatial_map.snapshot()
    with pytest.raises(ValueError, match="vertices_world_m contains NaN"):
        spatial_map.set_block("b", np.full((3, 3), np.nan), [[0, 1, 2]])
    with pytest.raises(ValueError, match="triangles index vertices"):
        spatial_map.set_block("b", vertices, [[0, 1, 99]])
    with pytest.raises(ValueError, match="triangles must have shape"):
        spatial_map.set_block("b", vertices, [0, 1, 2])
    with pytest.raises(KeyError, match="no mesh block 'zzz'"):
        spatial_map.remove_block("zzz")
    assert spatial_map.snapshot() is before


# --- spatial map ----------------------------------------------------------------


def test_block_update_replaces_removes_and_never_reports_stale_geometry():
    spatial_map = SpatialMap()
    spatial_map.set_block("near", *box_mesh([0, 0, 1.0], [0.2, 0.2, 0.2]))
    spatial_map.set_block("far", *box_mesh([0, 0, 2.0], [0.2, 0.2, 0.2]))
    spatial_map.compact()
    ray = np.array([[0.0, 0.0, 1.0]])
    assert spatial_map.snapshot().cast(np.zeros(3), ray).t_m[0] == pytest.approx(0.9, abs=1e-5)
    old = spatial_map.snapshot()

    spatial_map.set_block("near", *box_mesh([0, 0, 1.5], [0.2, 0.2, 0.2]))  # moved
    assert spatial_map.overlay_triangle_count == 12
    assert spatial_map.snapshot().cast(np.zeros(3), ray).t_m[0] == pytest.approx(1.4, abs=1e-5)
    spatial_map.remove_block("near")
    assert spatial_map.snapshot().cast(np.zeros(3), ray).t_m[0] == pytest.approx(1.9, abs=1e-5)
    spatial_map.remove_block("far")
    assert not spatial_map.snapshot().cast(np.zeros(3), ray).hit[0]
    # A reader holding an older snapshot still sees the map it took.
    assert old.cast(np.zeros(3), ray).t_m[0] == pytest.approx(0.9, abs=1e-5)


def test_tsdf_map_of_a_plane_from_noisy_depth_lies_within_millimetres():
    rng = np.random.default_rng(5)
    intrinsics = Intrinsics.from_fov(320, 240, 60.0)
    mapper = TsdfMapper(voxel_length_m=0.005)
    for _ in range(10):
        eye = np.array([0, 0.8, 0]) + rng.normal(0, 0.05, 3)
        T = look_at(eye, [0, 0, 0], up_world=(0, 0, -1))
        origin, dirs = world_rays(
            norm_from_px(np.stack(np.meshgrid(np.arange(320), np.arange(240)), -1).reshape(-1, 2), intrinsics),
            T,
            intrinsics,
        )
        t = -origin[1] / dirs[:, 1]  # the floor y = 0
        depth = (t * (dirs @ T[:3, 2])).reshape(240, 320)
        mapper.integrate(depth * (1 + rng.normal(0, 0.01, depth.shape)), T, intrinsics)
    vertices, triangles = mapper.extract_mesh()
    assert len(triangles) > 1000
    central = np.linalg.norm(vertices[:, [0, 2]], axis=1) < 0.2
    assert np.median(np.abs(vertices[central, 1])) < 0.003


# --- anchoring on a sphere (exact answers) ---------------------------------------------


@pytest.fixture(scope="module")
def sphere_on_floor():
    sphere = o3d.geometry.TriangleMesh.create_sphere(0.2, resolution=200)
    sphere.translate([0, 0.5, 0])
    spatial_map = SpatialMap()
    spatial_map.set_block("sphere", np.asarray(sphere.vertices), np.asarray(sphere.triangles))
    spatial_map.set_block("floor", *box_mesh([0, -0.005, 0], [2.0, 0.01, 2.0]))
    spatial_map.compact()
    return spatial_map.snapshot()


def test_stroke_is_resampled_to_millimetre_spacing_on_the_surface(sphere_on_floor):
    T = look_at([0, 1.1, 0.6], [0, 0.5, 0])
    shape = Shape.checked("stroke", [[0.45, 0.4], [0.55, 0.5], [0.5, 0.6]])
    anchored = anchor_shape(shape, T, CAMERA, sphere_on_floor)
    assert anchored.all_hit
    gaps_m = np.linalg.norm(np.diff(anchored.points_world_m, axis=0), axis=1)
    assert gaps_m.max() <= 0.003 + 1e-9
    radius_m = np.linalg.norm(anchored.points_world_m - [0, 0.5, 0], axis=1)
    assert np.allclose(radius_m, 0.2, atol=2e-4)  # on the (tessellated) sphere
    outward = (anchored.points_world_m - [0, 0.5, 0]) / radius_m[:, None]
    assert np.min(np.einsum("ij,ij->i", outward, anchored.normals_world)) > 0.99


def test_stroke_off_the_map_falls_back_to_a_fitted_plane_and_says_so():
    spatial_map = SpatialMap()
    spatial_map.set_block("table", *box_mesh([0, -0.005, 0], [0.4, 0.01, 0.4]))  # a small square
    T = look_at([0, 1.0, 0.01], [0, 0, 0])
    shape = Shape.checked("stroke", [[0.5, 0.5], [0.98, 0.5]])  # runs off the table's edge
    anchored = anchor_shape(shape, T, CAMERA, spatial_map.snapshot())
    how = anchored.anchoring
    assert how[0] == Anchoring.HIT and how[-1] == Anchoring.PLANE
    assert set(np.unique(how)) == {Anchoring.HIT, Anchoring.PLANE}
    # The fitted plane continues the table top (y = 0) beyond its edge.
    assert np.max(np.abs(anchored.points_world_m[how == Anchoring.PLANE, 1])) < 1e-4
    assert np.all(anchored.sigma_m[how == Anchoring.PLANE] > anchored.sigma_m[how == Anchoring.HIT].max())


def test_shape_with_no_hit_at_all_goes_to_the_default_depth():
    spatial_map = SpatialMap()
    T = look_at([0, 1.0, 0.01], [0, 0, 0])
    anchored = anchor_shape(Shape.checked("arrow", [[0.2, 0.2], [0.3, 0.3]]), T, CAMERA, spatial_map.snapshot())
    assert np.all(anchored.anchoring == Anchoring.DEPTH)
    depth = (anchored.points_world_m - T[:3, 3]) @ T[:3, 2]
    assert np.allclose(depth, 0.6)


def test_missed_point_uses_the_hits_around_it():
    spatial_map = SpatialMap()
    # A floor with a 2 cm hole: the click lands in the hole.
    for name, center, size in [
        ("w", [-0.26, 0, 0], [0.5, 0.01, 1.0]),
        ("e", [0.26, 0, 0], [0.5, 0.01, 1.0]),
        ("n", [0, 0, -0.26], [0.02, 0.01, 0.5]),
        ("s", [0, 0, 0.26], [0.02, 0.01, 0.5]),
    ]:
        spatial_map.set_block(name, *box_mesh(center, size))
    T = look_at([0, 0.8, 0.001], [0, 0, 0])
    uv_px, _ = project(np.array([[0.0, 0.005, 0.0]]), T, CAMERA)
    anchored = anchor_shape(Shape.checked("point", norm_from_px(uv_px, CAMERA)), T, CAMERA, spatial_map.snapshot())
    assert anchored.anchoring[0] == Anchoring.PLANE
    assert np.linalg.norm(anchored.points_world_m[0] - [0, 0.005, 0]) < 1e-3


def test_ellipse_area_on_a_flat_surface_matches_the_projected_ellipse():
    spatial_map = SpatialMap()
    spatial_map.set_block("floor", *box_mesh([0, -0.005, 0], [2.0, 0.01, 2.0]))
    T = look_at([0, 1.0, 0.0001], [0, 0, 0])
    outline = ellipse_outline((0.5, 0.5), (0.1, 0.1), points=256)
    anchored = anchor_shape(Shape.checked("ellipse", outline), T, CAMERA, spatial_map.snapshot(), noise=EXACT_MAP)
    # Looking straight down from 1 m, a radius of 0.1 * width px is 0.1 * 1280 / fx metres.
    radius_x_m = 0.1 * CAMERA.width / CAMERA.fx
    radius_y_m = 0.1 * CAMERA.height / CAMERA.fy
    expected_mm2 = math.pi * radius_x_m * radius_y_m * 1e6
    assert measure.area(anchored).value == pytest.approx(expected_mm2, rel=0.005)


def test_occlusion_behind_a_sphere_is_flagged(sphere_on_floor):
    front = look_at([0, 0.5, 1.0], [0, 0.5, 0])
    behind = look_at([0, 0.5, -1.0], [0, 0.5, 0])
    uv_px, _ = project(np.array([[0.0, 0.5, 0.2]]), front, CAMERA)  # the sphere's front pole
    anchored = anchor_shape(Shape.checked("point", norm_from_px(uv_px, CAMERA)), front, CAMERA, sphere_on_floor)
    assert np.allclose(anchored.points_world_m[0], [0, 0.5, 0.2], atol=5e-4)
    seen_from_front = reproject(anchored.points_world_m, front, CAMERA, sphere_on_floor)
    seen_from_behind = reproject(anchored.points_world_m, behind, CAMERA, sphere_on_floor)
    assert seen_from_front.visible[0] and not seen_from_front.occluded[0]
    assert seen_from_behind.on_screen[0] and seen_from_behind.occluded[0]


def test_off_screen_and_behind_camera_points_are_flagged():
    T = look_at([0, 0, 1.0], [0, 0, 0])
    result = reproject(np.array([[0, 0, 0], [5.0, 0, 0], [0, 0, 2.0]]), T, CAMERA)
    assert result.on_screen.tolist() == [True, False, False]
    assert result.in_front.tolist() == [True, True, False]
    assert np.all(np.isnan(result.uv_px[2]))


def test_occlusion_follows_block_updates_before_and_after_compaction():
    spatial_map = SpatialMap()
    spatial_map.set_block("wall", *box_mesh([0, 0, 0.5], [0.4, 0.4, 0.01]))
    spatial_map.compact()
    T = look_at([0, 0, 0], [0, 0, 1.0])
    point = np.array([[0.0, 0.0, 1.0]])
    assert reproject(point, T, CAMERA, spatial_map.snapshot()).occluded[0]
    spatial_map.set_block("wall", *box_mesh([0.0, 0, 1.5], [0.4, 0.4, 0.01]))  # moved behind the point
    assert not reproject(point, T, CAMERA, spatial_map.snapshot()).occluded[0]  # stale base geometry ignored
    spatial_map.compact()
    assert not reproject(point, T, CAMERA, spatial_map.snapshot()).occluded[0]
    spatial_map.set_block("curtain", *box_mesh([0, 0, 0.8], [0.4, 0.4, 0.01]))  # new, in the overlay
    assert reproject(point, T, CAMERA, spatial_map.snapshot()).occluded[0]


def test_split_into_blocks_keeps_every_triangle_once_in_blocks_of_the_asked_size():
    from vision.spatial_map import split_into_blocks

    sphere = o3d.geometry.TriangleMesh.create_sphere(0.5, resolution=40)
    vertices, triangles = np.asarray(sphere.vertices), np.asarray(sphere.triangles)
    blocks = split_into_blocks(vertices, triangles, per_block=500)
    assert [len(t) for _, _, t in blocks[:-1]] == [500] * (len(blocks) - 1)
    rebuilt = np.concatenate([v[t] for _, v, t in blocks]).reshape(-1, 9)
    original = vertices[triangles].reshape(-1, 9)
    assert sorted(map(tuple, np.round(rebuilt, 9))) == sorted(map(tuple, np.round(original, 9)))
    assert len({block_id for block_id, _, _ in blocks}) == len(blocks)
