"""The inference runtime: models run off the event loop, live frames are
latest-wins, and the one overlay renderer draws what a result says."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from server.inference.overlay import label_lines, render
from server.inference.registry import ModelRegistry
from server.inference.runtime import InferenceRuntime, LatestFrameRunner, LiveFrame
from tests.test_models_registry import tiny_card


def slow_model(matmuls: int = 12, side: int = 16) -> bytes:
    """A real ONNX model that takes a while: sigmoid(image) plus zero times a
    chain of 512x512 matrix products (the work cannot be optimised away)."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, side, side])
    prob = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])
    prob_map = helper.make_tensor_value_info("probability_map", TensorProto.FLOAT,
                                             ["batch", 1, side, side])
    rng = np.random.default_rng(0)
    weights = helper.make_tensor("w", TensorProto.FLOAT, [512, 512],
                                 (rng.standard_normal((512, 512)) / 512).astype(np.float32)
                                 .ravel().tolist())
    nodes = [helper.make_node("ReduceMean", ["image", "all_axes"], ["m"], keepdims=1),
             helper.make_node("Reshape", ["m", "one_one"], ["m11"]),
             helper.make_node("Expand", ["m11", "square"], ["x0"])]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"x{i}", "w"], [f"x{i + 1}"]))
    nodes += [helper.make_node("ReduceSum", [f"x{matmuls}"], ["s"], keepdims=0),
              helper.make_node("Mul", ["s", "zero"], ["z"]),
              helper.make_node("Sigmoid", ["image"], ["sig"]),
              helper.make_node("Add", ["sig", "z"], ["probability_map"]),
              helper.make_node("ReduceMean", ["probability_map", "axes"], ["probability"],
                               keepdims=0)]
    inits = [weights,
             helper.make_tensor("all_axes", TensorProto.INT64, [4], [0, 1, 2, 3]),
             helper.make_tensor("one_one", TensorProto.INT64, [2], [1, 1]),
             helper.make_tensor("square", TensorProto.INT64, [2], [512, 512]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])]
    graph = helper.make_graph(nodes, "slow", [image], [prob, prob_map], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def load_slow(tmp_path: Path, matmuls: int = 12):
    data = slow_model(matmuls)
    (tmp_path / "slow.onnx").write_bytes(data)
    (tmp_path / "slow.card.json").write_text(json.dumps(tiny_card("slow", data)))
    registry = ModelRegistry.load(tmp_path)
    assert not registry.problems, registry.problems
    return registry.get("slow")


async def test_inference_runs_off_the_event_loop(tmp_path: Path):
    # Twice the usual chain: 12 products took 27-40 ms here, too close to the
    # 30 ms this test needs to tell a stalled loop from a ticking one.
    model = load_slow(tmp_path, matmuls=24)
    frame = np.full((64, 64), 128, np.uint8)
    started = time.perf_counter()
    model.run(np.zeros((1, 1, 16, 16), np.float32))
    blocking_s = time.perf_counter() - started
    assert blocking_s > 0.03, "the slow model is too fast to show anything"

    runtime = InferenceRuntime()
    worst = 0.0
    try:
        job = asyncio.ensure_future(runtime.ultrasound(model, frame, {}))
        while not job.done():  # the loop keeps ticking while the model runs
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - before)
        await job
    finally:
        runtime.close()
    assert worst < blocking_s / 2, f"the loop stalled {worst * 1000:.1f} ms " \
        f"(one inference blocks for {blocking_s * 1000:.1f} ms)"


async def test_live_frames_are_latest_wins_and_stale_ones_dropped(tmp_path: Path):
    model = load_slow(tmp_path)
    runtime = InferenceRuntime()
    results: list[int] = []
    done = asyncio.Event()

    def on_result(result, frame: LiveFrame) -> None:
        results.append(frame.rtp_timestamp)
        assert result.provenance == {"source": "test", "rtp_timestamp": frame.rtp_timestamp}
        if frame.rtp_timestamp == 9 * 3000:
            done.set()

    runner = LatestFrameRunner(runtime, model, on_result, {"source": "test"})
    runner.start()
    try:
        grey = np.zeros((32, 32), np.uint8)
        runner.submit(LiveFrame(grey, 0, 0.0))
        await asyncio.sleep(0)  # the runner takes frame 0 and starts on it
        for i in range(1, 10):  # nine more arrive while frame 0 is being scored
            runner.submit(LiveFrame(grey, i * 3000, 0.0))
        await asyncio.wait_for(done.wait(), 20)
    finally:
        await runner.stop()
        runtime.close()
    assert results == [0, 9 * 3000]  # the first, then only the newest
    assert runner.submitted == 10 and runner.dropped == 8 and runner.completed == 2


async def test_the_overlay_shows_contours_heatmap_colour_bar_and_the_warning(tmp_path: Path):
    from tests.test_models_registry import tiny_model
    data = tiny_model()
    (tmp_path / "m.onnx").write_bytes(data)
    (tmp_path / "m.card.json").write_text(json.dumps(tiny_card("m", data)))
    model = ModelRegistry.load(tmp_path).get("m")
    frame = np.zeros((240, 320), np.uint8)
    frame[60:180, 80:240] = 255  # a bright box: the map is high there
    runtime = InferenceRuntime()
    try:
        result = await runtime.ultrasound(model, frame, {"source": "test"})
    finally:
        runtime.close()
    assert "NOT FOR CLINICAL USE - synthetic training data" not in label_lines(result)[0]
    assert label_lines(result)[0] == "m v0.1"
    assert label_lines(result)[-1].startswith("NOT FOR CLINICAL USE")
    out = render(frame, result)
    assert out.shape == (240, 320, 3)
    # The box's outline is drawn in green along its edge, nowhere else.
    green = (out[:, :, 1] > 150) & (out[:, :, 0] < 120) & (out[:, :, 2] < 120)
    rows, cols = np.nonzero(green)
    assert len(rows) > 200
    assert rows.min() >= 50 and rows.max() <= 190 and cols.min() >= 70 and cols.max() <= 250
    assert not green[80:160, 100:220].any()
    # The heatmap tints the box (no longer plain white) brighter than the
    # background, where the map is low (sigmoid(-1) = 0.27).
    inside, outside = out[120, 120].astype(int), out[200, 20].astype(int)
    assert inside.max() - inside.min() > 40
    assert inside.sum() > outside.sum() + 200
    # A colour bar on the right, and the label's warning line in red.
    bar = out[int(240 * 0.2) + 2: int(240 * 0.8) - 2, 320 - 14 - 30 + 5]
    assert bar.std(axis=0).max() > 30
    red = (out[:, :, 2] > 150) & (out[:, :, 1] < 100) & (out[:, :, 0] < 100)
    assert red[:80].sum() > 30
