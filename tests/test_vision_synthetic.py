"""The synthetic ambulance: its ground truth is exact, its renderer agrees with the
camera model in vision.camera, its head poses are plausible, its noise is what it says."""

from __future__ import annotations

import math

import numpy as np
import open3d as o3d
import pytest

from vision.camera import (
    Intrinsics,
    check_pose,
    invert_pose,
    look_at,
    norm_from_px,
    project,
    world_rays,
)
from vision.synthetic import (
    FOREARM_SEGMENTS,
    LANDMARK_PARTS,
    PATIENT_PARTS,
    HOLOLENS_PV_1280x720,
    ambulance_scene,
    noisy_depth,
    paramedic_trajectory,
    perturb_pose,
    random_views,
    render,
)
from vision.synthetic.layout import MATTRESS_TOP_Y_M
from vision.synthetic.noise import axis_angle_from_rotation, rotation_from_axis_angle

#: A small narrow camera with an integer principal point: the look_at target falls
#: exactly on the centre of pixel (32, 24).
NARROW_64x48 = Intrinsics(64, 48, 1000.0, 1000.0, 32.0, 24.0)
#: Narrow too, with the principal point between pixels as in most real cameras.
NARROW_96x72 = Intrinsics(96, 72, 1000.0, 1000.0, 47.5, 35.5)
#: The HoloLens-like camera at a quarter of the resolution (same field of view).
SMALL_HOLOLENS = Intrinsics(320, 180, 1010.0 / 4, 1010.0 / 4, 159.5, 89.5)

REQUIRED_LANDMARKS = {
    "left_wrist", "right_wrist", "left_elbow", "right_elbow", "left_shoulder", "right_shoulder",
    "sternum", "umbilicus", "right_temple", "left_temple", "forehead", "left_knee", "right_knee",
}


@pytest.fixture(scope="module")
def hololens_view(scene):
    """A full-resolution frame from beside the stretcher, at the patient's left hip."""
    T = look_at((-0.6, 1.45, 0.7), scene.patient_center_world_m)
    return T, render(scene, T, HOLOLENS_PV_1280x720)


def _mesh_scene(vertices_m: np.ndarray, triangles: np.ndarray) -> o3d.t.geometry.RaycastingScene:
    raycasting = o3d.t.geometry.RaycastingScene()
    raycasting.add_triangles(o3d.core.Tensor(vertices_m.astype(np.float32)),
                             o3d.core.Tensor(triangles.astype(np.uint32)))
    return raycasting


def _camera_looking_at(point_m: np.ndarray, normal: np.ndarray, distance_m: float = 0.6,
                       sideways_m: float = 0.15) -> np.ndarray:
    """A pose in front of a surface point, a little off its normal, looking at it."""
    side = np.cross(normal, [1.0, 0.0, 0.0])
    if np.linalg.norm(side) < 0.1:
        side = np.cross(normal, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side)
    return look_at(point_m + distance_m * normal + sideways_m * side, point_m)


def _nearest_pixel(rendering, uv_px: np.ndarray) -> tuple[int, int]:
    u, v = np.rint(uv_px).astype(int)
    assert 0 <= u < rendering.intrinsics.width and 0 <= v < rendering.intrinsics.height
    return u, v


def _first_hit_faces_eye(scene, eyes_m: np.ndarray) -> np.ndarray:
    """(N,) bool: from each eye, rays in 26 directions all first hit a surface from its
    front side. An eye inside a closed solid would see a back face."""
    grid = np.array([(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)
                     if (x, y, z) != (0, 0, 0)], dtype=np.float64)
    directions = grid / np.linalg.norm(grid, axis=1, keepdims=True)
    rays = np.concatenate([np.repeat(eyes_m, len(directions), axis=0),
                           np.tile(directions, (len(eyes_m), 1))], axis=1).astype(np.float32)
    hits = scene.raycasting_scene().cast_rays(o3d.core.Tensor(rays))
    facing = np.einsum("ij,ij->i", hits["primitive_normals"].numpy(), rays[:, 3:]) < 0
    return (facing & np.isfinite(hits["t_hit"].numpy())).reshape(len(eyes_m), -1).all(axis=1)


# --- the scene -------------------------------------------------------------------


