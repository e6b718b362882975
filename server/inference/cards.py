"""The model card: what a model is, what it accepts, how its input is made, what
its outputs mean and how well it did, in one JSON file beside the .onnx file.

docs/models.md is the human-readable version of this schema. A card is decoded
and validated once, here; the rest of the runtime handles only valid cards.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union

import msgspec

CARD_SCHEMA_VERSION = 1
#: The suffix that makes a file in the models folder a card.
CARD_SUFFIX = ".card.json"

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
Positive = Annotated[float, msgspec.Meta(gt=0)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Side = Annotated[int, msgspec.Meta(ge=8, le=4096)]


class CardError(Exception):
    """A card that cannot be used; the message names the file and the field."""


class Window(msgspec.Struct, forbid_unknown_fields=True):
    """A CT display window in HU, mapped to 0..1 (one input channel)."""

    level: float
    width: Positive


class UltrasoundPreprocessing(msgspec.Struct, tag="ultrasound_bmode", forbid_unknown_fields=True):
    """Greyscale (Rec. 601 luma), resize the whole frame to `size` (area
    interpolation), scale to 0..1, then (x - mean) / std."""

    size: tuple[Side, Side]
    mean: float = 0.0
    std: Positive = 1.0


class CtPreprocessing(msgspec.Struct, tag="ct_hu", forbid_unknown_fields=True):
    """Hounsfield units (RescaleSlope/Intercept applied), resampled to
    `pixel_spacing_mm`, cropped or padded with `pad_hu` to `size` around the
    body's centre, one channel per window."""

    pixel_spacing_mm: Positive
    size: tuple[Side, Side]
    windows: Annotated[list[Window], msgspec.Meta(min_length=1, max_length=8)]
    pad_hu: float = -1000.0


Preprocessing = Union[UltrasoundPreprocessing, CtPreprocessing]


class TensorSpec(msgspec.Struct, forbid_unknown_fields=True):
    """A model input or output: name in the ONNX graph, shape (null for the
    dynamic batch axis), element type and what it means."""

    name: str
    shape: list[Annotated[int, msgspec.Meta(ge=1)] | None]
    dtype: Literal["float32"] = "float32"
    meaning: str = ""


class Threshold(msgspec.Struct, forbid_unknown_fields=True):
    """The decision threshold on one output and the operating point it was chosen for."""

    output: str
    value: Probability
    operating_point: str


class UltrasoundGate(msgspec.Struct, tag="ultrasound", forbid_unknown_fields=True):
    """Frames the model accepts: size in pixels and, when known, the frame rate."""

    min_size: tuple[Side, Side] = (128, 128)
    max_size: tuple[Side, Side] = (2160, 3840)
    min_fps: Positive = 8.0
    #: Body parts accepted when a DICOM file names one (an unnamed part passes).
    body_parts: list[str] = []


class HeadCtGate(msgspec.Struct, tag="head_ct", forbid_unknown_fields=True):
    """Slices the model accepts: axial head CT in plausible Hounsfield units
    whose cross-section looks like a head (bone ring around brain)."""

    body_parts: list[str] = msgspec.field(default_factory=lambda: ["HEAD", "BRAIN", "SKULL"])
    max_tilt_deg: Positive = 30.0
    #: Lossy compression alters Hounsfield values; above this ratio (or of an
    #: unstated ratio) a slice is refused.
    max_lossy_ratio: Positive = 15.0
    pixel_spacing_mm: tuple[Positive, Positive] = (0.2, 1.5)
    head_width_mm: tuple[Positive, Positive] = (110.0, 210.0)
    head_length_mm: tuple[Positive, Positive] = (130.0, 250.0)
    min_bone_ray_fraction: Probability = 0.8
    min_brain_fraction: Probability = 0.7


Gate = Union[UltrasoundGate, HeadCtGate]


class Evaluation(msgspec.Struct, forbid_unknown_fields=True):
    """Figures measured on a held-out set; see docs/models.md for definitions."""

    dataset: str
    n: Annotated[int, msgspec.Meta(ge=1)]
    n_positive: int
    seed: int
    auc: Probability
    auc_ci95: tuple[Probability, Probability]
    sensitivity: Probability
    specificity: Probability
    threshold: Probability
    dice: Probability | None = None
    peak_in_lesion: Probability | None = None
    torch_onnx_max_abs_diff: float | None = None
    notes: str = ""


class TrainingData(msgspec.Struct, forbid_unknown_fields=True):
    synthetic: bool
    source: str
    n: int = 0
    seed: int | None = None


class ModelCard(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """One model's card. Unknown fields are kept out (ignored) so that newer cards
    load in older servers; every listed field without a default is required."""

    schema_version: Literal[1]
    name: Name
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    file: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+\.onnx$")]
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    task: Literal["segmentation", "detection"]
    modality: Literal["US", "CT"]
    description: str
    input: TensorSpec
    outputs: Annotated[list[TensorSpec], msgspec.Meta(min_length=1)]
    #: The output holding one probability per input (the image-level answer).
    probability_output: str
    #: The output holding a per-pixel map (segmentation or localisation), if any.
    map_output: str | None = None
    preprocessing: Preprocessing
    gate: Gate
    threshold: Threshold
    training_data: TrainingData
    evaluation: Evaluation | None = None
    intended_use: str
    not_for_clinical_use: bool
    limitations: list[str] = []


def load_card(path: Path) -> ModelCard:
    """Decode and check one card file; CardError names the file and the problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CardError(f"{path.name}: cannot read: {exc.strerror}") from None
    try:
        card = msgspec.json.decode(raw, type=ModelCard)
    except msgspec.ValidationError as exc:
        raise CardError(f"{path.name}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise CardError(f"{path.name}: not valid JSON: {exc}") from None
    names = {o.name for o in card.outputs}
    if card.probability_output not in names:
        raise CardError(f"{path.name}: `probability_output` {card.probability_output!r} "
                        f"is not among the outputs {sorted(names)}")
    if card.map_output is not None and card.map_output not in names:
        raise CardError(f"{path.name}: `map_output` {card.map_output!r} is not among the "
                        f"outputs {sorted(names)}")
    if card.threshold.output != card.probability_output:
        raise CardError(f"{path.name}: `threshold.output` must be the probability output")
    if card.training_data.synthetic and not card.not_for_clinical_use:
        raise CardError(f"{path.name}: a model trained on synthetic data must set "
                        f"`not_for_clinical_use: true`")
    if card.modality == "US" and not isinstance(card.preprocessing, UltrasoundPreprocessing):
        raise CardError(f"{path.name}: modality US needs `ultrasound_bmode` preprocessing")
    if card.modality == "CT" and not isinstance(card.preprocessing, CtPreprocessing):
        raise CardError(f"{path.name}: modality CT needs `ct_hu` preprocessing")
    channels = len(card.preprocessing.windows) if isinstance(card.preprocessing,
                                                             CtPreprocessing) else 1
    expected = [None, channels, *card.preprocessing.size]
    if card.input.shape != expected:
        raise CardError(f"{path.name}: `input.shape` {card.input.shape} does not match the "
                        f"preprocessing, which makes {expected}")
    return card


def encode_card(card: ModelCard) -> bytes:
    return msgspec.json.format(msgspec.json.encode(card), indent=2) + b"\n"


def is_card(path: Path) -> bool:
    return path.name.endswith(CARD_SUFFIX)


def model_name_from_card(path: Path) -> str:
    return re.sub(re.escape(CARD_SUFFIX) + "$", "", path.name)
