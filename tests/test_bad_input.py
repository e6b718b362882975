"""Garbage at the edge gets a clear error naming the problem; the connection, the
room and everyone else carry on."""

from __future__ import annotations

import json

import msgpack
import pytest

from clients.sdk.client import ServerError
from tests.conftest import World, read_frame_codes
from server.signaling.messages import MAX_MESSAGE_BYTES


@pytest.fixture
async def watched(world: World):
    """A crew streaming and an expert watching it: the bystanders of every test here."""
    await world.crew()
    expert = await world.expert("bystander")
    remote = await expert.wait_for_track("video")
    await read_frame_codes(remote.track, 3)
    return remote


async def assert_still_serving(client, remote) -> None:
    """The offender's connection still answers, and the bystander still decodes."""
    pong = await client.request({"type": "ping"})
    assert pong["type"] == "pong"
    codes = await read_frame_codes(remote.track, 10)
    assert codes[-1].frame_id > codes[0].frame_id


@pytest.mark.parametrize("frame, code, words", [
    (b"\xc1\xff\x00", "malformed", "malformed msgpack"),
    ("{\"type\": \"join\",", "malformed", "malformed JSON"),
    ("[1, 2, 3]", "invalid_message", "map/object"),
    ("{\"room\": \"demo\"}", "invalid_message", "`type`"),
    ("{\"type\": \"teleport\"}", "unknown_type", "teleport"),
    (msgpack.packb({"type": "join", "room": "demo", "role": "surgeon", "name": "x"}),
     "invalid_field", "$.role"),
    ("{\"type\": \"join\", \"room\": \"a/b\", \"role\": \"expert\", \"name\": \"x\"}",
     "invalid_field", "$.room"),
    ("x" * (MAX_MESSAGE_BYTES + 1), "message_too_large", str(MAX_MESSAGE_BYTES)),
])
async def test_bad_frame_gets_a_clear_error_and_the_connection_carries_on(
        world: World, watched, frame, code, words):
    client = world.client("expert", "offender")
    await client.connect()
    await client.send_raw(frame)
    error = await client.next_error()
    assert error["code"] == code
    assert words in error["message"]
    await assert_still_serving(client, watched)


async def test_messages_before_joining_are_refused(world: World, watched):
    client = world.client("expert", "impatient")
    await client.connect(join=False)
    await client.send_raw(json.dumps({"type": "publish", "sdp": "v=0"}))
    error = await client.next_error()
    assert error["code"] == "not_joined" and "join a room" in error["message"]
    await assert_still_serving(client, watched)


async def test_error_replies_in_the_encoding_of_the_request(world: World):
    texts = world.client("expert", "json-speaker", binary=False)
    await texts.connect()
    await texts.send_raw(json.dumps({"type": "nope"}))
    assert (await texts.next_error())["code"] == "unknown_type"
    binary = world.client("expert", "msgpack-speaker", binary=True)
    await binary.connect()
    await binary.send_raw(msgpack.packb({"type": "nope"}))
    assert (await binary.next_error())["code"] == "unknown_type"
    assert texts.last_frame_was_binary is False and binary.last_frame_was_binary is True



@pytest.mark.parametrize("role, kinds, words", [
    ("observer", "video", "role observer may not publish"),
    ("expert", "video", "role expert may publish audio only, not video"),
])
async def test_wrong_role_for_publishing_is_refused(world: World, watched, role, kinds, words):
    from clients.hololens_bridge.simulated import SyntheticCameraTrack
    client = world.client(role, "wrong-role")
    await client.connect()
    with pytest.raises(ServerError) as raised:
        await client.publish([SyntheticCameraTrack(320, 240)])
    assert raised.value.code == "forbidden"
    assert words in str(raised.value)
    await assert_still_serving(client, watched)


async def test_expert_sending_a_pose_is_refused_on_the_data_channel(world: World, watched):
    from clients.hololens_bridge.simulated import ToneTrack
    expert = world.client("expert", "posing")
    await expert.connect()
    await expert.publish([ToneTrack()], data_channel=True)
    replies = expert.publish_replies
    channel = expert.publish_channel
    await expert.wait_until(lambda: channel.readyState == "open")
    expert.send_data({"type": "pose", "rtp_timestamp": 1, "T_world_camera": [1, 0, 0, 0, 0, 1,
                      0, 0, 0, 0, 1, 0, 0, 0, 0, 1], "intrinsics": {"width": 640, "height": 360,
                      "fx": 500.0, "fy": 500.0, "cx": 320.0, "cy": 180.0}})
    await expert.wait_until(lambda: replies)
    assert replies[0]["code"] == "forbidden" and "may not send poses" in replies[0]["message"]
    await assert_still_serving(expert, watched)