def test_scene_is_one_labelled_mesh_within_the_triangle_budget(scene):
    n_vertices, n_triangles = len(scene.vertices_world_m), len(scene.triangles)
    assert 20_000 <= n_triangles <= 150_000
    assert scene.vertices_world_m.dtype == np.float64
    assert scene.vertices_world_m.shape == (n_vertices, 3)
    assert scene.triangles.dtype == np.int32 and scene.triangles.max() < n_vertices
    assert scene.vertex_colors.dtype == np.float32 and scene.vertex_colors.shape == (n_vertices, 3)
    assert 0.0 <= scene.vertex_colors.min() and scene.vertex_colors.max() <= 1.0
    assert scene.triangle_part.dtype == np.int16 and scene.triangle_part.shape == (n_triangles,)
    assert set(np.unique(scene.triangle_part)) == set(range(len(scene.part_names)))
    assert set(PATIENT_PARTS) <= set(scene.part_names)
    assert not scene.vertices_world_m.flags.writeable
    with pytest.raises(ValueError, match="unknown part"):
        scene.part_id("tail")
    assert len(scene.tensor_mesh().triangle.indices) == n_triangles
    assert len(scene.legacy_mesh().triangles) == n_triangles


def test_patient_lies_supine_head_to_plus_x_with_left_side_at_plus_z(scene):
    lm = scene.landmarks_world_m
    assert REQUIRED_LANDMARKS <= set(lm)
    assert lm["forehead"][0] > lm["sternum"][0] > lm["umbilicus"][0] > lm["left_knee"][0]
    for name in lm:
        if name.startswith("left_"):
            twin = "right_" + name[len("left_"):]
            assert lm[name][2] > 0.05 and lm[twin][2] < -0.05
            np.testing.assert_allclose(lm[name] * (1, 1, -1), lm[twin], atol=1e-3)
    assert lm["nose_tip"][1] > lm["forehead"][1] - 0.05  # face up
    for name, point in lm.items():
        assert MATTRESS_TOP_Y_M < point[1] < MATTRESS_TOP_Y_M + 0.3, name
    assert scene.patient_center_world_m[1] > MATTRESS_TOP_Y_M


def test_landmarks_lie_on_their_body_part_within_a_tenth_of_a_millimetre(scene):
    for name, point in scene.landmarks_world_m.items():
        part = scene.part_id(LANDMARK_PARTS[name])
        part_triangles = scene.triangles[scene.triangle_part == part]
        part_mesh = _mesh_scene(scene.vertices_world_m, part_triangles)
        distance_m = part_mesh.compute_distance(
            o3d.core.Tensor(point[None].astype(np.float32))).numpy()[0]
        assert distance_m < 1e-4, name
        normal = scene.landmark_normals_world[name]
        assert abs(np.linalg.norm(normal) - 1) < 1e-9


def test_forearm_ruler_segments_have_known_length_on_the_upper_side(scene):
    assert scene.forearm_segments == FOREARM_SEGMENTS
    for elbow, wrist in FOREARM_SEGMENTS:
        length_m = scene.segment_length_m(elbow, wrist)
        assert 0.25 <= length_m <= 0.28
        assert length_m == pytest.approx(
            np.linalg.norm(scene.landmarks_world_m[elbow] - scene.landmarks_world_m[wrist]))
        for name in (elbow, wrist):
            assert scene.landmark_normals_world[name][1] > 0.9  # facing up
    with pytest.raises(ValueError, match="unknown landmark"):
        scene.segment_length_m("left_elbow", "left_thumb")


def test_one_camera_above_the_forearm_sees_both_ends_of_the_ruler(scene):
    elbow, wrist = (scene.landmarks_world_m[n] for n in FOREARM_SEGMENTS[0])
    middle = (elbow + wrist) / 2
    T = look_at(middle + (0.0, 0.6, 0.1), middle)
    rendering = render(scene, T, SMALL_HOLOLENS)
    uv_px, depth_m = project(np.stack([elbow, wrist]), T, rendering.intrinsics)
    for (u, v), depth in zip(np.rint(uv_px).astype(int), depth_m):
        assert rendering.part_id[v, u] == scene.part_id("left_forearm")
        assert abs(rendering.depth_m[v, u] - depth) < 0.003


