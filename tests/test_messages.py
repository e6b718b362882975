"""The message schema at the edge: one schema, two encodings, errors naming fields."""

from __future__ import annotations

import json

import msgpack
import pytest

from server.rooms.poses import PoseHistory
from server.signaling import messages as m

IDENTITY = [1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
POSE = {"type": "pose", "rtp_timestamp": 3000, "T_world_camera": IDENTITY,
        "intrinsics": {"width": 1280, "height": 720, "fx": 1000.0, "fy": 1000.0,
                       "cx": 639.5, "cy": 359.5}}


def test_msgpack_and_json_decode_to_the_same_typed_message():
    join = {"type": "join", "id": 4, "room": "bay-1", "role": "crew", "name": "Medic 1"}
    from_json, binary_json = m.parse_frame(json.dumps(join), m.ClientMessage)
    from_msgpack, binary_msgpack = m.parse_frame(msgpack.packb(join), m.ClientMessage)
    assert from_json == from_msgpack == m.Join(id=4, room="bay-1", role="crew", name="Medic 1")
    assert (binary_json, binary_msgpack) == (False, True)


def test_encode_round_trips_in_both_encodings_and_omits_absent_fields():
    error = m.Error(code="forbidden", message="no", ref_type="publish")
    assert json.loads(m.encode(error, binary=False)) == msgpack.unpackb(m.encode(error, True))
    assert "id" not in json.loads(m.encode(error, binary=False))


def test_validation_errors_name_the_field_and_carry_the_request_id():
    with pytest.raises(m.ProtocolError) as raised:
        m.parse_frame(json.dumps({"type": "subscribe_answer", "id": 9, "sdp": "v=0",
                                  "revision": 0}), m.ClientMessage)
    assert raised.value.code == "invalid_field"
    assert "$.revision" in str(raised.value) and raised.value.ref_id == 9


def test_pose_must_be_a_rigid_camera_to_world_transform():
    pose, _ = m.parse_frame(msgpack.packb(POSE), m.DataMessage)
    m.validate_pose(pose)
    for bad, words in ((IDENTITY[:12] + [0, 0, 1, 1], "last row"),
                       ([2.0] + IDENTITY[1:], "orthonormal"),
                       ([float("nan")] + IDENTITY[1:], "non-finite")):
        broken, _ = m.parse_frame(msgpack.packb({**POSE, "T_world_camera": bad}), m.DataMessage)
        with pytest.raises(m.ProtocolError, match=words):
            m.validate_pose(broken)
    with pytest.raises(m.ProtocolError, match=r"\$.rtp_timestamp"):
        m.parse_frame(json.dumps({**POSE, "rtp_timestamp": 2**32}), m.DataMessage)


def test_pose_history_is_bounded_and_keyed_by_rtp_timestamp():
    history = PoseHistory(capacity=3)
    for ts in (10, 20, 30, 40):
        pose, _ = m.parse_frame(msgpack.packb({**POSE, "rtp_timestamp": ts}), m.DataMessage)
        history.add(pose)
    assert len(history) == 3
    assert history.get(10) is None and history.get(20).rtp_timestamp == 20
    assert history.latest().rtp_timestamp == 40
