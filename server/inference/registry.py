"""The model registry: every usable model in the models folder, loaded once.

A model is an .onnx file and its card (NAME.card.json, schema in cards.py and
docs/models.md). Loading checks the card, the file's sha256, that onnxruntime
can open it and that its inputs and outputs are the card's; a model that fails
any check is reported with the reason and skipped, never fatal: one broken
file must not take the server's other models (or the server) down.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.inference.cards import CARD_SUFFIX, CardError, ModelCard, load_card

log = logging.getLogger(__name__)

#: The shipped models' folder; a deployment points GOLDENHOUR_MODELS_DIR elsewhere.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "models" / "catalog"


def session_options(threads: int = 2) -> ort.SessionOptions:
    """Options for a small CNN on a 2-core machine: two intra-op threads but no
    spinning (measured on the shipped ultrasound model, per 128x128 frame: one
    thread p50 10.5 / p99 13.2 ms; two without spinning 7.9 / 12.5 ms;
    onnxruntime's default, two spinning, 7.8 / 23.3 ms, because idle workers
    spin on the core the event loop needs), sequential execution, full graph
    optimisation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run: its card and its one onnxruntime session."""

    card: ModelCard
    path: Path
    session: ort.InferenceSession = field(repr=False)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a preprocessed batch [N, ...] (blocking: call from a worker thread)."""
        names = [o.name for o in self.card.outputs]
        values = self.session.run(names, {self.card.input.name: batch})
        return dict(zip(names, values))


@dataclass(frozen=True)
class Problem:
    """A file in the models folder that was not loaded, and why."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


class ModelRegistry:
    """The loaded models by name, and the problems of those that were not."""

    def __init__(self, models: dict[str, LoadedModel], problems: list[Problem]) -> None:
        self._models = models
        self.problems = problems

    @classmethod
    def load(cls, folder: Path, threads: int = 2) -> ModelRegistry:
        models: dict[str, LoadedModel] = {}
        problems: list[Problem] = []
        if not folder.is_dir():
            problems.append(Problem(str(folder), "the models folder does not exist"))
            return cls(models, problems)
        claimed: set[str] = set()
        for card_path in sorted(folder.glob(f"*{CARD_SUFFIX}")):
            try:
                card = load_card(card_path)
                claimed.add(card.file)
                if card.name in models:
                    raise CardError(f"{card_path.name}: a model named {card.name!r} is "
                                    f"already loaded from {models[card.name].path.name}")
                models[card.name] = _load_model(card, folder / card.file, threads)
                log.info("model loaded", extra={"model": card.name, "version": card.version})
            except CardError as exc:
                claimed.add(card_path.name[:-len(CARD_SUFFIX)] + ".onnx")  # reported once
                reason = str(exc).removeprefix(f"{card_path.name}: ")
                problems.append(Problem(card_path.name, reason))
        for onnx_path in sorted(folder.glob("*.onnx")):
            if onnx_path.name not in claimed:
                problems.append(Problem(onnx_path.name, f"no card names it (add "
                                        f"{onnx_path.stem}{CARD_SUFFIX})"))
        for problem in problems:
            log.error("model skipped: %s", problem)
        return cls(models, problems)

    @classmethod
    def from_env(cls) -> ModelRegistry:
        folder = Path(os.environ.get("GOLDENHOUR_MODELS_DIR", DEFAULT_MODELS_DIR))
        return cls.load(folder)

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def get(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def for_modality(self, modality: str) -> list[LoadedModel]:
        return [m for m in self._models.values() if m.card.modality == modality]


def _dims(shape: list) -> list[int | None]:
    """onnxruntime's shape with symbolic (dynamic) dimensions as None."""
    return [d if isinstance(d, int) else None for d in shape]


def _load_model(card: ModelCard, path: Path, threads: int) -> LoadedModel:
    name = f"{card.name}{CARD_SUFFIX}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CardError(f"{name}: model file {card.file} cannot be read: "
                        f"{exc.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.sha256:
        raise CardError(f"{name}: {card.file} has sha256 {digest}, the card says {card.sha256} "
                        f"(the file was changed or the card belongs to another file)")
    try:
        session = ort.InferenceSession(data, session_options(threads),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise CardError(f"{name}: onnxruntime cannot load {card.file}: "
                        f"{str(exc).splitlines()[0][:300]}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != card.input.name:
        raise CardError(f"{name}: the model's inputs are {[i.name for i in inputs]}, the card "
                        f"says [{card.input.name!r}]")
    if _dims(inputs[0].shape) != card.input.shape:
        raise CardError(f"{name}: input {card.input.name!r} has shape "
                        f"{_dims(inputs[0].shape)} in the model, {card.input.shape} in the card")
    if inputs[0].type != "tensor(float)":
        raise CardError(f"{name}: input {card.input.name!r} is {inputs[0].type}, the card "
                        f"says float32")
    outputs = {o.name: o for o in session.get_outputs()}
    for spec in card.outputs:
        if spec.name not in outputs:
            raise CardError(f"{name}: output {spec.name!r} is not in the model (it has "
                            f"{sorted(outputs)})")
    model = LoadedModel(card, path, session)
    # One run on a blank input proves the graph executes and that the outputs
    # have the shapes the card promises (a static check cannot see every graph).
    probe = np.zeros([2 if d is None else d for d in card.input.shape], np.float32)
    try:
        results = model.run(probe)
    except Exception as exc:
        raise CardError(f"{name}: {card.file} fails on a blank input: "
                        f"{str(exc).splitlines()[0][:300]}") from None
    for spec in card.outputs:
        got = list(results[spec.name].shape)
        want = [2 if d is None else d for d in spec.shape]
        if got != want:
            raise CardError(f"{name}: output {spec.name!r} has shape {got} for a batch of 2, "
                            f"the card says {spec.shape}")
    return model
