"""Anchoring, re-projection and measurement against the synthetic ambulance scene's ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from vision import measure
from vision.anchoring import Anchoring, NoiseModel, Shape, anchor_shape
from vision.camera import Intrinsics, look_at, norm_from_px, project
from vision.refine import refine_pose
from vision.reprojection import reproject
from vision.spatial_map import SpatialMap, TsdfMapper
from vision.synthetic import (
    HOLOLENS_PV_1280x720,
    noisy_depth,
    perturb_pose,
    random_views,
    render,
)

CAMERA = HOLOLENS_PV_1280x720


def strictly_visible(scene, exact_map, T, names):
    """Landmarks well inside the image whose line of sight first meets the mesh at
    the landmark itself (within 1 mm): the camera sees them. A ray grazing a
    silhouette (the nose tip seen from the side) may pass it in float32; those are
    not seen."""
    points = np.array([scene.landmarks_world_m[n] for n in names])
    seen = reproject(points, T, CAMERA)
    inside = seen.on_screen & (seen.uv_px[:, 0] > 2) & (seen.uv_px[:, 0] < CAMERA.width - 3)
    inside &= (seen.uv_px[:, 1] > 2) & (seen.uv_px[:, 1] < CAMERA.height - 3)
    to_point = points - T[:3, 3]
    distance = np.linalg.norm(to_point, axis=1)
    hits = exact_map.cast(T[:3, 3], to_point / distance[:, None])
    first_hit_is_landmark = hits.hit & (np.abs(hits.t_m - distance) < 0.001)
    return [n for n, ok in zip(names, inside & first_hit_is_landmark) if ok]


def anchor_landmark(scene, snapshot, T_true, T_known, name, noise=NoiseModel()):
    """What the camera at T_true saw of a landmark, anchored with the pose the system knows."""
    uv_px, _ = project(scene.landmarks_world_m[name][None, :], T_true, CAMERA)
    shape = Shape.checked("point", norm_from_px(uv_px, CAMERA))
    return anchor_shape(shape, T_known, CAMERA, snapshot, noise=noise)


def test_landmarks_anchor_within_half_a_millimetre_over_200_random_views(scene, exact_map):
    rng = np.random.default_rng(21)
    names = sorted(scene.landmarks_world_m)
    errors_mm, views_used = [], 0
    for view in random_views(scene, 320, seed=21):
        T = view.T_world_camera
        visible = strictly_visible(scene, exact_map, T, names)
        if not visible:
            continue
        views_used += 1
        for name in rng.permutation(visible)[:3]:
            anchored = anchor_landmark(scene, exact_map, T, T, str(name))
            assert anchored.anchoring[0] == Anchoring.HIT
            errors_mm.append(np.linalg.norm(anchored.points_world_m[0] - scene.landmarks_world_m[name]) * 1e3)
    assert views_used >= 200
    assert np.median(errors_mm) <= 0.5
    assert np.max(errors_mm) <= 2.0


def test_anchor_reprojects_onto_the_landmark_in_another_view(scene, exact_map):
    rng = np.random.default_rng(22)
    names = sorted(scene.landmarks_world_m)
    views = [view.T_world_camera for view in random_views(scene, 240, seed=22)]
    errors_px = []
    for T_a, T_b in zip(views[0::2], views[1::2]):
        common = set(strictly_visible(scene, exact_map, T_a, names)) & set(
            strictly_visible(scene, exact_map, T_b, names)
        )
        if not common:
            continue
        name = str(rng.choice(sorted(common)))
        anchored = anchor_landmark(scene, exact_map, T_a, T_a, name)
        seen = reproject(anchored.points_world_m, T_b, CAMERA, exact_map)
        truth_px, _ = project(scene.landmarks_world_m[name][None, :], T_b, CAMERA)
        assert seen.visible[0]
        errors_px.append(float(np.linalg.norm(seen.uv_px[0] - truth_px[0])))
    assert len(errors_px) >= 50
    assert np.median(errors_px) <= 0.5


def test_forearm_ruler_reads_its_true_length_within_one_percent(scene, exact_map):
    for elbow, wrist in scene.forearm_segments:
        a, b = scene.landmarks_world_m[elbow], scene.landmarks_world_m[wrist]
        middle = (a + b) / 2
        T = look_at(middle + np.array([0.05, 0.55, 0.0 if "left" in elbow else 0.0]), middle)
        uv_px, _ = project(np.array([a, b]), T, CAMERA)
        ruler = anchor_shape(Shape.checked("ruler", norm_from_px(uv_px, CAMERA)), T, CAMERA, exact_map)
        reading = measure.distance(ruler)
        truth_mm = scene.segment_length_m(elbow, wrist) * 1e3
        assert reading.on_map
        assert reading.value == pytest.approx(truth_mm, rel=0.01)
        assert 0 < reading.sigma < 0.05 * truth_mm


def test_anchor_behind_the_shoulder_is_occluded_from_the_other_side(scene, exact_map):
    shoulder = scene.landmarks_world_m["left_shoulder"]
    # Drawn from above the patient's left side (+Z), seen from low on the right (-Z).
    T_draw = look_at(shoulder + np.array([0.0, 0.45, 0.35]), shoulder)
    T_other = look_at(shoulder + np.array([0.0, 0.02, -0.9]), shoulder)
    anchored = anchor_landmark(scene, exact_map, T_draw, T_draw, "left_shoulder")
    assert np.linalg.norm(anchored.points_world_m[0] - shoulder) < 0.001
    assert reproject(anchored.points_world_m, T_draw, CAMERA, exact_map).visible[0]
    from_other_side = reproject(anchored.points_world_m, T_other, CAMERA, exact_map)
    assert from_other_side.on_screen[0] and from_other_side.occluded[0]


def test_stroke_running_off_the_patient_is_anchored_by_fallback_and_flagged(scene):
    patient_only = SpatialMap()  # a headset that has mapped only the patient so far
    mask = scene.patient_triangle_mask
    patient_only.replace(scene.vertices_world_m, scene.triangles[mask])
    sternum = scene.landmarks_world_m["sternum"]
    # From above the chest, a stroke from the sternum past the top of the head
    # (the patient lies along +X, head at +X) onto the bare mattress.
    T = look_at(sternum + np.array([0.3, 0.55, 0.02]), sternum + np.array([0.3, 0.0, 0.0]))
    off_body = np.array([1.05, 0.72, 0.0])
    uv_px, _ = project(np.array([sternum, off_body]), T, CAMERA)
    anchored = anchor_shape(Shape.checked("stroke", norm_from_px(uv_px, CAMERA)), T, CAMERA, patient_only.snapshot())
    how = anchored.anchoring
    assert how[0] == Anchoring.HIT
    assert how[-1] in (Anchoring.PLANE, Anchoring.DEPTH)
    assert np.all(np.isfinite(anchored.points_world_m))
    fallback = how != Anchoring.HIT
    # A fallback point owns up to a guess: at least a centimetre, more than a typical hit.
    assert anchored.sigma_m[fallback].min() >= 0.01
    assert anchored.sigma_m[fallback].min() > np.median(anchored.sigma_m[~fallback])


#: "Pose noise sigma 2 mm, 0.2 degrees" read as the RMS size of the translation
#: error and of the rotation angle, i.e. per axis sigma / sqrt(3).
POSE_SIGMA_AXIS_M = 0.002 / np.sqrt(3)
POSE_SIGMA_AXIS_DEG = 0.2 / np.sqrt(3)
#: A paramedic leaning over the patient: the head 0.4 to 0.9 m from what it looks at.
LEANING_M = (0.4, 0.9)
#: A depth-only device's depth camera: a quarter of the colour camera's
#: resolution, with the same optical centre.
DEPTH_CAMERA = Intrinsics(
    320, 180, CAMERA.fx / 4, CAMERA.fy / 4, (CAMERA.cx + 0.5) / 4 - 0.5, (CAMERA.cy + 0.5) / 4 - 0.5)
#: What the anchoring assumes about the tracker's pose and the TSDF map.
TRACKER_AND_TSDF_NOISE = NoiseModel(
    pose_translation_sigma_m=POSE_SIGMA_AXIS_M,
    pose_rotation_sigma_deg=POSE_SIGMA_AXIS_DEG,
    map_sigma_m=0.001,
    map_sigma_relative=0.002,
)


@pytest.fixture(scope="module")
def tsdf_map(scene):
    """A map integrated from depth with 1% noise at noisy poses, as a depth-only
    device builds it while the paramedic looks around the patient (130 frames)."""
    rng = np.random.default_rng(31)
    names = sorted(scene.landmarks_world_m)
    views = [v for i, n in enumerate(names) for v in random_views(scene, 5, seed=500 + i, target=n, distance_range_m=LEANING_M)]
    views += random_views(scene, 40, seed=31, distance_range_m=LEANING_M)
    mapper = TsdfMapper(voxel_length_m=0.004, max_depth_m=1.5)
    for view in views:
        depth_m = render(scene, view.T_world_camera, DEPTH_CAMERA).depth_m
        T_known = perturb_pose(view.T_world_camera, POSE_SIGMA_AXIS_M, POSE_SIGMA_AXIS_DEG, rng)
        mapper.integrate(noisy_depth(depth_m, 0.01, rng), T_known, DEPTH_CAMERA)
    spatial_map = SpatialMap()
    spatial_map.replace(*mapper.extract_mesh())
    return spatial_map.snapshot()


@pytest.fixture(scope="module")
def noisy_frames(scene):
    """[(landmark, true pose, the tracker's pose, the frame's depth)]: 8 views of each
    landmark, each with the tracker's pose noise and the depth camera's 1% noise."""
    pose_rng, depth_rng = np.random.default_rng(32), np.random.default_rng(33)
    frames = []
    for i, name in enumerate(sorted(scene.landmarks_world_m)):
        for view in random_views(scene, 8, seed=100 + i, target=name, distance_range_m=LEANING_M):
            T_true = view.T_world_camera
            T_known = perturb_pose(T_true, POSE_SIGMA_AXIS_M, POSE_SIGMA_AXIS_DEG, pose_rng)
            depth_m = render(scene, T_true, DEPTH_CAMERA, color=False).depth_m
            frames.append((name, T_true, T_known, noisy_depth(depth_m, 0.01, depth_rng)))
    assert len(frames) == 8 * len(scene.landmarks_world_m)
    return frames


def test_noisy_pose_and_tsdf_map_keep_p95_error_small_and_uncertainty_covers_it(scene, tsdf_map, noisy_frames):
    errors_m, covered = [], []
    for name, T_true, T_known, _ in noisy_frames:
        anchored = anchor_landmark(scene, tsdf_map, T_true, T_known, name, TRACKER_AND_TSDF_NOISE)
        error = float(np.linalg.norm(anchored.points_world_m[0] - scene.landmarks_world_m[name]))
        errors_m.append(error)
        covered.append(error <= anchored.radius95_m[0])
    assert np.median(errors_m) <= 0.005
    # With the tracker's pose as it comes, this scene measures p95 8.3-9.3 mm:
    # the pose error alone gives 7.2 mm p95 at these distances and incidences
    # (map error alone: 4.7 mm). The 8 mm needs the pose refined against
    # the map (next test); this bound guards the unrefined path against
    # regressions (a broken anchoring is centimetres off).
    assert np.percentile(errors_m, 95) <= 0.012
    assert np.mean(covered) >= 0.90


def test_pose_refined_against_the_tsdf_map_brings_p95_error_within_8_mm_and_uncertainty_covers_it(
    scene, tsdf_map, noisy_frames
):
    errors_m, covered, refined = [], [], []
    for name, T_true, T_known, depth_m in noisy_frames:
        refinement = refine_pose(T_known, depth_m, DEPTH_CAMERA, tsdf_map, noise=TRACKER_AND_TSDF_NOISE)
        refined.append(refinement.refined)
        # The depth camera's correction, applied to the colour camera it is
        # fixed to (here they share the optical centre).
        T_colour = refinement.apply(T_known)
        anchored = anchor_landmark(scene, tsdf_map, T_true, T_colour, name, refinement.noise)
        error = float(np.linalg.norm(anchored.points_world_m[0] - scene.landmarks_world_m[name]))
        errors_m.append(error)
        covered.append(error <= anchored.radius95_m[0])
    assert np.mean(refined) >= 0.9
    assert np.median(errors_m) <= 0.005
    assert np.percentile(errors_m, 95) <= 0.008
    assert np.mean(covered) >= 0.90
