"""The two models GoldenHour ships: how each is trained, evaluated and described.

Seeds are fixed and disjoint: training, validation (the operating point) and
the held-out test set each come from their own generator stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models import datasets

CATALOG = Path(__file__).resolve().parent / "catalog"
#: Checkpoints and export reports (not committed).
BUILD = Path(__file__).resolve().parent.parent / "var" / "models-build"


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    in_channels: int
    base_channels: int
    batch: Callable[[int, int], datasets.Batch]
    train_seed: int
    validation_seed: int
    test_seed: int
    n_train: int
    n_validation: int
    n_test: int
    steps: int
    #: Network shape (models.nets.TinyUNet).
    bottleneck: int = 4
    upsample: str = "nearest"
    #: Optimisation: pictures per step, peak learning rate (linear warm-up,
    #: then cosine decay to zero).
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 0
    #: Loss: per-pixel BCE (positives weighted by `pos_weight`), soft Dice and
    #: the Lovasz hinge over the pictures with a lesion, and the picture-level BCE.
    pos_weight: float = 3.0
    dice_weight: float = 0.5
    lovasz_weight: float = 0.0
    #: The operating point: the threshold that reaches this sensitivity on the
    #: validation set (a triage tool should rarely miss).
    target_sensitivity: float = 0.95


#: 1.1.0: 1.0.0 (1600 steps of 16 on 6000 phantoms, BCE with positives x3 and
#: a soft-Dice term weighted by the share of positives; Dice 0.67 and 0.70)
#: outlined too roughly. About four times the pictures seen, from 16000
#: phantoms, an unweighted BCE (the x3 pushed the 0.5 contour outwards), a full
#: soft-Dice term, the Lovasz hinge (a surrogate of IoU at the 0.5 contour, the
#: one the card's Dice is measured on) and bilinear up-sampling reach Dice
#: 0.92 and 0.88 on validation; the same net (base 8) keeps the runtime's latency.
_RECIPE_1_1 = {"upsample": "bilinear", "batch_size": 32, "lr": 3e-3, "warmup_steps": 200,
               "pos_weight": 1.0, "dice_weight": 1.0, "lovasz_weight": 1.0}

RECIPES = {
    "fast_free_fluid": Recipe(
        name="fast_free_fluid", version="1.1.0", in_channels=1, base_channels=8,
        batch=datasets.ultrasound_batch, train_seed=1_001, validation_seed=1_002,
        test_seed=9_001, n_train=16_000, n_validation=600, n_test=1_000, steps=3_000,
        **_RECIPE_1_1),
    "head_ct_ich": Recipe(
        name="head_ct_ich", version="1.1.0", in_channels=2, base_channels=8,
        batch=datasets.head_ct_batch, train_seed=2_001, validation_seed=2_002,
        test_seed=9_002, n_train=16_000, n_validation=600, n_test=1_000, steps=3_000,
        **_RECIPE_1_1),
}
