"""The headset bridge against a headset that speaks hl2ss's wire format (the simulated
one, inside the synthetic ambulance), a real server and real aiortc peers."""

from __future__ import annotations

import asyncio
import itertools
import os
import time

import numpy as np
import pytest

from clients.hololens_bridge import hl2ss_wire as wire
from clients.hololens_bridge.bridge import Bridge
from clients.hololens_bridge.headset import Hl2ssHeadset
from clients.hololens_bridge.simulated_headset import SimulatedHeadset
from tests.conftest import World, frame_code
from vision.camera import look_at, norm_from_px, project

WIDTH, HEIGHT = 320, 180


class Rig:
    """A simulated headset, a bridge publishing it into a room, and the server."""

    def __init__(self, world: World, room: str, bitrate: int = 600_000) -> None:
        self.world, self.room = world, room
        self.headset = SimulatedHeadset()
        self.bridge: Bridge | None = None
        self.bitrate = bitrate

    async def start(self) -> Rig:
        await self.headset.start()
        source = Hl2ssHeadset("127.0.0.1", self.headset.ports,
                              pv=wire.PvConfig(WIDTH, HEIGHT, 30, bitrate=self.bitrate),
                              map_interval_s=0.5)
        self.bridge = Bridge(source, self.world.server.ws, self.room, "medic",
                             make_client=lambda: self.world.client("crew", "medic", self.room, create=True))
        await self.bridge.start()
        await asyncio.wait_for(self.bridge.connected.wait(), 20)
        return self

    async def stop(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
        await self.headset.stop()


@pytest.fixture
async def rig(world: World):
    made: list[Rig] = []

    async def make(room: str, **kwargs: int) -> Rig:
        r = await Rig(world, room, **kwargs).start()
        made.append(r)
        return r

    yield make
    for r in made:
        await asyncio.wait_for(r.stop(), 20)


def capture_time_of(expert, rtp_timestamp: int) -> float | None:
    return next((m.get("capture_time_ms") for m in reversed(expert.data_messages)
                 if m.get("type") == "pose" and m["rtp_timestamp"] == rtp_timestamp), None)


async def first_relayed_rtp(expert) -> int:
    """The RTP timestamp of the first pose relayed to the expert: frames the SFU
    sent before its data channel opened have poses it can never receive."""
    await expert.subscribe_channel_open.wait()
    await expert.wait_until(lambda: any(m.get("type") == "pose" for m in expert.data_messages), 20)
    return next(m["rtp_timestamp"] for m in expert.data_messages if m.get("type") == "pose")


def at_or_after(rtp: int, first: int) -> bool:
    return ((rtp - first) & 0xFFFFFFFF) < 2**31


def pose_of(expert, rtp_timestamp: int) -> np.ndarray | None:
    for m in reversed(expert.data_messages):
        if m.get("type") == "pose" and m["rtp_timestamp"] == rtp_timestamp:
            return np.array(m["T_world_camera"]).reshape(4, 4)
    return None


async def test_headset_streams_reach_an_expert_with_each_frames_pose(world: World, rig):
    r = await rig("hl-1")
    expert = await world.expert("Dr Hl", room="hl-1")
    remote = await expert.wait_for_track("video", 20)
    from server.sfu.aiortc_seams import record_rtp_timestamps
    rtp_of_pts = record_rtp_timestamps(remote.receiver)
    first = await first_relayed_rtp(expert)
    checked = 0
    async with asyncio.timeout(30):
        while checked < 10:
            frame = await remote.track.recv()
            code = frame_code(frame)
            sent = r.headset.sent_frames.get(code.frame_id)
            rtp = rtp_of_pts.get(frame.pts)
            assert sent is not None and rtp is not None
            if not at_or_after(rtp, first):
                continue
            await expert.wait_until(lambda rtp=rtp: pose_of(expert, rtp) is not None, 5)
            np.testing.assert_allclose(pose_of(expert, rtp), sent.reported_T_world_camera, atol=1e-5)
            # Capture time from the headset's clock (remote configuration's UTC
            # offset) against the wall-clock time the headset painted in.
            capture_ms = capture_time_of(expert, rtp)
            assert capture_ms is not None
            assert abs(((int(capture_ms) - code.capture_ms + 2**31) % 2**32) - 2**31) < 150
            checked += 1
    # The headset's H.264 was passed through: the picture is the headset's size.
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    # The microphone reaches the expert as audio.
    audio = await expert.wait_for_track("audio", 10)
    pcm = (await asyncio.wait_for(audio.track.recv(), 10)).to_ndarray().astype(float)
    assert audio.info.get("peer_id") == r.bridge.client.state.peer_id
    assert pcm.size > 0
    # The spatial map went to the server, every triangle of it, as blocks.
    await map_on_server(r)
    # The expert talks back: the bridge receives (and reads) the voice.
    from clients.hololens_bridge.simulated import ToneTrack
    await expert.publish([ToneTrack()])
    await r.bridge.client.wait_until(lambda: r.bridge.heard_audio_frames > 10, 20)


async def test_the_headset_is_reopened_at_a_lower_bitrate_when_an_expert_cannot_take_it(
        world: World, rig):
    """hl2ss encodes at the bitrate its stream was opened with: when the
    server's estimate (REMB) stays below what the headset sends, the bridge
    opens the stream again at a rung the estimate carries, and the picture
    goes on from the new stream's first keyframe."""
    r = await rig("hl-bw", bitrate=2_000_000)
    expert = await world.expert("Dr Slow", room="hl-bw")
    remote = await expert.wait_for_track("video", 20)
    async with asyncio.timeout(20):
        before = [frame_code(await remote.track.recv()).frame_id for _ in range(5)]
    room = world.server.app.state.registry.get("hl-bw")
    producer = room.router.producer(remote.info["producer_id"])
    # The server's own estimate of the uplink starts about 5 s into the
    # stream; from then on it sends a REMB at least once a second.
    await expert.wait_until(lambda: producer.uplink_estimate_bps is not None, 20)
    sending = r.bridge._sending_bps(time.monotonic())
    connections = r.headset.stats.pv_connections
    assert r.bridge.bitrate_changes == []

    # The expert's link takes 100 kbit/s; the server passes on its floor
    # (or its estimate of the uplink, if lower), below what the headset sends.
    from server.sfu import aiortc_seams
    from server.sfu.producer import SUBSCRIBER_BITRATE_FLOOR_BPS
    assert sending > SUBSCRIBER_BITRATE_FLOOR_BPS / r.bridge.bitrate.congested_share, sending
    slow = aiortc_seams.UpstreamRemb(remote.receiver, lambda: 100_000)
    await slow.send_now(sorted(aiortc_seams.receiver_media_ssrcs(remote.receiver)))
    await expert.wait_until(lambda: r.bridge.bitrate_changes, 15)
    _, reopened_at, estimate = r.bridge.bitrate_changes[0]
    assert estimate <= SUBSCRIBER_BITRATE_FLOOR_BPS
    assert reopened_at <= max(estimate, r.bridge.bitrate.min_bps) < 2_000_000
    await expert.wait_until(lambda: r.headset.stats.pv_connections == connections + 1, 10)
    assert r.headset.pv_config.bitrate == reopened_at

    # The expert's picture goes on, from the new stream (its frame count
    # starts again at 0, well below where the old one was).
    async with asyncio.timeout(30):
        first_new = frame_code(await remote.track.recv()).frame_id
        while first_new >= before[0]:
            first_new = frame_code(await remote.track.recv()).frame_id
        fresh = [first_new] + [frame_code(await remote.track.recv()).frame_id for _ in range(15)]
    assert all(b > a for a, b in itertools.pairwise(fresh)), fresh
    assert len(r.bridge.bitrate_changes) == 1


async def map_on_server(r: Rig) -> None:
    """Wait until the server holds every triangle of the headset's spatial map."""
    triangles = len(r.headset.scene.triangles)
    await r.bridge.client.wait_until(lambda: sum(r.bridge.map_triangles_stored.values()) == triangles, 30)


async def frame_at(r: Rig, expert, T_world_camera: np.ndarray) -> tuple[str, int]:
    """(producer_id, rtp_timestamp) of a frame the expert got a pose for, taken at T."""
    r.headset.set_pose(T_world_camera)

    def found():
        return next(((m["producer_id"], m["rtp_timestamp"]) for m in reversed(expert.data_messages)
                     if m.get("type") == "pose"
                     and np.allclose(np.array(m["T_world_camera"]).reshape(4, 4), T_world_camera, atol=1e-5)),
                    None)
    await expert.wait_until(found, 20)
    return found()


def uv_norm(point_world_m: np.ndarray, T: np.ndarray) -> list[float]:
    from clients.hololens_bridge.scene_camera import scaled_intrinsics
    intrinsics = scaled_intrinsics(WIDTH, HEIGHT)
    uv_px, _ = project(point_world_m[None, :], T, intrinsics)
    return norm_from_px(uv_px, intrinsics)[0].tolist()


async def test_a_point_on_the_left_wrist_stays_on_it_in_the_wearers_view(world: World, rig):
    from clients.hololens_bridge.scene_camera import scaled_intrinsics
    r = await rig("hl-2")
    expert = await world.expert("Dr Wrist", room="hl-2")
    scene = r.headset.scene
    wrist = scene.landmarks_world_m["left_wrist"]
    T_drawn = look_at(wrist + np.array([-0.10, 0.50, 0.30]), wrist)
    await map_on_server(r)
    producer_id, rtp = await frame_at(r, expert, T_drawn)
    reply = await expert.request({"type": "annotate", "producer_id": producer_id, "rtp_timestamp": rtp,
                                  "kind": "point", "points": [uv_norm(wrist, T_drawn)]})
    await expert.wait_until(lambda: reply["annotation_id"] in r.bridge.holograms.shown, 10)
    await r.bridge.client.wait_until(lambda: any(o.active for o in r.headset.objects.values()), 10)

    # The wearer has moved: another side, nearer, head turned.
    T_now = look_at(wrist + np.array([0.25, 0.40, 0.20]), wrist + np.array([0.05, 0.0, -0.05]))
    intrinsics = scaled_intrinsics(640, 360)
    view = r.headset.preview(T_now, 640, 360)
    rgb = tuple(int(reply["color"][i:i + 2], 16) for i in (1, 3, 5))
    ys, xs = np.nonzero(np.all(view == np.array(rgb[::-1], np.uint8), axis=2))
    assert len(xs) > 10, "the marker is not in the wearer's view"
    truth_px, _ = project(wrist[None, :], T_now, intrinsics)
    error_px = np.hypot(xs.mean() - truth_px[0, 0], ys.mean() - truth_px[0, 1])
    assert reply["anchoring"] == [0]
    assert error_px <= 5.0, f"marker {error_px:.1f} px from the wrist"


def save_preview(picture: np.ndarray, name: str) -> None:
    """The wearer's view as a test artifact (and in docs/ with GOLDENHOUR_UPDATE_DOCS=1)."""
    import os
    from pathlib import Path

    import cv2
    root = Path(__file__).resolve().parents[1]
    (root / "test-artifacts").mkdir(exist_ok=True)
    cv2.imwrite(str(root / "test-artifacts" / name), picture)
    if os.environ.get("GOLDENHOUR_UPDATE_DOCS") == "1":
        cv2.imwrite(str(root / "docs" / "img" / name), picture)


async def test_headset_commands_are_exact_and_survive_reconnects(world: World, rig):
    r = await rig("hl-3")
    expert = await world.expert("Dr Cmd", room="hl-3")
    scene = r.headset.scene
    await map_on_server(r)
    wrist, elbow = scene.landmarks_world_m["left_wrist"], scene.landmarks_world_m["left_elbow"]
    T = look_at((wrist + elbow) / 2 + np.array([-0.05, 0.55, 0.30]), (wrist + elbow) / 2)
    producer_id, rtp = await frame_at(r, expert, T)
    head = T[:3, 3]
    # On connecting, the bridge clears whatever an earlier bridge left on the headset.
    assert r.headset.commands[:3] == [("begin_display_list",), ("remove_all",), ("end_display_list",)]

    # Create: a point is one sphere, built in one display list.
    start = len(r.headset.commands)
    point = await expert.request({"type": "annotate", "producer_id": producer_id, "rtp_timestamp": rtp,
                                  "kind": "point", "points": [uv_norm(wrist, T)]})
    await expert.wait_until(lambda: point["annotation_id"] in r.bridge.holograms.shown, 10)
    sent = r.headset.commands[start:]
    (key,) = r.bridge.holograms.shown[point["annotation_id"]][1]
    x, y, z = point["points_world_m"][0]
    rgb = tuple(int(point["color"][i:i + 2], 16) / 255 for i in (1, 3, 5))
    assert [c[0] for c in sent] == ["begin_display_list", "create_primitive", "set_target_mode",
                                    "set_world_transform", "set_color", "set_active", "set_target_mode",
                                    "end_display_list"]
    assert sent[1] == ("create_primitive", "sphere")
    assert sent[2] == ("set_target_mode", 1) and sent[6] == ("set_target_mode", 0)
    _, target, position, rotation, scale = sent[3]
    assert target == 0  # "use last": the sphere just created
    np.testing.assert_allclose(position, (x, y, -z), atol=1e-6)  # Unity is left-handed: z mirrored
    np.testing.assert_allclose(rotation, (0, 0, 0, 1), atol=1e-7)
    np.testing.assert_allclose(scale, (0.012,) * 3, atol=1e-7)
    np.testing.assert_allclose(sent[4][2], (*rgb, 1.0), atol=1e-6)
    assert sent[5] == ("set_active", 0, 1)
    assert key in r.headset.objects and r.headset.objects[key].active

    # A ruler: a bar, its two ends, and the distance in millimetres as text.
    start = len(r.headset.commands)
    ruler = await expert.request({"type": "annotate", "producer_id": producer_id, "rtp_timestamp": rtp,
                                  "kind": "ruler", "points": [uv_norm(elbow, T), uv_norm(wrist, T)]})
    await expert.wait_until(lambda: ruler["annotation_id"] in r.bridge.holograms.shown, 10)
    sent = r.headset.commands[start:]
    creates = [c[1] if len(c) > 1 else "text" for c in sent if c[0] in ("create_primitive", "create_text")]
    assert creates == ["cylinder", "sphere", "sphere", "text"]
    (text_command,) = [c for c in sent if c[0] == "set_text"]
    distance = next(m for m in ruler["measurements"] if m["name"] == "distance")
    assert distance["unit"] == "mm"
    assert f"{distance['value']:.1f} ± {distance['sigma']:.1f} mm" in text_command[4]
    assert text_command[4].startswith("Dr Cmd: ")
    ruler_keys = r.bridge.holograms.shown[ruler["annotation_id"]][1]
    cylinder = r.headset.objects[ruler_keys[0]]
    # The bar spans the two anchored ends (Unity's cylinder is 2 units tall).
    a, b = (np.array(p) * [1, 1, -1] for p in ruler["points_world_m"])
    np.testing.assert_allclose(cylinder.position, (a + b) / 2, atol=1e-5)
    assert cylinder.scale[1] == pytest.approx(np.linalg.norm(b - a) / 2, abs=1e-5)

    save_preview(r.headset.preview(look_at(head + np.array([0.12, -0.05, 0.05]), (wrist + elbow) / 2),
                                   1280, 720), "headset-preview.png")

    # Delete: exactly the point's object goes.
    start = len(r.headset.commands)
    await expert.request({"type": "annotation_delete", "annotation_id": point["annotation_id"]})
    await expert.wait_until(lambda: key not in r.headset.objects, 10)
    assert r.headset.commands[start:] == [("begin_display_list",), ("remove", key), ("end_display_list",)]
    assert set(r.headset.objects) == set(ruler_keys)

    # The server connection drops (a handover): the bridge reconnects and
    # republishes; the ruler is still in the room, so nothing is drawn again.
    start = len(r.headset.commands)
    old_peer = r.bridge.client.state.peer_id
    await r.bridge.client.close()
    await expert.wait_until(lambda: r.bridge.sessions == 2 and r.bridge.connected.is_set(), 30)
    assert r.bridge.client.state.peer_id != old_peer
    await r.bridge.client.wait_until(lambda: ruler["annotation_id"] in r.bridge.client.annotations, 10)
    # While it was away the expert deleted the ruler and drew a new point:
    # the next sync removes exactly the ruler's objects and creates the point's.
    producer_id, rtp = await frame_at(r, expert, look_at(head + [0.0, 0.0, 0.01], wrist))
    await expert.request({"type": "annotation_delete", "annotation_id": ruler["annotation_id"]})
    again = await expert.request({"type": "annotate", "producer_id": producer_id, "rtp_timestamp": rtp,
                                  "kind": "point", "points": [uv_norm(wrist, look_at(head + [0.0, 0.0, 0.01], wrist))]})
    await expert.wait_until(lambda: set(r.bridge.holograms.shown) == {again["annotation_id"]}
                            and not set(ruler_keys) & set(r.headset.objects), 10)
    after = r.headset.commands[start:]
    assert ("remove_all",) not in after
    assert sorted(c[1] for c in after if c[0] == "remove") == sorted(ruler_keys)
    assert [c for c in after if c[0] in ("create_primitive", "create_text")] == [("create_primitive", "sphere")]
    assert set(r.headset.objects) == set(r.bridge.holograms.shown[again["annotation_id"]][1])

    # A second ambulance in the same room: what experts draw on its picture lies
    # in its own world frame, and never appears in this headset.
    other = await world.crew(room="hl-3", name="second ambulance", width=320, height=180, audio=False)
    await expert.wait_until(lambda: any(m.get("type") == "pose" and m.get("peer_id") == other.client.state.peer_id
                                        for m in expert.data_messages), 20)
    theirs = [m for m in expert.data_messages if m.get("type") == "pose"
              and m.get("peer_id") == other.client.state.peer_id][-1]
    elsewhere = await expert.request({"type": "annotate", "producer_id": theirs["producer_id"],
                                      "rtp_timestamp": theirs["rtp_timestamp"], "kind": "point",
                                      "points": [[0.5, 0.5]]})
    await r.bridge.client.wait_until(lambda: elsewhere["annotation_id"] in r.bridge.client.annotations, 10)

    # The headset connection drops (the bridge restarted, say): the next sync
    # clears what the headset holds and rebuilds it, leaving no orphans.
    await r.bridge.source.unity.close()
    r.headset.objects[0xDEAD] = r.headset.objects[next(iter(r.headset.objects))]  # an orphan from before
    start = len(r.headset.commands)
    producer_id, rtp = await frame_at(r, expert, T)
    label = await expert.request({"type": "annotate", "producer_id": producer_id, "rtp_timestamp": rtp,
                                  "kind": "label", "text": "Tourniquet 14:02", "points": [uv_norm(elbow, T)]})
    await expert.wait_until(lambda: label["annotation_id"] in r.bridge.holograms.shown, 10)
    # That sync rebuilt everything the room holds for this headset, and only that.
    assert set(r.bridge.holograms.shown) == {again["annotation_id"], label["annotation_id"]}
    assert elsewhere["annotation_id"] in r.bridge.client.annotations
    after = r.headset.commands[start:]
    assert after[:2] == [("begin_display_list",), ("remove_all",)]
    shown_keys = {k for _, keys in r.bridge.holograms.shown.values() for k in keys}
    assert set(r.headset.objects) == shown_keys and 0xDEAD not in r.headset.objects
    assert any(o.kind == "text" and "Tourniquet 14:02" in o.text for o in r.headset.objects.values())


async def test_a_recorded_session_replays_into_the_server_as_if_live(world: World, tmp_path):
    from clients.hololens_bridge.recording import RecordingError, RecordingSource, ReplaySource
    headset = SimulatedHeadset()
    await headset.start()
    try:
        recorder = RecordingSource(Hl2ssHeadset("127.0.0.1", headset.ports,
                                                pv=wire.PvConfig(WIDTH, HEIGHT, 30, bitrate=600_000)),
                                   tmp_path)
        frames = recorder.video()
        async for _ in frames:
            if recorder.frames_written >= 45:
                break
        await frames.aclose()
        meshes = recorder.spatial_map()
        await anext(meshes)
        await meshes.aclose()
    finally:
        await headset.stop()

    replay = ReplaySource(tmp_path)
    bridge = Bridge(replay, world.server.ws, "hl-4", "replay",
                    make_client=lambda: world.client("crew", "replay", "hl-4", create=True))
    await bridge.start()
    try:
        await asyncio.wait_for(bridge.connected.wait(), 20)
        expert = await world.expert("Dr Replay", room="hl-4")
        remote = await expert.wait_for_track("video", 20)
        from server.sfu.aiortc_seams import record_rtp_timestamps
        rtp_of_pts = record_rtp_timestamps(remote.receiver)
        first = await first_relayed_rtp(expert)
        seen = set()
        async with asyncio.timeout(30):
            while len(seen) < 20:
                frame = await remote.track.recv()
                code = frame_code(frame)
                rtp = rtp_of_pts[frame.pts]
                if not at_or_after(rtp, first):
                    continue
                await expert.wait_until(lambda rtp=rtp: pose_of(expert, rtp) is not None, 5)
                np.testing.assert_allclose(pose_of(expert, rtp),
                                           headset.sent_frames[code.frame_id].reported_T_world_camera, atol=1e-5)
                seen.add(code.frame_id)
        triangles = len(headset.scene.triangles)
        await bridge.client.wait_until(lambda: sum(bridge.map_triangles_stored.values()) == triangles, 30)
    finally:
        await bridge.stop()

    # A folder that is not a recording, or a damaged one, is refused by name.
    with pytest.raises(RecordingError, match="no video.h264"):
        ReplaySource(tmp_path / "nothing-here")
    lines = (tmp_path / "frames.jsonl").read_text().splitlines()
    (tmp_path / "frames.jsonl").write_text("\n".join(lines[:3] + ['{"timestamp_100ns": 1}'] + lines[4:]) + "\n")
    with pytest.raises(RecordingError, match="line 4"):
        ReplaySource(tmp_path)


async def test_ai_results_and_guidance_requests_pass_through_the_bridge(world: World, rig):
    from clients.hololens_bridge.simulated import SyntheticUltrasoundTrack
    r = await rig("hl-5")
    # A lobby page is watching; the crew asks for guidance from the bridge.
    lobby = world.client("observer", "lobby", "hl-5")
    await lobby.connect(join=False)
    alerts: list[dict] = []
    lobby.on_message = lambda m: alerts.append(m) if m.get("type") == "guidance_requested" else None
    await lobby.send({"type": "watch_lobby"})  # no reply: alerts follow
    await r.bridge.request_guidance("tension pneumothorax?")
    await lobby.wait_until(lambda: any(a.get("reason") == "tension pneumothorax?" for a in alerts), 10)
    assert alerts[-1]["room"] == "hl-5" and alerts[-1]["peer_id"] == r.bridge.client.state.peer_id

    # A wireless probe joins the room; the model's result hangs head-locked in the glasses.
    await world.crew(room="hl-5", name="probe", width=320, height=180, audio=False,
                     ultrasound=SyntheticUltrasoundTrack(size=256, fps=30, seed=19))
    await r.bridge.client.wait_until(lambda: r.bridge.overlays_shown >= 1, 40)
    panels = [o for o in r.headset.objects.values() if o.kind == "quad" and o.head_locked]
    assert len(panels) == 1 and panels[0].active and panels[0].texture.startswith(b"\x89PNG")
    import cv2
    picture = cv2.imdecode(np.frombuffer(panels[0].texture, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (360, 480, 3)
    # A second result refreshes the same panel's texture: no new object.
    await r.bridge.client.wait_until(lambda: r.bridge.overlays_shown >= 2, 20)
    assert [o for o in r.headset.objects.values() if o.kind == "quad" and o.head_locked] == panels


async def test_a_headset_sending_garbage_is_named_in_the_log_and_the_rest_carries_on(world: World, caplog):
    """A PV port that answers with nonsense (a 1 GiB packet header): the bridge
    says what is wrong, keeps retrying that stream, and the others go on."""
    import logging
    import struct
    attempts = 0
    retried = asyncio.Event()

    async def broken_pv(reader, writer):
        nonlocal attempts
        attempts += 1
        if attempts >= 4:  # start + stream, twice: it came back after the failure
            retried.set()
        await reader.read(64)  # the start block, or a configuration
        writer.write(struct.pack("<QI", 1, 1 << 30))
        await writer.drain()
        writer.close()

    broken = await asyncio.start_server(broken_pv, "127.0.0.1", 0)
    headset = SimulatedHeadset()
    await headset.start()
    ports = {**headset.ports, "pv": broken.sockets[0].getsockname()[1]}
    bridge = Bridge(Hl2ssHeadset("127.0.0.1", ports, pv=wire.PvConfig(WIDTH, HEIGHT, 30), map_interval_s=0.5),
                    world.server.ws, "hl-6", "medic",
                    make_client=lambda: world.client("crew", "medic", "hl-6", create=True))
    caplog.set_level(logging.WARNING, logger="clients.hololens_bridge.bridge")
    await bridge.start()
    try:
        await asyncio.wait_for(bridge.connected.wait(), 20)
        triangles = len(headset.scene.triangles)
        await bridge.client.wait_until(lambda: sum(bridge.map_triangles_stored.values()) == triangles, 30)
        await asyncio.wait_for(retried.wait(), 20)
        lost = [r for r in caplog.records if r.getMessage() == "headset stream lost"]
        assert lost and all(r.stream == "video" for r in lost)
        assert any("exceeds" in r.error for r in lost)  # the log names the problem
        assert bridge.connected.is_set() and bridge.sessions == 1  # the server connection never dropped
        assert bridge.frames_received == 0
    finally:
        await bridge.stop()
        broken.close()
        await headset.stop()


def test_the_keyboard_hook_reads_only_a_stdin_the_loop_can_poll(monkeypatch, tmp_path):
    """As a service (stdin /dev/null or a file) the bridge must not ask the event
    loop to watch stdin: epoll refuses those, and asyncio logs that as an error."""
    from clients.hololens_bridge import run

    regular = tmp_path / "stdin.txt"
    regular.write_text("g\n")
    for path in ("/dev/null", regular):
        with open(path) as stdin:
            monkeypatch.setattr("sys.stdin", stdin)
            assert not run._stdin_can_be_watched(), path
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as stdin, os.fdopen(write_end, "w"):
        monkeypatch.setattr("sys.stdin", stdin)
        assert run._stdin_can_be_watched()
    monkeypatch.setattr("sys.stdin", None)
    assert not run._stdin_can_be_watched()
