"""hl2ss's wire format as our code writes and reads it: byte layouts, pose
conventions, meshes in both vertex formats, and broken input refused by name."""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import pytest

from clients.hololens_bridge import hl2ss_wire as wire
from clients.hololens_bridge.holograms import MAX_SEGMENTS, decimate, holograms_for
from vision.camera import look_at, project
from vision.synthetic import HOLOLENS_PV_1280x720


def reader_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_an_hl2ss_pose_is_row_vector_with_the_camera_looking_down_minus_z():
    T = look_at(np.array([0.3, 1.5, 0.8]), np.array([0.0, 0.8, 0.0]))
    pose = wire.hl2ss_from_T_world_camera(T)
    assert pose.dtype == np.float32
    np.testing.assert_allclose(pose[3, :3], T[:3, 3], atol=1e-6)  # translation in the last row
    assert pose[3, 3] == 1 and np.allclose(pose[:3, 3], 0)
    # hl2ss's camera looks along its -Z: the row for camera z is minus our forward.
    np.testing.assert_allclose(pose[2, :3], -T[:3, 2], atol=1e-6)
    np.testing.assert_allclose(wire.T_world_camera_from_hl2ss(pose), T, atol=1e-6)
    # A point one metre ahead of the camera projects to the principal point either way.
    ahead = T[:3, 3] + T[:3, 2]
    uv, _ = project(ahead[None], wire.T_world_camera_from_hl2ss(pose), HOLOLENS_PV_1280x720)
    np.testing.assert_allclose(uv[0], [HOLOLENS_PV_1280x720.cx, HOLOLENS_PV_1280x720.cy], atol=1e-3)
    assert wire.T_world_camera_from_hl2ss(np.zeros((4, 4), np.float32)) is None  # "not located"


async def test_pv_packets_configuration_and_metadata_round_trip():
    config = wire.PvConfig(760, 428, 30, bitrate=1_000_000)
    encoded = config.encode()
    assert len(encoded) == 14 + 16 and encoded[0] == wire.MODE_DATA_POSE
    assert await wire.PvConfig.read_rest(encoded[0], reader_of(encoded[1:])) == config
    assert wire.PvStart().encode()[0] == 0x07 and len(wire.PvStart().encode()) == 28

    metadata = wire.PvMetadata(1000.5, 1001.5, 639.5, 359.5, 1280, 720, exposure_time_100ns=80_000)
    assert len(metadata.encode()) == wire.PV_METADATA_BYTES == 80
    frame = b"\x00\x00\x00\x01\x09\x10" + b"\x00\x00\x00\x01\x65\x88\x84"
    pose = wire.hl2ss_from_T_world_camera(np.eye(4))
    packet = await wire.read_packet(reader_of(wire.encode_packet(123456789, frame + metadata.encode(), pose)),
                                    with_pose=True)
    assert packet.timestamp_100ns == 123456789
    annex_b, decoded = wire.split_pv_payload(packet.payload)
    assert annex_b == b"\x00\x00\x00\x01\x65\x88\x84"  # the access-unit delimiter is gone
    assert decoded == metadata
    np.testing.assert_array_equal(packet.pose, pose)


async def test_broken_headset_bytes_are_refused_by_name():
    with pytest.raises(wire.WireError, match="exceeds"):
        await wire.read_packet(reader_of(struct.pack("<QI", 1, 1 << 30)), with_pose=False)
    with pytest.raises(wire.WireError, match="shorter than its metadata"):
        wire.split_pv_payload(b"\x00" * 10)
    with pytest.raises(wire.WireError, match="zero width"):
        bad = wire.PvConfig(0, 720).encode()
        await wire.PvConfig.read_rest(bad[0], reader_of(bad[1:]))
    with pytest.raises(wire.WireError, match="whole stereo samples"):
        wire.pcm_from_mic_payload(b"\x00" * 6)
    triangles = np.array([[0, 1, 5]])
    record = wire.encode_mesh(0, np.zeros((3, 3)), triangles, np.eye(4))
    with pytest.raises(wire.WireError, match="indexes a vertex"):
        await wire.read_mesh(reader_of(record))


@pytest.mark.parametrize("position_format", [wire.SM_FORMAT_FLOAT4, wire.SM_FORMAT_SNORM16x4])
async def test_a_spatial_mapping_mesh_arrives_in_world_coordinates(position_format):
    rng = np.random.default_rng(3)
    local = rng.uniform(-0.4, 0.4, (50, 3))
    triangles = rng.integers(0, 50, (80, 3))
    pose = np.eye(4, dtype=np.float32)
    pose[3, :3] = (1.0, 0.8, -2.0)  # row-vector: the mesh frame's origin in the world
    record = wire.encode_mesh(7, local, triangles, pose, position_format)
    mesh = await wire.read_mesh(reader_of(record), position_format)
    tolerance = 1e-6 if position_format == wire.SM_FORMAT_FLOAT4 else 2e-5  # SNORM16 steps
    np.testing.assert_allclose(mesh.vertices_world_m, local + [1.0, 0.8, -2.0], atol=tolerance)
    np.testing.assert_array_equal(mesh.triangles, triangles)
    assert mesh.index == 7 and mesh.status == 0


