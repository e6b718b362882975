"""Export a trained shipped model to ONNX (opset 17, weights inside the file,
dynamic batch) and measure how far onnxruntime's outputs are from PyTorch's.

    .venv/bin/python -m models.export fast_free_fluid

Needs the `train` extra. Prints the largest absolute difference, which
models.evaluate records in the card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from models.nets import Deployed
from models.shipped import BUILD, CATALOG, RECIPES, Recipe
from models.train import net_for

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = ["probability", "probability_map"]


def export(recipe: Recipe) -> tuple[Path, float]:
    net = net_for(recipe)
    net.load_state_dict(torch.load(BUILD / f"{recipe.name}.pt", weights_only=True))
    model = Deployed(net).eval()
    sample = recipe.batch(recipe.validation_seed + 500, 32)
    x = torch.from_numpy(sample.x)
    CATALOG.mkdir(parents=True, exist_ok=True)
    out = CATALOG / f"{recipe.name}.onnx"
    # The TorchScript exporter writes one self-contained file for a model this
    # small; the dynamo exporter may split weights into NAME.onnx.data.
    torch.onnx.export(model, (x[:1],), str(out), opset_version=OPSET, dynamo=False,
                      input_names=[INPUT_NAME], output_names=OUTPUT_NAMES,
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"},
                                    OUTPUT_NAMES[1]: {0: "batch"}})
    proto = onnx.load(str(out), load_external_data=False)
    onnx.checker.check_model(proto)
    external = [t.name for t in proto.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external or out.with_name(out.name + ".data").exists():
        raise RuntimeError(f"{out.name}: weights were written outside the file: {external}")
    with torch.no_grad():
        expected = [t.numpy() for t in model(x)]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(OUTPUT_NAMES, {INPUT_NAME: sample.x})  # batch of 32: dynamic batch works
    diff = max(float(np.abs(a - b).max()) for a, b in zip(expected, got))
    return out, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    path, diff = export(RECIPES[args.name])
    report = {"file": path.name, "opset": OPSET, "bytes": path.stat().st_size,
              "torch_onnx_max_abs_diff": diff}
    (BUILD / f"{args.name}.export.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    if diff > 1e-4:
        raise SystemExit(f"PyTorch and onnxruntime disagree by {diff:.2e} (> 1e-4)")


if __name__ == "__main__":
    main()
