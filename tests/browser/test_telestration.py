"""Telestration in a real Chromium against a crew inside the synthetic ambulance:
what the expert draws is anchored on the patient (checked against the scene's
ground truth), stays there when the camera moves, reaches other experts and the
crew, and bad input from the page changes nothing.

Screenshots land in test-artifacts/; with GOLDENHOUR_UPDATE_DOCS=1 the console
screenshot also replaces docs/img/console.png."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from vision.camera import look_at, norm_from_px, project, world_rays
from vision.spatial_map import SpatialMap

pytestmark = pytest.mark.browser

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "console.png"


def wait_drawing_ready(page) -> None:
    """Joined, frames decoding, and the displayed frame's pose known to the page.
    The page comes to the front: Chromium pauses video-frame callbacks in pages
    it considers hidden, and an expert draws on the page they are looking at."""
    page.bring_to_front()
    page.wait_for_function("() => window.goldenhour?.telestration?.lastProjection?.poseFrameId != null")


def picture_box(page) -> dict:
    """Where the picture lies on the page (CSS px): inside the video element,
    letterboxed, the way telestration.js maps pointer positions."""
    return page.evaluate("""() => {
        const v = document.getElementById('video');
        const c = document.getElementById('draw-input').getBoundingClientRect();
        const scale = Math.min(v.clientWidth / v.videoWidth, v.clientHeight / v.videoHeight);
        const w = v.videoWidth * scale, h = v.videoHeight * scale;
        return {x: c.left + (v.clientWidth - w) / 2, y: c.top + (v.clientHeight - h) / 2, w, h};
    }""")


def css_point(page, uv_norm) -> tuple[float, float]:
    """Page coordinates of a normalised picture point."""
    box = picture_box(page)
    return box["x"] + uv_norm[0] * box["w"], box["y"] + uv_norm[1] * box["h"]


def uv_of_css(page, x, y) -> np.ndarray:
    """The normalised picture point the page computes for a pointer at (x, y)."""
    box = picture_box(page)
    return np.array([(x - box["x"]) / box["w"], (y - box["y"]) / box["h"]])


def pixel_norm(point_world_m, T, intrinsics) -> np.ndarray:
    uv_px, _ = project(np.asarray(point_world_m)[None, :], T, intrinsics)
    return norm_from_px(uv_px, intrinsics)[0]


def move_camera(page, camera, T) -> None:
    """Move the simulated camera and wait until the page displays a frame posed at T."""
    camera.set_pose(T)
    page.wait_for_function("""(T) => {
        const p = window.goldenhour.telestration.lastProjection;
        return p.pose && p.pose.T_world_camera.every((v, i) => Math.abs(v - T[i]) < 1e-9);
    }""", arg=T.reshape(-1).tolist())


def drag(page, start, end, steps=8) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=steps)
    page.mouse.up()


def surface_point_under(scene_map, uv_norm, T, intrinsics) -> np.ndarray:
    """Ground truth: where the ray through `uv_norm` from the true pose meets the scene."""
    origin, dirs = world_rays(np.asarray(uv_norm)[None, :], T, intrinsics)
    hit = scene_map.cast(origin, dirs)
    assert hit.hit[0]
    return origin + dirs[0] * hit.t_m[0]


@pytest.fixture(scope="module")
def scene_map():
    from vision.synthetic import ambulance_scene

    spatial_map = SpatialMap()
    scene = ambulance_scene(0)
    spatial_map.replace(scene.vertices_world_m, scene.triangles)
    return spatial_map.snapshot()


def wait_for_annotation(loop_peers, client, count=1, timeout=10.0):
    loop_peers.run(client.wait_until(lambda: len(client.annotations) >= count, timeout), timeout + 5)
    return list(client.annotations.values())


def test_geometry_js_projects_like_vision(open_page) -> None:
    from clients.hololens_bridge.scene_camera import scaled_intrinsics
    from vision.camera import Intrinsics

    intrinsics = Intrinsics(640, 360, 505.0, 503.0, 319.2, 180.4, (0.05, -0.02, 0.001, -0.001, 0.003))
    T = look_at([0.3, 1.4, 0.5], [0.4, 0.9, 0.0])
    points = np.random.default_rng(3).uniform([0.1, 0.7, -0.3], [0.7, 1.0, 0.3], (50, 3))
    expected, _ = project(points, T, intrinsics)
    page = open_page.blank("/healthz")
    got = page.evaluate("""async ([points, T, K]) => {
        const g = await import('/app/geometry.js');
        return g.projectPoints(points, T, K).map((p) => [p.u, p.v]);
    }""", [points.tolist(), T.reshape(-1).tolist(),
           {"width": 640, "height": 360, "fx": 505.0, "fy": 503.0, "cx": 319.2, "cy": 180.4,
            "distortion": list(intrinsics.distortion)}])
    assert np.max(np.abs(np.array(got) - expected)) < 1e-6
    assert scaled_intrinsics(640, 360).fx == pytest.approx(505.0)


def test_arrow_drawn_in_the_browser_lands_on_the_patient_and_stays_there(
        room, open_page, loop_peers, scene_map, artifacts) -> None:
    crew = loop_peers.scene_crew(room)
    scene, camera = crew.scene, crew.camera
    page = open_page(room, "expert", name="Dr Arrow")
    wait_drawing_ready(page)
    wrist = scene.landmarks_world_m["left_wrist"]
    elbow = scene.landmarks_world_m["left_elbow"]
    # Standing at the patient's left, looking down at the forearm.
    T1 = look_at((wrist + elbow) / 2 + np.array([-0.1, 0.5, 0.3]), (wrist + elbow) / 2)
    move_camera(page, camera, T1)
    # Nothing drawn yet: the empty overlay is hidden from the compositor, and
    # still takes the pointer.
    overlay_opacity = "() => getComputedStyle(document.getElementById('annotations')).opacity"
    assert page.evaluate(overlay_opacity) == "0"
    page.click("button[data-tool=arrow]")
    start = css_point(page, pixel_norm(elbow, T1, camera.intrinsics))
    end = css_point(page, pixel_norm(wrist, T1, camera.intrinsics))
    drag(page, start, end)

    (annotation,) = wait_for_annotation(loop_peers, crew.client)
    assert annotation["kind"] == "arrow" and annotation["author_name"] == "Dr Arrow"
    tip = np.array(annotation["points_world_m"][-1])
    truth = surface_point_under(scene_map, uv_of_css(page, *end), T1, camera.intrinsics)
    assert np.linalg.norm(tip - truth) <= 0.005
    assert annotation["anchoring"][-1] == 0  # on the map

    page.wait_for_function("(id) => window.goldenhour.telestration.annotations.has(id)",
                           arg=annotation["annotation_id"])
    page.wait_for_function(f"() => ({overlay_opacity})() === '1'")
    # The paramedic moves; the page re-projects the arrow with the new frames' pose.
    T2 = look_at(wrist + np.array([-0.25, 0.45, 0.3]), wrist)
    move_camera(page, camera, T2)
    projection = page.evaluate("() => window.goldenhour.telestration.lastProjection")
    drawn_tip = np.array(projection["shapes"][annotation["annotation_id"]][-1])
    expected_tip, _ = project(truth[None, :], T2, camera.intrinsics)
    assert np.linalg.norm(drawn_tip - expected_tip[0]) <= 3.0
    # The drawings' canvas covers the arrow, not the picture: the compositor
    # blends it over every video frame.
    overlay = page.evaluate("""() => {
        const i = document.getElementById('draw-input').getBoundingClientRect();
        const c = document.getElementById('annotations').getBoundingClientRect();
        const v = document.getElementById('video');
        return {x: c.left - i.left, y: c.top - i.top, w: c.width, h: c.height, left: i.left, top: i.top,
                area: v.clientWidth * v.clientHeight, box: window.goldenhour.telestration.overlayBox};
    }""")
    assert overlay["box"] == {"x": overlay["x"], "y": overlay["y"], "width": overlay["w"], "height": overlay["h"]}
    assert overlay["w"] * overlay["h"] < overlay["area"] / 4
    tip_x, tip_y = css_point(page, ((drawn_tip[0] + 0.5) / camera.intrinsics.width,
                                    (drawn_tip[1] + 0.5) / camera.intrinsics.height))
    assert overlay["x"] + 3 <= tip_x - overlay["left"] <= overlay["x"] + overlay["w"] - 3
    assert overlay["y"] + 3 <= tip_y - overlay["top"] <= overlay["y"] + overlay["h"] - 3
    # Every displayed frame's painted frame number matches the frame its pose names.
    state = page.evaluate("() => ({matched: window.goldenhour.posesMatched, wrong: window.goldenhour.poseMismatches})")
    assert state["matched"] > 0 and state["wrong"] == []
    page.screenshot(path=str(artifacts / "console.png"))
    if os.environ.get("GOLDENHOUR_UPDATE_DOCS") == "1":
        shutil.copy(artifacts / "console.png", DOCS_SCREENSHOT)


def test_second_expert_sees_the_first_experts_annotation_live(room, open_page, loop_peers) -> None:
    crew = loop_peers.scene_crew(room)
    first = open_page(room, "expert", name="Dr One")
    wait_drawing_ready(first)
    # The second expert's microphone joins the first's playback without
    # reloading the picture (a new stream did, blanking it for a moment).
    tracks_before = first.evaluate("""() => {
        const v = document.getElementById('video');
        window.pictureReloads = 0;
        v.addEventListener('emptied', () => window.pictureReloads++);
        return v.srcObject.getTracks().length;
    }""")
    second = open_page(room, "expert", name="Dr Two")
    wait_drawing_ready(second)
    first.bring_to_front()
    first.wait_for_function("(n) => document.getElementById('video').srcObject.getAudioTracks().length > n - 1"
                            " && document.getElementById('video').srcObject.getTracks().length > n",
                            arg=tracks_before)
    assert first.evaluate("() => window.pictureReloads") == 0
    wait_drawing_ready(first)
    first.click("button[data-tool=ellipse]")
    sternum = pixel_norm(crew.scene.landmarks_world_m["sternum"], crew.camera.pose, crew.camera.intrinsics)
    drag(first, css_point(first, sternum - 0.04), css_point(first, sternum + 0.04))
    second.wait_for_function("() => window.goldenhour.telestration.annotations.size === 1")
    seen = second.evaluate("() => [...window.goldenhour.telestration.annotations.values()][0]")
    own = first.evaluate("() => [...window.goldenhour.telestration.annotations.values()][0]")
    assert seen["author_name"] == "Dr One" and seen["kind"] == "ellipse"
    assert seen["annotation_id"] == own["annotation_id"] and seen["color"] == own["color"]
    assert any(m["name"] == "area" and m["unit"] == "mm²" for m in seen["measurements"])
    # The drawings' canvas is only as big as what it shows: nothing of the
    # ellipse or its area label may touch its border (it would be cut off
    # there), unless that border is the picture's own edge. (On the page in
    # front: Chromium draws no frames for hidden ones.) Read in the same turn
    # as the box is found: a frame whose pose has not come yet has no marks,
    # and hides the canvas until the next one.
    edges = first.wait_for_function("""() => {
        const c = document.getElementById('annotations');
        const v = document.getElementById('video');
        const box = window.goldenhour.telestration.overlayBox;
        if (box === null) return null;
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const inked = (x, y) => px[4 * (y * c.width + x) + 3] > 0;
        let ink = 0, touching = [];
        for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) if (inked(x, y)) ink++;
        const sides = {left: box.x > 0, top: box.y > 0,
                       right: box.x + box.width < v.clientWidth, bottom: box.y + box.height < v.clientHeight};
        for (let x = 0; x < c.width; x++) {
            if (sides.top && inked(x, 0)) touching.push('top');
            if (sides.bottom && inked(x, c.height - 1)) touching.push('bottom');
        }
        for (let y = 0; y < c.height; y++) {
            if (sides.left && inked(0, y)) touching.push('left');
            if (sides.right && inked(c.width - 1, y)) touching.push('right');
        }
        return {ink, touching: [...new Set(touching)], width: box.width};
    }""").json_value()
    assert edges["ink"] > 500 and edges["touching"] == [], edges

    # Undo removes it for everyone; redo puts back exactly what was anchored.
    first.click("#undo")
    second.wait_for_function("() => window.goldenhour.telestration.annotations.size === 0")
    first.click("#redo")
    second.wait_for_function("() => window.goldenhour.telestration.annotations.size === 1")
    # (Only the message's own fields: the page adds projections, NaN off-screen.)
    back = second.evaluate("() => { const a = [...window.goldenhour.telestration.annotations.values()][0];"
                           " return {id: a.annotation_id, points: a.points_world_m}; }")
    assert back["id"] == own["annotation_id"]
    assert back["points"] == own["points_world_m"]

    # The first expert's laser reaches the second, whose overlay shows it: the
    # page's lists and text are not rebuilt for it (lasers come 20 a second).
    rebuilds = second.evaluate("() => window.goldenhour.listRebuilds")
    first.click("button[data-tool=laser]")
    drag(first, css_point(first, sternum - 0.03), css_point(first, sternum + 0.03), steps=20)
    second.wait_for_function("() => window.goldenhour.telestration.lasers.size === 1")
    assert second.evaluate("() => window.goldenhour.listRebuilds") == rebuilds
    assert second.locator("#annotation-list li").count() == 1


def test_freeze_frame_annotation_anchors_against_the_frozen_frame(
        room, open_page, loop_peers, scene_map) -> None:
    crew = loop_peers.scene_crew(room)
    camera = crew.camera
    page = open_page(room, "expert", name="Dr Freeze")
    wait_drawing_ready(page)
    T1 = camera.pose
    assert page.evaluate("() => window.goldenhour.telestration.freeze()")
    page.evaluate("() => window.goldenhour.telestration.frozenAck")
    # The camera moves on while the expert draws on the frozen frame.
    sternum = crew.scene.landmarks_world_m["sternum"]
    camera.set_pose(look_at(sternum + np.array([0.3, 0.5, -0.3]), sternum))
    loop_peers.run(camera.new_pose_sent.wait(), 10)
    page.click("button[data-tool=point]")
    target = css_point(page, pixel_norm(crew.scene.landmarks_world_m["umbilicus"], T1, camera.intrinsics))
    page.mouse.click(*target)
    (annotation,) = wait_for_annotation(loop_peers, crew.client)
    truth = surface_point_under(scene_map, uv_of_css(page, *target), T1, camera.intrinsics)
    assert np.linalg.norm(np.array(annotation["points_world_m"][0]) - truth) <= 0.005
    frozen_rtp = page.evaluate("() => window.goldenhour.telestration.lastProjection.rtpTimestamp")
    assert annotation["rtp_timestamp"] == frozen_rtp


def test_bad_annotations_from_the_page_are_refused_and_change_nothing(room, open_page, loop_peers) -> None:
    crew = loop_peers.scene_crew(room)
    page = open_page(room, "expert", name="Dr Mallory")
    wait_drawing_ready(page)
    page.click("button[data-tool=point]")
    page.mouse.click(*css_point(page, [0.5, 0.5]))
    wait_for_annotation(loop_peers, crew.client)
    errors = page.evaluate("""async () => {
        const g = window.goldenhour;
        const frame = g.telestration.lastProjection.rtpTimestamp;
        const producer = g.currentTrack().producer_id;
        const base = {type: 'annotate', producer_id: producer, rtp_timestamp: frame, kind: 'stroke'};
        const attempts = [
            {...base, points: Array.from({length: 3000}, (_, i) => [i / 3000, 0.5])},
            {...base, points: [[0.2, 0.2], [NaN, 0.3]]},
            {...base, points: [[0.2, 0.2], [0.3, 0.3]], author_name: 'Dr Forged'},
            {...base, points: [[0.2, 0.2], [0.3, 0.3]], rtp_timestamp: (frame + 90000 * 60) % 2 ** 32},
        ];
        const out = [];
        for (const attempt of attempts) {
            try { await g.request(attempt); out.push('accepted'); }
            catch (error) { out.push(String(error.message)); }
        }
        return out;
    }""")
    assert "points" in errors[0] and "invalid_field" in errors[0]
    assert "invalid_field" in errors[1]  # JSON turns NaN into null: not a number
    assert "author_name" in errors[2]
    assert errors[3].startswith("no_pose")
    assert len(crew.client.annotations) == 1
    assert page.evaluate("() => window.goldenhour.telestration.annotations.size") == 1
    assert page.evaluate("() => window.goldenhour.joined")


LOBBY_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "lobby.png"


def test_lobby_alerts_on_a_guidance_request_and_one_click_joins(room, open_page, loop_peers, artifacts) -> None:
    crew = loop_peers.crew(room)
    lobby = open_page.blank("/app/lobby.html", label="lobby")
    lobby.wait_for_function("() => window.goldenhourLobby.watching")
    lobby.fill("#expert-name", "Dr Lobby")
    lobby.wait_for_function("(room) => window.goldenhourLobby.rooms.some((r) => r.room === room)", arg=room)
    assert lobby.locator("#alert").is_hidden()
    reply = loop_peers.run(crew.client.request_guidance("suspected stroke, 64 y"))
    assert reply["type"] == "guidance_requested" and reply["room"] == room
    lobby.wait_for_function("() => window.goldenhourLobby.alerts === 1")
    alert = lobby.locator("#alert")
    assert alert.is_visible()
    assert "Simulated crew" in alert.inner_text() and "suspected stroke" in alert.inner_text()
    assert lobby.evaluate("() => window.goldenhourLobby.beeps") == 1
    lobby.screenshot(path=str(artifacts / "lobby.png"))
    if os.environ.get("GOLDENHOUR_UPDATE_DOCS") == "1":
        shutil.copy(artifacts / "lobby.png", LOBBY_SCREENSHOT)
    lobby.click("#alert a.join-alert")
    lobby.wait_for_function("() => window.goldenhour && window.goldenhour.joined")
    assert lobby.evaluate("() => [window.goldenhour.room, window.goldenhour.role, window.goldenhour.name]") \
        == [room, "expert", "Dr Lobby"]


def test_on_a_tablet_a_finger_tap_places_a_marker_and_the_layout_fits(room, open_page, loop_peers, scene_map) -> None:
    crew = loop_peers.scene_crew(room)
    page = open_page(room, "expert", name="Dr Tablet", tablet=True)
    wait_drawing_ready(page)
    layout = page.evaluate("""() => ({
        scroll: document.documentElement.scrollWidth,
        video: document.getElementById('video').getBoundingClientRect().width,
        tools: document.getElementById('tool-buttons').getBoundingClientRect().right})""")
    wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter((e) => e.getBoundingClientRect().right > 1024).map((e) => e.tagName + '#' + e.id)""")
    assert layout["scroll"] <= 1024 and layout["tools"] <= 1024 and layout["video"] >= 600, wide
    page.tap("button[data-tool=point]")
    T = crew.camera.pose
    target = css_point(page, pixel_norm(crew.scene.landmarks_world_m["sternum"], T, crew.camera.intrinsics))
    page.touchscreen.tap(*target)
    (annotation,) = wait_for_annotation(loop_peers, crew.client)
    truth = surface_point_under(scene_map, uv_of_css(page, *target), T, crew.camera.intrinsics)
    assert np.linalg.norm(np.array(annotation["points_world_m"][0]) - truth) <= 0.005