async def test_crew_pose_with_a_non_rigid_matrix_is_refused(world: World):
    crew = await world.crew(room="bay-x")
    replies = crew.client.publish_replies
    await crew.client.wait_until(lambda: crew.client.publish_channel.readyState == "open")
    crew.client.send_data({"type": "pose", "rtp_timestamp": 5,
                           "T_world_camera": [2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
                           "intrinsics": {"width": 640, "height": 360, "fx": 500.0,
                                          "fy": 500.0, "cx": 320.0, "cy": 180.0}})
    crew.client.send_data({"type": "pose", "rtp_timestamp": 5, "T_world_camera": [1] * 16,
                           "intrinsics": {"width": -1}})
    await crew.client.wait_until(lambda: len(replies) >= 2)
    assert "not orthonormal" in replies[0]["message"]
    assert replies[1]["code"] == "invalid_field"


async def test_sdp_garbage_is_refused_and_a_good_offer_still_works_after(world: World, watched):
    from clients.hololens_bridge.simulated import ToneTrack
    expert = world.client("expert", "garbled")
    await expert.connect()
    for garbage in ("this is not sdp", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
                    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"):
        with pytest.raises(ServerError) as raised:
            await expert.request({"type": "publish", "sdp": garbage})
        assert raised.value.code == "invalid_sdp"
    await expert.publish([ToneTrack()])  # the same connection can still publish
    await assert_still_serving(expert, watched)


async def test_joining_a_room_that_does_not_exist_is_refused_unless_a_crew_creates_it(
        world: World):
    expert = world.client("expert", "lost", room="no-such-room")
    with pytest.raises(ServerError) as raised:
        await expert.connect()
    assert raised.value.code == "room_not_found"
    assert "'no-such-room' does not exist" in str(raised.value)

    crew_without_create = world.client("crew", "medic", room="no-such-room")
    with pytest.raises(ServerError):
        await crew_without_create.connect()
    crew = world.client("crew", "medic", room="no-such-room", create=True)
    joined = await crew.connect()
    assert joined["room"] == "no-such-room"


async def test_second_join_and_stale_subscribe_answer_are_refused(world: World):
    expert = await world.expert("twice")
    with pytest.raises(ServerError) as raised:
        await expert.request({"type": "join", "room": "demo", "role": "expert", "name": "x"})
    assert raised.value.code == "already_joined"
    with pytest.raises(ServerError) as raised:
        await expert.request({"type": "subscribe_answer", "sdp": "v=0", "revision": 99})
    assert raised.value.code == "stale_answer"
    with pytest.raises(ServerError) as raised:
        await expert.request({"type": "ice", "pc": "subscribe", "candidate": "candidate:garbage"})
    assert raised.value.code == "invalid_field"
    assert (await expert.request({"type": "ping"}))["type"] == "pong"


async def test_garbage_on_the_crews_data_channel_never_cuts_the_crews_video(world: World):
    crew = await world.crew()
    expert = await world.expert("watching")
    remote = await expert.wait_for_track("video")
    await read_frame_codes(remote.track, 3)
    replies = crew.client.publish_replies
    channel = crew.client.publish_channel
    channel.send("[" * 60000)  # nested past Python's recursion limit
    channel.send(json.dumps({"type": "pose", "rtp_timestamp": 1, "frame_id": 10**30,
                             "T_world_camera": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
                             "intrinsics": {"width": 640, "height": 360, "fx": 500.0,
                                            "fy": 500.0, "cx": 320.0, "cy": 180.0}}))
    await crew.client.wait_until(lambda: len(replies) >= 2)
    assert replies[0]["code"] == "malformed" and "nested" in replies[0]["message"]
    assert replies[1]["code"] == "invalid_field" and "$.frame_id" in replies[1]["message"]
    codes = await read_frame_codes(remote.track, 15)
    assert codes[-1].frame_id > codes[0].frame_id


async def test_a_client_that_vanishes_mid_join_leaves_no_ghost(world: World):
    import websockets
    watcher = await world.expert("watcher")
    for _ in range(3):
        async with websockets.connect(world.server.ws) as ws:
            await ws.send(json.dumps({"type": "join", "room": "demo", "role": "expert",
                                      "name": "vanishing"}))
        # closed at once: the server's `joined` and first offer find no reader
    await watcher.wait_until(lambda: [e for e, _ in watcher.peer_events].count("left") == 3)
    assert {p for _, p in watcher.peer_events if _ == "joined"} == \
        {p for _, p in watcher.peer_events if _ == "left"}
    room = world.server.app.state.registry.get("demo")
    assert [p.name for p in room.peers] == ["watcher"]


async def test_a_pose_flood_is_cut_to_the_rate_limit(world: World):
    from server.rooms.peer import POSES_PER_S
    crew = await world.crew(room="bay-flood")
    expert = await world.expert("flooded", room="bay-flood")
    await expert.subscribe_channel_open.wait()
    await crew.client.wait_until(lambda: crew.client.publish_channel.readyState == "open")
    pose = {"type": "pose", "T_world_camera": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
            "intrinsics": {"width": 640, "height": 360, "fx": 500.0, "fy": 500.0,
                           "cx": 320.0, "cy": 180.0}}
    flood = range(10_000_000, 10_000_000 + 20 * POSES_PER_S)
    for ts in flood:  # twenty seconds' worth at once
        crew.client.send_data({**pose, "rtp_timestamp": ts})
    # SCTP delivers the flood at a few hundred poses a second here (slower on a
    # busy machine): the bucket overflows within a few seconds.
    await crew.client.wait_until(
        lambda: any(r.get("code") == "rate_limited" for r in crew.client.publish_replies), 20)
    # Said once per run of refusals, not once per dropped pose: a flood that
    # arrives near the limit may open a few runs.
    said = [r["code"] for r in crew.client.publish_replies].count("rate_limited")
    assert 1 <= said <= 5
    # The crew's own per-frame poses (the ones with a frame_id) go on being
    # relayed after the flood.
    frame_after_flood = crew.camera.frame_count + 5
    await expert.wait_until(lambda: any(m.get("frame_id", -1) >= frame_after_flood
                                        for m in expert.data_messages[-5:]), 30)
    relayed = [m for m in expert.data_messages if "frame_id" not in m]
    # The burst allowance passes, then no more than the sustained rate while the
    # flood drains through SCTP, however long that takes on a busy machine.
    room = world.server.app.state.registry.get("bay-flood")
    budget = next(p for p in room.peers if p.role == "crew").pose_budget
    allowed = budget.burst + budget.rate * (budget.last_asked_at - budget.first_asked_at) + 1
    assert budget.refused > 0 and budget.taken <= allowed
    assert 2 * POSES_PER_S - 10 <= len(relayed) <= budget.taken
    assert len(relayed) < len(flood)


async def test_a_client_that_never_answers_its_offer_is_told_and_disconnected():
    import websockets
    from tests.conftest import loopback_config, start_server
    async with start_server(loopback_config(subscribe_answer_timeout_s=0.5)) as server:
        async with websockets.connect(server.ws) as ws:
            await ws.send(json.dumps({"type": "join", "room": "demo", "role": "observer",
                                      "name": "silent"}))
            received = []
            with pytest.raises(websockets.ConnectionClosedError):
                while True:  # until the server closes the connection
                    received.append(json.loads(await ws.recv()))
            assert ws.close_code == 1008 and "subscribe_answer" in ws.close_reason
        assert [r["type"] for r in received] == ["joined", "subscribe_offer", "error"]
        assert received[-1]["code"] == "answer_timeout"
        assert server.app.state.registry.get("demo").peers == ()


async def test_trickled_candidates_are_capped_per_connection(world: World):
    from server.rooms.peer import MAX_REMOTE_CANDIDATES
    expert = await world.expert("chatty")
    for port in range(MAX_REMOTE_CANDIDATES):  # accepted silently: ice has no reply
        await expert.send({"type": "ice", "pc": "subscribe", "sdp_mid": "0",
                           "candidate": f"candidate:1 1 UDP 2122252543 127.0.0.1 "
                                        f"{40000 + port} typ host"})
    assert (await expert.request({"type": "ping"}))["type"] == "pong"  # all handled
    assert not expert.errors
    with pytest.raises(ServerError) as raised:
        await expert.request({"type": "ice", "pc": "subscribe", "sdp_mid": "0",
                              "candidate": "candidate:1 1 UDP 2122252543 127.0.0.1 50000 typ host"})
    assert raised.value.code == "too_many_candidates"
    assert (await expert.request({"type": "ping"}))["type"] == "pong"
