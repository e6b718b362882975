"""Pose refinement: a depth frame registered against the map corrects the tracker's
pose, or says why it would not, on the synthetic ambulance scene."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vision.anchoring import EXACT_MAP
from vision.camera import Intrinsics, camera_rays, invert_pose, look_at, norm_from_px
from vision.refine import refine_pose
from vision.spatial_map import SpatialMap
from vision.synthetic import noisy_depth, render
from vision.synthetic.noise import rotation_from_axis_angle

#: A depth camera at a quarter of the colour camera's resolution, same optical centre.
DEPTH_CAMERA = Intrinsics(320, 180, 252.5, 252.5, 159.5, 89.5)


@pytest.fixture(scope="module")
def over_the_chest(scene):
    """(T_world_camera, depth_m): the true pose of a frame looking down at the sternum
    from 0.7 m, and its exact depth."""
    sternum = scene.landmarks_world_m["sternum"]
    T_true = look_at(sternum + np.array([0.15, 0.6, 0.25]), sternum)
    return T_true, render(scene, T_true, DEPTH_CAMERA, color=False).depth_m


def moved(T_world_camera, translation_m, rotation_deg):
    """The pose with its centre moved by `translation_m` (world) and turned about
    its own axes by the axis-angle `rotation_deg`."""
    out = T_world_camera.copy()
    out[:3, :3] = T_world_camera[:3, :3] @ rotation_from_axis_angle(np.radians(rotation_deg))
    out[:3, 3] += translation_m
    return out


def pose_error(T, T_true):
    """(camera centre error m, rotation error deg)."""
    R = (T @ invert_pose(T_true))[:3, :3]
    return (float(np.linalg.norm(T[:3, 3] - T_true[:3, 3])),
            math.degrees(math.acos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


def depth_of_map(snapshot, T_world_camera, intrinsics):
    """What a depth camera sees of a map (for maps that are not a SyntheticScene)."""
    v_px, u_px = np.mgrid[0:intrinsics.height, 0:intrinsics.width]
    uv_px = np.stack([u_px.ravel(), v_px.ravel()], axis=1).astype(np.float64)
    rays = camera_rays(norm_from_px(uv_px, intrinsics), intrinsics)
    hits = snapshot.cast(T_world_camera[:3, 3], rays @ T_world_camera[:3, :3].T)
    depth_m = np.where(hits.hit, hits.t_m * rays[:, 2], 0.0)
    return depth_m.reshape(intrinsics.height, intrinsics.width).astype(np.float32)


@pytest.mark.parametrize(
    "translation_m, rotation_deg",
    [
        (np.full(3, 0.01 / math.sqrt(3)), np.full(3, 1.0 / math.sqrt(3))),
        (np.array([0.01, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])),  # slide and roll
        (np.array([0.0, 0.0, -0.01]), np.array([0.0, 1.0, 0.0])),  # sideways and pan
    ],
)
def test_a_centimetre_and_a_degree_off_on_the_exact_mesh_is_corrected_to_a_fraction_of_a_millimetre(
    exact_map, over_the_chest, translation_m, rotation_deg
):
    T_true, depth_m = over_the_chest
    T_known = moved(T_true, translation_m, rotation_deg)
    assert pose_error(T_known, T_true) == pytest.approx((0.01, 1.0))
    refinement = refine_pose(T_known, depth_m, DEPTH_CAMERA, exact_map, noise=EXACT_MAP)
    assert refinement.refined, refinement.reason
    error_m, error_deg = pose_error(refinement.T_world_camera, T_true)
    # What is left (0.1 mm, 0.02 deg measured) trades a slide for a turn that
    # moves the seen surface by less than 0.1 mm: faceted skin, sampled by rays.
    assert error_m < 0.0003
    assert error_deg < 0.03
    assert refinement.correction_m == pytest.approx(0.01, abs=0.0003)
    assert refinement.fitness > 0.95


def test_noisy_depth_refines_the_pose_within_its_reported_uncertainty(exact_map, over_the_chest):
    T_true, depth_m = over_the_chest
    T_known = moved(T_true, np.array([0.004, -0.002, 0.003]), np.array([0.2, -0.3, 0.1]))
    refinement = refine_pose(
        T_known, noisy_depth(depth_m, 0.01, np.random.default_rng(3)), DEPTH_CAMERA, exact_map,
        noise=EXACT_MAP)
    assert refinement.refined, refinement.reason
    # Where the frame met the map, the refined pose moves a point by less than
    # its reported 95% radius (0.6 mm measured); the tracker's, by 3 mm.
    pivot = refinement.pivot_world_m
    def moves(T):
        return np.linalg.norm((T @ invert_pose(T_true) @ np.append(pivot, 1.0))[:3] - pivot)
    assert moves(T_known) > 0.003
    assert moves(refinement.T_world_camera) < min(moves(T_known) / 3, 2.7955 * refinement.translation_sigma_m)
    assert refinement.noise.pose_pivot_world_m == pytest.approx(tuple(pivot))
    assert refinement.translation_sigma_m >= EXACT_MAP.map_sigma_m  # never better than the map


def test_the_correction_carries_over_to_a_rigidly_attached_colour_camera(exact_map, over_the_chest):
    T_true, depth_m = over_the_chest
    # A colour camera 4 cm to the side of the depth camera, turned by 2 degrees.
    T_depth_colour = np.eye(4)
    T_depth_colour[:3, :3] = rotation_from_axis_angle(np.radians([0.0, 2.0, 0.0]))
    T_depth_colour[:3, 3] = [0.04, 0.0, 0.0]
    T_known = moved(T_true, np.array([0.006, 0.0, -0.004]), np.array([0.5, 0.0, 0.3]))
    refinement = refine_pose(T_known, depth_m, DEPTH_CAMERA, exact_map, noise=EXACT_MAP)
    error_m, error_deg = pose_error(refinement.apply(T_known @ T_depth_colour), T_true @ T_depth_colour)
    assert error_m < 0.0003 and error_deg < 0.03


@pytest.mark.parametrize(
    "change, field",
    [
        ({"depth_m": np.zeros((90, 160), dtype=np.float32)}, "depth_m"),
        ({"depth_m": np.full((180, 320), np.nan, dtype=np.float32)}, "depth_m"),
        ({"depth_m": np.full((180, 320), -1.0, dtype=np.float32)}, "depth_m"),
        ({"depth_m": "deep"}, "depth_m"),
        ({"T_world_camera": np.diag([2.0, 2.0, 2.0, 1.0])}, "T_world_camera"),
        ({"T_world_camera": np.eye(3)}, "T_world_camera"),
        ({"depth_intrinsics": np.eye(3)}, "depth_intrinsics"),
        ({"snapshot": object()}, "snapshot"),
    ],
)
def test_bad_input_raises_naming_the_field(exact_map, over_the_chest, change, field):
    T_true, depth_m = over_the_chest
    args = {"T_world_camera": T_true, "depth_m": depth_m, "depth_intrinsics": DEPTH_CAMERA,
            "snapshot": exact_map}
    args.update(change)
    with pytest.raises(ValueError, match=field):
        refine_pose(args["T_world_camera"], args["depth_m"], args["depth_intrinsics"], args["snapshot"])


def test_degenerate_depth_intrinsics_cannot_be_made():
    with pytest.raises(ValueError, match="fx"):
        Intrinsics(320, 180, 0.0, 252.5, 159.5, 89.5)


def test_a_frame_without_depth_is_not_refined_and_keeps_its_pose(exact_map, over_the_chest):
    T_true, _ = over_the_chest
    T_known = moved(T_true, np.array([0.003, 0.0, 0.0]), np.zeros(3))
    refinement = refine_pose(T_known, np.zeros((180, 320), np.float32), DEPTH_CAMERA, exact_map)
    assert not refinement.refined
    assert "usable pixels" in refinement.reason
    np.testing.assert_array_equal(refinement.T_world_camera, T_known)
    np.testing.assert_array_equal(refinement.correction_world, np.eye(4))


def test_a_frame_looking_where_the_map_has_nothing_is_not_refined(scene):
    patient_only = SpatialMap()  # a headset that has mapped only the patient so far
    patient_only.replace(scene.vertices_world_m, scene.triangles[scene.patient_triangle_mask])
    # Turned away from the patient, at the compartment's wall.
    eye = scene.landmarks_world_m["sternum"] + np.array([0.0, 0.6, 0.0])
    T = look_at(eye, eye + np.array([0.0, 0.2, 1.0]))
    depth_m = render(scene, T, DEPTH_CAMERA, color=False).depth_m
    assert (depth_m > 0).mean() > 0.9  # the sensor sees the wall; the map has none of it
    refinement = refine_pose(T, depth_m, DEPTH_CAMERA, patient_only.snapshot())
    assert not refinement.refined
    assert "surface points in view" in refinement.reason
    np.testing.assert_array_equal(refinement.T_world_camera, T)


def test_a_flat_floor_is_refused_as_poorly_constrained():
    floor = SpatialMap()
    floor.replace(np.array([[-5, 0, -5], [5, 0, -5], [5, 0, 5], [-5, 0, 5]], dtype=float),
                  np.array([[0, 1, 2], [0, 2, 3]]))
    T_true = look_at(np.array([0.1, 0.6, 0.2]), np.zeros(3))
    depth_m = depth_of_map(floor.snapshot(), T_true, DEPTH_CAMERA)
    # Sliding along the floor or turning about its normal changes nothing the
    # depth sees: a registration would report whatever the solver did there.
    T_known = moved(T_true, np.array([0.005, 0.002, 0.0]), np.array([0.3, 0.0, 0.0]))
    refinement = refine_pose(T_known, depth_m, DEPTH_CAMERA, floor.snapshot())
    assert not refinement.refined
    assert "poorly constrained" in refinement.reason
    np.testing.assert_array_equal(refinement.T_world_camera, T_known)


def test_a_correction_larger_than_a_tracker_error_is_refused(exact_map, over_the_chest):
    T_true, depth_m = over_the_chest
    T_known = moved(T_true, np.array([0.05, 0.0, 0.0]), np.zeros(3))
    refinement = refine_pose(T_known, depth_m, DEPTH_CAMERA, exact_map)
    assert not refinement.refined
    assert "beyond the 30 mm" in refinement.reason
    np.testing.assert_array_equal(refinement.T_world_camera, T_known)
    assert refinement.noise.pose_pivot_world_m is None  # the caller's prior, unchanged