def test_same_seed_same_scene_other_seed_other_colours_same_patient(scene):
    a, b, c = ambulance_scene(seed=4), ambulance_scene(seed=4), scene
    np.testing.assert_array_equal(a.vertices_world_m, b.vertices_world_m)
    np.testing.assert_array_equal(a.vertex_colors, b.vertex_colors)
    patient = a.patient_triangle_mask
    assert not np.array_equal(a.vertex_colors, c.vertex_colors)
    for name in a.landmarks_world_m:
        np.testing.assert_array_equal(a.landmarks_world_m[name], c.landmarks_world_m[name])
    a_patient, c_patient = a.triangles[patient], c.triangles[c.patient_triangle_mask]
    np.testing.assert_array_equal(a_patient - a_patient.min(), c_patient - c_patient.min())


def test_free_space_excludes_the_patient_furniture_and_the_outside(scene):
    sternum = scene.landmarks_world_m["sternum"]
    points = np.array([
        sternum + (0, 0.5, 0),  # above the patient: free
        sternum - (0, 0.05, 0),  # inside the chest
        (-0.5, 0.3, 0.85),  # inside the squad bench
        (0.0, 1.0, 1.5),  # outside the ambulance
        (0.2, 1.2, 0.5),  # beside the stretcher, at head height: free
    ])
    np.testing.assert_array_equal(scene.is_free_space(points), [True, False, False, False, True])


# --- the renderer -------------------------------------------------------------------


def test_landmark_at_the_image_centre_renders_with_its_exact_depth_and_part(scene):
    for name, point in scene.landmarks_world_m.items():
        T = _camera_looking_at(point, scene.landmark_normals_world[name])
        rendering = render(scene, T, NARROW_64x48)
        uv_px, depth_m = project(point[None], T, NARROW_64x48)
        np.testing.assert_allclose(uv_px[0], (32.0, 24.0), atol=1e-6)
        assert rendering.depth_m[24, 32] == pytest.approx(depth_m[0], abs=1e-5), name
        assert scene.part_names[rendering.part_id[24, 32]] == LANDMARK_PARTS[name], name


def test_landmark_projects_onto_the_pixel_whose_depth_and_part_match(scene):
    rng = np.random.default_rng(7)
    for name, point in scene.landmarks_world_m.items():
        T = _camera_looking_at(point, scene.landmark_normals_world[name],
                               distance_m=rng.uniform(0.45, 0.8))
        # Turn the camera a little so the landmark is off-centre and between pixels.
        T[:3, :3] = T[:3, :3] @ _rotation_about(np.array([0.3, 1.0, 0.0]), math.radians(1.2))
        rendering = render(scene, T, NARROW_96x72)
        uv_px, depth_m = project(point[None], T, NARROW_96x72)
        u, v = _nearest_pixel(rendering, uv_px[0])
        assert abs(rendering.depth_m[v, u] - depth_m[0]) < 0.001, name
        assert scene.part_names[rendering.part_id[v, u]] == LANDMARK_PARTS[name], name


def test_rays_follow_the_lens_distortion(scene):
    distortion = (-0.28, 0.09, 0.001, -0.0008, -0.01)
    distorted = Intrinsics(640, 360, 505.0, 505.0, 319.5, 179.5, distortion)
    undistorted = Intrinsics(640, 360, 505.0, 505.0, 319.5, 179.5)
    name = "left_elbow"
    point = scene.landmarks_world_m[name]
    T = _camera_looking_at(point, scene.landmark_normals_world[name], distance_m=0.6)
    # Put the landmark near the image corner, where distortion moves it most.
    T[:3, :3] = T[:3, :3] @ _rotation_about(np.array([1.0, -1.6, 0.0]), math.radians(24))
    uv_distorted, depth_m = project(point[None], T, distorted)
    uv_pinhole, _ = project(point[None], T, undistorted)
    assert np.linalg.norm(uv_distorted - uv_pinhole) > 10  # the test can tell them apart
    rendering = render(scene, T, distorted)
    u, v = _nearest_pixel(rendering, uv_distorted[0])
    assert abs(rendering.depth_m[v, u] - depth_m[0]) < 0.001
    assert rendering.part_id[v, u] == scene.part_id("left_forearm")


