"""The annotation service on its own: anchoring against a frame's pose, ownership, limits."""

from __future__ import annotations

import numpy as np
import pytest

from clients.hololens_bridge.scene_camera import default_pose, scaled_intrinsics
from server.annotations.service import AnnotationRefused, AnnotationService, FramePose
from vision.camera import look_at, norm_from_px, project
from vision.spatial_map import split_into_blocks

CAMERA = scaled_intrinsics(640, 360)


@pytest.fixture
async def service(scene):
    service = AnnotationService(max_annotations=3)
    for block_id, vertices, triangles in split_into_blocks(scene.vertices_world_m, scene.triangles, 20_000):
        await service.set_map_block("crew-1", block_id, vertices, triangles)
    yield service
    service.close()


def frame_at(T, rtp=1000):
    return FramePose(rtp, T, CAMERA)


def pixel_of(point_world_m, T):
    uv_px, _ = project(np.asarray(point_world_m)[None, :], T, CAMERA)
    return norm_from_px(uv_px, CAMERA)[0].tolist()


async def test_arrow_is_anchored_with_the_pose_of_the_frame_it_was_drawn_on(service, scene):
    wrist, elbow = scene.landmarks_world_m["left_wrist"], scene.landmarks_world_m["left_elbow"]
    T = look_at((wrist + elbow) / 2 + np.array([0.0, 0.5, 0.1]), (wrist + elbow) / 2)
    expert = service.author("expert-1", "Dr Ada")
    annotation = await service.anchor(expert, "crew-1", "video-1", frame_at(T), "arrow",
                                      [pixel_of(elbow, T), pixel_of(wrist, T)])
    tip = annotation.anchored.points_world_m[-1]
    assert np.linalg.norm(tip - wrist) < 0.001
    assert annotation.author.color.startswith("#") and annotation.rtp_timestamp == 1000
    assert annotation.measurements["length"].unit == "mm"
    assert service.annotations == [annotation]


async def test_ruler_reports_millimetres(service, scene):
    a, b = scene.landmarks_world_m["left_elbow"], scene.landmarks_world_m["left_wrist"]
    T = look_at((a + b) / 2 + np.array([0.05, 0.55, 0.0]), (a + b) / 2)
    ruler = await service.anchor(service.author("e", "E"), "crew-1", "v", frame_at(T), "ruler",
                                 [pixel_of(a, T), pixel_of(b, T)])
    assert ruler.measurements["distance"].value == pytest.approx(scene.segment_length_m(
        "left_elbow", "left_wrist") * 1e3, rel=0.01)


async def test_only_the_author_deletes_and_clear_removes_only_ones_own(service, scene):
    T = default_pose(scene)
    ada, bob = service.author("p-ada", "Ada"), service.author("p-bob", "Bob")
    assert ada.color != bob.color
    mine = await service.anchor(ada, "crew-1", "v", frame_at(T), "point", [[0.5, 0.5]])
    theirs = await service.anchor(bob, "crew-1", "v", frame_at(T), "point", [[0.4, 0.5]])
    with pytest.raises(AnnotationRefused, match="only its author") as refused:
        service.remove("p-bob", mine.annotation_id)
    assert refused.value.code == "forbidden"
    assert service.clear("p-ada") == [mine.annotation_id]
    assert [a.annotation_id for a in service.annotations] == [theirs.annotation_id]
    with pytest.raises(AnnotationRefused, match="no annotation"):
        service.remove("p-ada", mine.annotation_id)


async def test_bad_shapes_and_full_rooms_are_refused_and_change_nothing(service, scene):
    T = default_pose(scene)
    author = service.author("p", "P")
    with pytest.raises(AnnotationRefused, match=r"uv_norm\[1\] contains NaN"):
        await service.anchor(author, "crew-1", "v", frame_at(T), "stroke", [[0.1, 0.1], [float("nan"), 0.2]])
    with pytest.raises(AnnotationRefused, match="kind must be one of"):
        await service.anchor(author, "crew-1", "v", frame_at(T), "blob", [[0.1, 0.1]])
    assert service.annotations == []
    for i in range(3):
        await service.anchor(author, "crew-1", "v", frame_at(T), "point", [[0.3 + 0.1 * i, 0.5]])
    with pytest.raises(AnnotationRefused, match="holds 3 annotations") as refused:
        await service.anchor(author, "crew-1", "v", frame_at(T), "point", [[0.5, 0.5]])
    assert refused.value.code == "too_many_annotations"
    assert len(service.annotations) == 3


async def test_bad_map_blocks_are_refused_by_name(service):
    with pytest.raises(AnnotationRefused, match="vertices_world_m contains NaN"):
        await service.set_map_block("crew-1", "b", np.full((3, 3), np.nan), np.array([[0, 1, 2]]))
    with pytest.raises(AnnotationRefused, match="no mesh block 'nope'"):
        await service.remove_map_block("crew-1", "nope")