def test_a_shared_image_is_hung_where_the_expert_clicks(room, open_page, loop_peers, artifacts) -> None:
    import cv2

    crew = loop_peers.scene_crew(room)
    page = open_page(room, "expert", name="Dr Radiology")
    wait_drawing_ready(page)
    scan = np.zeros((400, 400, 3), np.uint8)
    cv2.ellipse(scan, (200, 200), (150, 180), 0, 0, 360, (200, 200, 200), -1)
    cv2.circle(scan, (250, 170), 30, (255, 255, 255), -1)
    path = artifacts / "key-image.png"
    cv2.imwrite(str(path), scan)
    page.fill("#label-text", "CT: left ICH")
    page.set_input_files("#share-image", str(path))
    page.wait_for_function("() => window.goldenhour.telestration.tool === 'image'")
    umbilicus = pixel_norm(crew.scene.landmarks_world_m["umbilicus"], crew.camera.pose, crew.camera.intrinsics)
    page.mouse.click(*css_point(page, umbilicus))
    (annotation,) = wait_for_annotation(loop_peers, crew.client)
    assert annotation["kind"] == "image" and annotation["text"] == "CT: left ICH"
    assert annotation["image_mime"] == "image/jpeg" and annotation["panel_width_m"] == 0.3
    assert np.linalg.norm(np.array(annotation["points_world_m"][0]) - crew.scene.landmarks_world_m["umbilicus"]) < 0.01
