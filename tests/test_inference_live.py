"""Live ultrasound inference with real aiortc peers over loopback: a crew
publishes a probe as a second video track, the server decodes that one track
and sends overlays to the room, tagged with the RTP timestamp of their frame."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np

from clients.hololens_bridge.simulated import SyntheticUltrasoundTrack
from models.metrics import dice
from server.sfu import aiortc_seams
from tests.conftest import World

#: A phantom whose free fluid the model finds offline (Dice 0.9 on clean frames);
#: live, the frames pass through VP8 and the network first.
PROBE_SEED = 19


def ultrasound_track(client):
    return next((t for t in client.tracks if t.info.get("source") == "ultrasound"), None)


def overlays(client) -> list[dict]:
    return [m for m in client.data_messages if m.get("type") == "overlay"]


def rasterise(contours: list, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    polygons = [np.round(np.array(c, np.float32) * size - 0.5).astype(np.int32) for c in contours]
    cv2.fillPoly(mask, polygons, 1)
    return mask.astype(bool)


async def test_an_expert_gets_overlays_on_frames_it_received_outlining_the_fluid(world: World):
    probe = SyntheticUltrasoundTrack(size=256, fps=30, seed=PROBE_SEED)
    assert probe.fluid_mask.sum() > 300  # the known fluid region
    crew = await world.crew(ultrasound=probe)
    expert = await world.expert("doc")
    await expert.wait_until(lambda: ultrasound_track(expert) is not None)
    remote = ultrasound_track(expert)
    # The camera is still a plain camera track, forwarded as before.
    assert [t.info["source"] for t in expert.tracks if t.track.kind == "video"].count(
        "camera") == 1
    rtp_of_pts = aiortc_seams.record_rtp_timestamps(remote.receiver)
    offset = remote.info["rtp_timestamp_offset"]
    received: list[int] = []  # RTP timestamps (publisher's clock) of decoded frames

    async def watch() -> None:
        while True:
            frame = await remote.track.recv()
            received.append((rtp_of_pts[frame.pts] - offset) & 0xFFFFFFFF)
            expert.changed()

    def since_first_frame() -> list[dict]:
        """Overlays about frames from the expert's first decoded frame on (the
        crew's stream, and its overlays, started before the expert joined)."""
        return [o for o in overlays(expert) if received
                and (o["rtp_timestamp"] - received[0]) & 0xFFFFFFFF < 0x80000000]

    watching = asyncio.ensure_future(watch())
    try:
        await expert.wait_until(lambda: len(since_first_frame()) >= 20, timeout=30)
        after_first = since_first_frame()[:20]
        # The expert may decode a frame just after its overlay arrives: wait for it.
        last = after_first[-1]["rtp_timestamp"]
        await expert.wait_until(lambda: last in received, timeout=5)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)

    unmatched = [o["rtp_timestamp"] for o in after_first if o["rtp_timestamp"] not in received]
    assert not unmatched, f"overlays for frames the expert never received: {unmatched}"

    dices = [dice(rasterise(o["contours"], 256), probe.fluid_mask) for o in after_first]
    print(f"live Dice {np.mean(dices):.3f} over {len(dices)} overlays (min {min(dices):.3f})")
    assert np.mean(dices) >= 0.7, f"live Dice {np.mean(dices):.2f}: {np.round(dices, 2)}"
    for o in after_first:
        assert o["model"] == "fast_free_fluid" and o["version"] and o["not_for_clinical_use"]
        assert o["positive"] and o["probability"] >= o["threshold"]
        assert (o["frame_width"], o["frame_height"]) == (256, 256)
        assert o["producer_id"] == remote.info["producer_id"]
        assert o["peer_id"] == crew.client.state.peer_id
        assert o["input"]["source"] == "live" and o["input"]["rtp_timestamp"] == o["rtp_timestamp"]
    # The crew's glasses get the same overlays (for their panel).
    await crew.client.wait_until(lambda: overlays(crew.client), timeout=5)
    tap = world.server.app.state.inference.tap(remote.info["producer_id"])
    assert tap.frames_decoded > 20 and tap.frames_scored >= 20


async def test_a_probe_over_no_fluid_gets_negative_overlays_without_contours(world: World):
    probe = SyntheticUltrasoundTrack(size=256, fps=30, seed=PROBE_SEED, fluid=False)
    assert not probe.fluid_mask.any()
    await world.crew(ultrasound=probe)
    expert = await world.expert("doc")
    await expert.wait_until(lambda: len(overlays(expert)) >= 10, timeout=30)
    got = overlays(expert)[:10]
    assert sum(not o["positive"] for o in got) >= 9
    assert sum(bool(o["contours"]) for o in got) <= 1


async def test_the_server_starts_with_a_broken_model_and_says_which_and_why(tmp_path, monkeypatch):
    import json

    import httpx

    from tests.conftest import loopback_config, start_server
    from tests.test_models_registry import tiny_card, tiny_model
    good = tiny_model()
    (tmp_path / "mine.onnx").write_bytes(good)
    (tmp_path / "mine.card.json").write_text(json.dumps(tiny_card("mine", good)))
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    (tmp_path / "broken.card.json").write_text(json.dumps(tiny_card("broken", b"not a model")))
    monkeypatch.setenv("GOLDENHOUR_MODELS_DIR", str(tmp_path))
    async with start_server(loopback_config()) as server:
        async with httpx.AsyncClient() as http:
            listing = (await http.get(f"{server.http}/api/models")).json()
            health = (await http.get(f"{server.http}/healthz")).json()
    assert [m["name"] for m in listing["models"]] == ["mine"]
    assert listing["models"][0]["not_for_clinical_use"] is True
    (problem,) = listing["problems"]
    assert problem["file"] == "broken.card.json"
    assert "onnxruntime cannot load broken.onnx" in problem["reason"]
    assert health["status"] == "ok"