def test_rendered_depth_and_triangles_agree_with_an_independent_ray_cast(scene, hololens_view):
    T, rendering = hololens_view
    rng = np.random.default_rng(1)
    uv_px = np.stack([rng.integers(0, 1280, 2000), rng.integers(0, 720, 2000)], 1).astype(float)
    camera = HOLOLENS_PV_1280x720
    origin, directions = world_rays(norm_from_px(uv_px, camera), T, camera)
    independent = _mesh_scene(scene.vertices_world_m, scene.triangles)
    rays = np.concatenate([np.broadcast_to(origin, directions.shape), directions], 1)
    hits = independent.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))
    t_m = hits["t_hit"].numpy().astype(np.float64)
    assert np.isfinite(t_m).all()  # inside the closed compartment every ray hits
    points_world_m = origin + t_m[:, None] * directions
    _, expected_depth_m = project(points_world_m, T, HOLOLENS_PV_1280x720)
    u, v = uv_px[:, 0].astype(int), uv_px[:, 1].astype(int)
    np.testing.assert_allclose(rendering.depth_m[v, u], expected_depth_m, atol=1e-4)
    same_triangle = rendering.triangle_id[v, u] == hits["primitive_ids"].numpy().astype(np.int32)
    assert same_triangle.mean() > 0.99
    assert (rendering.part_id[v, u] == scene.triangle_part[rendering.triangle_id[v, u]]).all()


def test_rendering_has_the_documented_types_and_shows_the_patient(scene, hololens_view):
    T, rendering = hololens_view
    assert rendering.color_rgb.shape == (720, 1280, 3) and rendering.color_rgb.dtype == np.uint8
    assert rendering.depth_m.dtype == np.float32 and rendering.part_id.dtype == np.int16
    assert rendering.triangle_id.dtype == np.int32
    assert (rendering.depth_m > 0).all() and (rendering.part_id >= 0).all()
    assert scene.is_patient_part(rendering.part_id).mean() > 0.2
    # Textured enough for a tracker: strong local contrast over much of the image.
    gray = rendering.color_rgb.astype(np.float32).mean(axis=2)
    gradient = np.abs(np.diff(gray, axis=1))
    assert (gradient > 20).mean() > 0.02
    rgb = rendering.color_rgb.astype(np.int32)
    assert len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])) > 1000
    np.testing.assert_array_equal(rendering.T_world_camera, T)


def test_rays_that_miss_everything_give_zero_depth_and_no_ids(scene):
    T = look_at((0.0, 1.0, 5.0), (0.0, 1.0, 10.0))  # outside, looking away
    rendering = render(scene, T, NARROW_96x72)
    assert (rendering.depth_m == 0).all()
    assert (rendering.triangle_id == -1).all() and (rendering.part_id == -1).all()
    assert (rendering.color_rgb == 0).all()


def test_render_is_deterministic_can_skip_colour_and_refuses_a_non_rigid_pose(scene):
    T = look_at((0.0, 1.4, -0.6), scene.landmarks_world_m["sternum"])
    a, b = render(scene, T, SMALL_HOLOLENS), render(scene, T, SMALL_HOLOLENS)
    np.testing.assert_array_equal(a.color_rgb, b.color_rgb)
    np.testing.assert_array_equal(a.depth_m, b.depth_m)
    depth_only = render(scene, T, SMALL_HOLOLENS, color=False)
    assert depth_only.color_rgb is None
    np.testing.assert_array_equal(depth_only.depth_m, a.depth_m)
    np.testing.assert_array_equal(depth_only.triangle_id, a.triangle_id)
    with pytest.raises(ValueError, match="T_world_camera"):
        render(scene, T * 1.01, SMALL_HOLOLENS)


def test_hololens_camera_has_a_64_7_degree_horizontal_field_of_view():
    fov_deg = math.degrees(2 * math.atan(HOLOLENS_PV_1280x720.width / 2 / HOLOLENS_PV_1280x720.fx))
    assert fov_deg == pytest.approx(64.7, abs=0.3)
    assert (HOLOLENS_PV_1280x720.width, HOLOLENS_PV_1280x720.height) == (1280, 720)


# --- head poses -------------------------------------------------------------------------


