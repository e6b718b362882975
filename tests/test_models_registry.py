"""The model registry: models dropped into a folder with a card are loaded and run;
broken ones are reported by name and reason while the others still load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from server.inference.registry import ModelRegistry
from server.inference.runtime import InferenceRuntime


def tiny_model(side: int = 16) -> bytes:
    """A user's model: probability_map = sigmoid(image), probability = its mean."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, side, side])
    prob = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])
    prob_map = helper.make_tensor_value_info("probability_map", TensorProto.FLOAT,
                                             ["batch", 1, side, side])
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["image"], ["probability_map"]),
         helper.make_node("ReduceMean", ["probability_map", "axes"], ["probability"],
                          keepdims=0)],
        "tiny", [image], [prob, prob_map], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_card(name: str, data: bytes, side: int = 16, **changes: object) -> dict:
    card = {
        "schema_version": 1, "name": name, "version": "0.1", "file": f"{name}.onnx",
        "sha256": hashlib.sha256(data).hexdigest(), "task": "segmentation", "modality": "US",
        "description": "a user's test model",
        "input": {"name": "image", "shape": [None, 1, side, side]},
        "outputs": [{"name": "probability", "shape": [None]},
                    {"name": "probability_map", "shape": [None, 1, side, side]}],
        "probability_output": "probability", "map_output": "probability_map",
        "preprocessing": {"type": "ultrasound_bmode", "size": [side, side], "mean": 0.5,
                          "std": 0.5},
        "gate": {"type": "ultrasound", "min_size": [16, 16]},
        "threshold": {"output": "probability", "value": 0.6, "operating_point": "none"},
        "training_data": {"synthetic": False, "source": "a hospital's own data"},
        "intended_use": "tests", "not_for_clinical_use": True,
    }
    card.update(changes)
    return card


def drop(folder: Path, name: str, data: bytes, card: dict | None) -> None:
    (folder / f"{name}.onnx").write_bytes(data)
    if card is not None:
        (folder / f"{name}.card.json").write_text(json.dumps(card))


async def test_a_user_model_dropped_in_the_folder_is_loaded_and_run(tmp_path: Path):
    data = tiny_model()
    drop(tmp_path, "hospital_fluid", data, tiny_card("hospital_fluid", data))
    registry = ModelRegistry.load(tmp_path)
    assert registry.names == ["hospital_fluid"] and not registry.problems
    model = registry.get("hospital_fluid")
    frame = np.zeros((64, 64), np.uint8)
    frame[:16] = 255  # the top quarter bright: sigmoid(1) there, sigmoid(-1) below
    runtime = InferenceRuntime()
    try:
        result = await runtime.ultrasound(model, frame, {"source": "test"})
    finally:
        runtime.close()
    expected = (1 / (1 + np.exp(-1.0)) + 3 / (1 + np.exp(1.0))) / 4
    assert abs(result.probability - expected) < 1e-5
    assert result.model == "hospital_fluid" and result.version == "0.1"
    assert result.provenance == {"source": "test"} and result.not_for_clinical_use
    assert result.positive == (expected >= 0.6)
    # The bright quarter is outlined: one contour across the top of the frame.
    (contour,) = result.contours_uv_norm
    vs = [v for _, v in contour]
    assert min(vs) < 0.05 and 0.2 < max(vs) < 0.3


def test_broken_models_are_reported_by_name_and_the_others_still_load(tmp_path: Path):
    good = tiny_model()
    drop(tmp_path, "good", good, tiny_card("good", good))
    wrong_shape = tiny_model(side=32)  # the card below claims 16x16
    drop(tmp_path, "wrong_shape", wrong_shape, tiny_card("wrong_shape", wrong_shape))
    corrupt = b"\x08\x07garbage, not a protobuf" * 10
    drop(tmp_path, "corrupt", corrupt, tiny_card("corrupt", corrupt))
    missing = tiny_card("missing_field", good)
    del missing["sha256"]
    drop(tmp_path, "missing_field", good, missing)
    drop(tmp_path, "tampered", good, tiny_card("tampered", good, sha256="0" * 64))
    drop(tmp_path, "orphan", good, None)
    (tmp_path / "not_json.card.json").write_text("{ this is not json")

    registry = ModelRegistry.load(tmp_path)
    assert registry.names == ["good"]
    problems = {p.file: p.reason for p in registry.problems}
    assert set(problems) == {"wrong_shape.card.json", "corrupt.card.json",
                             "missing_field.card.json", "tampered.card.json", "orphan.onnx",
                             "not_json.card.json"}
    assert "input 'image' has shape [None, 1, 32, 32] in the model, [None, 1, 16, 16]" \
        in problems["wrong_shape.card.json"]
    assert "onnxruntime cannot load corrupt.onnx" in problems["corrupt.card.json"]
    assert "missing required field `sha256`" in problems["missing_field.card.json"]
    assert "the card says 0000" in problems["tampered.card.json"]
    assert "no card names it" in problems["orphan.onnx"]
    assert "not valid JSON" in problems["not_json.card.json"]


def test_card_fields_are_checked_against_each_other(tmp_path: Path):
    data = tiny_model()
    drop(tmp_path, "synthetic_but_clinical", data,
         tiny_card("synthetic_but_clinical", data, not_for_clinical_use=False,
                   training_data={"synthetic": True, "source": "phantoms"}))
    drop(tmp_path, "bad_output", data, tiny_card("bad_output", data, probability_output="p"))
    drop(tmp_path, "bad_preprocessing", data,
         tiny_card("bad_preprocessing", data, preprocessing={"type": "ultrasound_bmode",
                                                            "size": [32, 32]}))
    registry = ModelRegistry.load(tmp_path)
    assert registry.names == []
    problems = {p.file: p.reason for p in registry.problems}
    assert "must set `not_for_clinical_use: true`" in problems["synthetic_but_clinical.card.json"]
    assert "'p' is not among the outputs" in problems["bad_output.card.json"]
    assert "does not match the preprocessing, which makes [None, 1, 32, 32]" \
        in problems["bad_preprocessing.card.json"]


def test_a_missing_models_folder_is_a_problem_not_a_crash(tmp_path: Path):
    registry = ModelRegistry.load(tmp_path / "nowhere")
    assert registry.names == []
    assert "does not exist" in registry.problems[0].reason
