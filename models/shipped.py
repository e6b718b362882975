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
    #: The operating point: the threshold that reaches this sensitivity on the
    #: validation set (a triage tool should rarely miss).
    target_sensitivity: float = 0.95


RECIPES = {
    "fast_free_fluid": Recipe(
        name="fast_free_fluid", version="1.0.0", in_channels=1, base_channels=8,
        batch=datasets.ultrasound_batch, train_seed=1_001, validation_seed=1_002,
        test_seed=9_001, n_train=6_000, n_validation=600, n_test=1_000, steps=1_600),
    "head_ct_ich": Recipe(
        name="head_ct_ich", version="1.0.0", in_channels=2, base_channels=8,
        batch=datasets.head_ct_batch, train_seed=2_001, validation_seed=2_002,
        test_seed=9_002, n_train=6_000, n_validation=600, n_test=1_000, steps=1_600),
}