def test_random_views_stand_in_free_space_and_see_the_target_unoccluded(scene):
    target = scene.landmarks_world_m["left_wrist"]
    views = random_views(scene, 40, seed=3, target="left_wrist", intrinsics=SMALL_HOLOLENS)
    assert len(views) == 40
    eyes = np.array([view.T_world_camera[:3, 3] for view in views])
    assert _first_hit_faces_eye(scene, eyes).all()
    assert scene.is_free_space(eyes).all()
    distances_m = np.linalg.norm(eyes - target, axis=1)
    assert distances_m.min() >= 0.4 and distances_m.max() <= 1.2
    assert len({tuple(np.round(e, 3)) for e in eyes}) == 40
    for view in views:
        T = check_pose(view.T_world_camera)
        np.testing.assert_array_equal(view.target_world_m, target)
        uv_px, depth_m = project(target[None], T, SMALL_HOLOLENS)
        assert 0 <= uv_px[0, 0] < 320 and 0 <= uv_px[0, 1] < 180 and depth_m[0] > 0
        # The ray through the target's exact image position hits the target first.
        origin, direction = world_rays(norm_from_px(uv_px, SMALL_HOLOLENS), T, SMALL_HOLOLENS)
        ray = np.concatenate([origin, direction[0]])[None].astype(np.float32)
        t_hit = scene.raycasting_scene().cast_rays(o3d.core.Tensor(ray))["t_hit"].numpy()[0]
        assert abs(t_hit - np.linalg.norm(target - origin)) < 0.001
    for view in views[:8]:
        rendering = render(scene, view.T_world_camera, SMALL_HOLOLENS)
        assert scene.is_patient_part(rendering.part_id).mean() > 0.05


def test_random_views_without_a_target_aim_at_points_on_the_patient(scene):
    views = random_views(scene, 25, seed=9, intrinsics=SMALL_HOLOLENS)
    targets = np.array([view.target_world_m for view in views])
    patient = _mesh_scene(scene.vertices_world_m, scene.triangles[scene.patient_triangle_mask])
    distance_m = patient.compute_distance(o3d.core.Tensor(targets.astype(np.float32))).numpy()
    assert (distance_m < 1e-4).all()
    assert np.ptp(targets[:, 0]) > 0.5  # spread along the body
    eyes = np.array([view.T_world_camera[:3, 3] for view in views])
    assert _first_hit_faces_eye(scene, eyes).all()


def test_random_views_accept_a_point_and_refuse_an_unknown_landmark(scene):
    above_chest = scene.landmarks_world_m["sternum"] + (0.0, 0.04, 0.0)  # in the air
    views = random_views(scene, 6, seed=2, target=above_chest, intrinsics=SMALL_HOLOLENS)
    for view in views:
        np.testing.assert_array_equal(view.target_world_m, above_chest)
        assert 0.4 <= np.linalg.norm(view.T_world_camera[:3, 3] - above_chest) <= 1.2
    with pytest.raises(ValueError, match="unknown landmark"):
        random_views(scene, 1, target="left_thumb")


def test_random_views_are_deterministic_per_seed(scene):
    a = random_views(scene, 5, seed=11, target="sternum")
    b = random_views(scene, 5, seed=11, target="sternum")
    c = random_views(scene, 5, seed=12, target="sternum")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.T_world_camera, y.T_world_camera)
    assert not np.allclose(a[0].T_world_camera, c[0].T_world_camera)


def test_paramedic_trajectory_is_smooth_at_30_fps_in_free_space_looking_at_the_patient(scene):
    trajectory = paramedic_trajectory(scene, 8.0, fps=30, seed=2, side="left")
    assert len(trajectory) == 240
    timestamps_s = np.array([p.timestamp_s for p in trajectory])
    np.testing.assert_allclose(np.diff(timestamps_s), 1 / 30, atol=1e-12)
    assert timestamps_s[0] == 0.0
    poses = np.array([check_pose(p.T_world_camera) for p in trajectory])
    eyes = poses[:, :3, 3]
    assert (eyes[:, 2] > 0).all()  # on the patient's left
    assert scene.is_free_space(eyes).all() and _first_hit_faces_eye(scene, eyes[::10]).all()
    # Smooth: a head moves < 1.5 m/s and turns < 120 deg/s, without jerks.
    step_m = np.linalg.norm(np.diff(eyes, axis=0), axis=1)
    assert step_m.max() < 1.5 / 30
    turn_deg = np.degrees(np.linalg.norm(axis_angle_from_rotation(
        np.einsum("nji,njk->nik", poses[:-1, :3, :3], poses[1:, :3, :3])), axis=1))
    assert turn_deg.max() < 120 / 30
    assert np.linalg.norm(np.diff(eyes, n=2, axis=0), axis=1).max() < 0.004
    assert np.ptp(eyes, axis=0).max() > 0.1  # it does move
    for posed in trajectory[::40]:
        uv_px, depth_m = project(
            posed.gaze_target_world_m[None], posed.T_world_camera, SMALL_HOLOLENS)
        assert depth_m[0] > 0 and 0 <= uv_px[0, 0] < 320 and 0 <= uv_px[0, 1] < 180
        rendering = render(scene, posed.T_world_camera, SMALL_HOLOLENS)
        assert scene.is_patient_part(rendering.part_id).mean() > 0.1