def test_a_long_stroke_costs_a_bounded_number_of_cylinders_that_follow_it():
    t = np.linspace(0, 4 * np.pi, 900)
    stroke = np.column_stack([0.2 * t / np.pi, 0.75 + 0.01 * np.sin(5 * t), 0.05 * np.cos(t)])
    kept = decimate(stroke)
    assert len(kept) - 1 <= MAX_SEGMENTS and (kept[0] == stroke[0]).all() and (kept[-1] == stroke[-1]).all()
    annotation = {"kind": "stroke", "color": "#00ff00", "points_world_m": stroke.tolist(),
                  "measurements": [{"name": "length", "value": 900.0, "sigma": 3.0, "unit": "mm"}]}
    objects = holograms_for(annotation, np.array([0.0, 1.6, 0.6]))
    assert 1 <= len(objects) <= MAX_SEGMENTS  # a freehand stroke's length is not shown
    assert all(o.kind == "cylinder" and o.rgba == (0.0, 1.0, 0.0, 1.0) for o in objects)
    # Each cylinder's ends lie on the stroke (Unity frame: z mirrored), within the decimation tolerance.
    stroke_unity = stroke * [1, 1, -1]
    from vision.camera import rotation_from_quaternion_xyzw
    for o in objects:
        axis = rotation_from_quaternion_xyzw(np.array(o.rotation_unity_xyzw))[:, 1] * o.scale[1]
        for end in (np.array(o.position_unity_m) + axis, np.array(o.position_unity_m) - axis):
            assert np.min(np.linalg.norm(stroke_unity - end, axis=1)) < 1e-4


def test_shared_images_face_the_wearer_and_arrows_get_their_head():
    import cv2

    from clients.hololens_bridge.holograms import ARROW_BARB_M, commands_for
    _, png = cv2.imencode(".png", np.full((40, 60, 3), 200, np.uint8))
    panel = {"kind": "image", "color": "#ff0000", "points_world_m": [[0.2, 1.0, 0.1]],
             "panel_width_m": 0.3, "panel_height_m": 0.2, "image_data": png.tobytes(),
             "author_name": "Dr A"}
    viewer = np.array([0.2, 1.0, 0.9])  # in front of the panel, along +Z of our world
    (quad,) = holograms_for(panel, viewer)
    assert quad.kind == "quad" and quad.scale == (0.3, 0.2, 1.0) and quad.texture == png.tobytes()
    from vision.camera import rotation_from_quaternion_xyzw
    R = rotation_from_quaternion_xyzw(np.array(quad.rotation_unity_xyzw))
    # Unity's quad is seen from its -Z side: its +Z points away from the wearer (Unity frame).
    away_unity = (np.array(quad.position_unity_m) - viewer * [1, 1, -1])
    assert R[:, 2] @ away_unity / np.linalg.norm(away_unity) > 0.99
    # The server sends the file as base64 text (msgspec's builtins): the same panel.
    import base64
    (again,) = holograms_for({**panel, "image_data": base64.b64encode(png.tobytes()).decode()}, viewer)
    assert again == quad
    kinds = [c.command for c in commands_for(quad)]
    assert kinds[0] == wire.Rus.CREATE_PRIMITIVE and wire.Rus.SET_TEXTURE in kinds

    arrow = {"kind": "arrow", "color": "#0000ff", "author_name": "Dr A",
             "points_world_m": [[0.0, 0.8, 0.0], [0.05, 0.8, 0.0], [0.10, 0.8, 0.0]],
             "normals_world": [[0, 1, 0]] * 3}
    objects = holograms_for(arrow, viewer)
    assert [o.kind for o in objects] == ["cylinder"] * 3  # the shaft (decimated to one) and two barbs
    tip = np.array([0.10, 0.8, 0.0]) * [1, 1, -1]
    for barb in objects[1:]:
        axis = rotation_from_quaternion_xyzw(np.array(barb.rotation_unity_xyzw))[:, 1] * barb.scale[1]
        ends = [np.array(barb.position_unity_m) + axis, np.array(barb.position_unity_m) - axis]
        assert min(np.linalg.norm(e - tip) for e in ends) < 1e-5
        assert 2 * barb.scale[1] == pytest.approx(ARROW_BARB_M, abs=1e-5)
        assert abs(axis[1]) < 1e-6  # in the surface's tangent plane (the normal is +Y)


async def test_an_idr_without_parameter_sets_gets_the_last_ones_seen():
    from clients.hololens_bridge.media import EncodedVideoTrack, nal_units
    sps, pps = b"\x00\x00\x00\x01\x67\x42\xc0\x1e", b"\x00\x00\x00\x01\x68\xce\x3c\x80"
    idr, p_slice = b"\x00\x00\x00\x01\x65\x88\x84\x00", b"\x00\x00\x00\x01\x41\x9a\x02"
    assert [k for k, _ in nal_units(sps + pps + idr)] == [7, 8, 5]
    track = EncodedVideoTrack()
    assert not track.push(p_slice, 0)  # nothing before the first keyframe
    assert track.push(sps + pps + idr, 333_333)
    assert track.push(p_slice, 666_666)
    assert track.push(idr, 999_999)  # the encoder sent its parameter sets only once
    sent = [bytes(await track.recv()) for _ in range(3)]
    assert sent[0] == sps + pps + idr and sent[1] == p_slice
    assert sent[2] == sps + pps + idr
    track.stop()