def test_paramedic_trajectory_is_deterministic_per_seed(scene):
    a = paramedic_trajectory(scene, 2.0, seed=5)
    b = paramedic_trajectory(scene, 2.0, seed=5)
    c = paramedic_trajectory(scene, 2.0, seed=6)
    np.testing.assert_array_equal(a[30].T_world_camera, b[30].T_world_camera)
    assert not np.allclose(a[30].T_world_camera, c[30].T_world_camera)
    with pytest.raises(ValueError, match="side"):
        paramedic_trajectory(scene, 1.0, side="port")


# --- noise -------------------------------------------------------------------------------


def test_perturb_pose_is_rigid_with_the_requested_error_statistics():
    T = look_at((0.2, 1.4, 0.6), (0.3, 0.85, 0.0))
    n = 6000
    rng = np.random.default_rng(0)
    noisy = perturb_pose(np.repeat(T[None], n, axis=0), 0.002, 0.2, rng)
    for pose in noisy[:50]:
        check_pose(pose)
    translation_m = noisy[:, :3, 3] - T[:3, 3]
    # sd of a sample sd is sigma / sqrt(2n) ~ 0.9%: 5% is over 5 of those.
    np.testing.assert_allclose(translation_m.std(axis=0), 0.002, rtol=0.05)
    assert np.abs(translation_m.mean(axis=0)).max() < 5 * 0.002 / math.sqrt(n)
    rotation_deg = np.degrees(axis_angle_from_rotation(
        np.einsum("ji,njk->nik", T[:3, :3], noisy[:, :3, :3])))
    np.testing.assert_allclose(rotation_deg.std(axis=0), 0.2, rtol=0.05)
    assert np.abs(rotation_deg.mean(axis=0)).max() < 5 * 0.2 / math.sqrt(n)
    # Error magnitudes: |translation|^2 and |rotation|^2 average 3 sigma^2.
    assert (translation_m**2).sum(axis=1).mean() == pytest.approx(3 * 0.002**2, rel=0.06)
    single = perturb_pose(T, 0.002, 0.2, np.random.default_rng(1))
    assert single.shape == (4, 4) and not np.array_equal(single, T)
    np.testing.assert_allclose(perturb_pose(T, 0.0, 0.0, rng), T, atol=1e-15)
    np.testing.assert_allclose(invert_pose(single) @ single, np.eye(4), atol=1e-12)


def test_perturb_pose_refuses_bad_sigmas_and_non_rigid_poses():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="sigma_translation_m"):
        perturb_pose(np.eye(4), -0.001, 0.1, rng)
    with pytest.raises(ValueError, match="sigma_rotation_deg"):
        perturb_pose(np.eye(4), 0.001, float("nan"), rng)
    with pytest.raises(ValueError, match="T_world_camera"):
        perturb_pose(np.diag([2.0, 1, 1, 1]), 0.001, 0.1, rng)


def test_noisy_depth_has_relative_gaussian_noise_and_keeps_holes():
    rng = np.random.default_rng(0)
    depth_m = rng.uniform(0.3, 3.0, (240, 320)).astype(np.float32)
    depth_m[::7, ::5] = 0.0
    noisy = noisy_depth(depth_m, 0.01, np.random.default_rng(1))
    assert noisy.dtype == np.float32 and noisy.shape == depth_m.shape
    holes = depth_m == 0
    assert (noisy[holes] == 0).all() and (noisy[~holes] > 0).all()
    relative = noisy[~holes] / depth_m[~holes] - 1
    assert relative.std() == pytest.approx(0.01, rel=0.03)
    assert abs(relative.mean()) < 4 * 0.01 / math.sqrt(relative.size)
    # Absolute noise grows with depth.
    far, near = depth_m > 2.5, (depth_m > 0) & (depth_m < 0.8)
    assert np.std(noisy[far] - depth_m[far]) > 2.5 * np.std(noisy[near] - depth_m[near])
    np.testing.assert_array_equal(noisy, noisy_depth(depth_m, 0.01, np.random.default_rng(1)))
    with pytest.raises(ValueError, match="sigma_relative"):
        noisy_depth(depth_m, -0.1, rng)


def _rotation_about(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    return rotation_from_axis_angle(axis * angle_rad)
