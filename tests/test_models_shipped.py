"""The shipped models: their files are what their cards say, and their cards'
figures hold on phantoms generated afresh with seeds they have never seen."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import onnx
import pytest

from models import datasets, metrics
from models.evaluate import measure
from server.inference.cards import CARD_SUFFIX, ModelCard, load_card
from server.inference.registry import DEFAULT_MODELS_DIR, ModelRegistry

SHIPPED = ("fast_free_fluid", "head_ct_ich")
#: Fresh sets are smaller than the cards' (n = 1000) to keep the suite quick;
#: the tolerances below widen with the smaller n.
N_FRESH = 200
FRESH_SEED = {"fast_free_fluid": 31_337, "head_ct_ich": 31_338}


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load(DEFAULT_MODELS_DIR)


def card_of(name: str) -> ModelCard:
    return load_card(DEFAULT_MODELS_DIR / f"{name}{CARD_SUFFIX}")


def test_the_shipped_models_load_and_their_files_match_their_cards(registry: ModelRegistry):
    assert not registry.problems, registry.problems
    assert sorted(registry.names) == sorted(SHIPPED)
    for name in SHIPPED:
        card = card_of(name)
        path = DEFAULT_MODELS_DIR / card.file
        assert hashlib.sha256(path.read_bytes()).hexdigest() == card.sha256
        assert path.stat().st_size < 2 * 1024 * 1024
        proto = onnx.load(str(path), load_external_data=False)
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert not [t for t in proto.graph.initializer
                    if t.data_location == onnx.TensorProto.EXTERNAL]  # weights inside
        assert not path.with_name(path.name + ".data").exists()
        batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.dim_value  # dynamic batch
        assert card.not_for_clinical_use and card.training_data.synthetic
        ev = card.evaluation
        assert ev is not None and ev.n >= 1000 and ev.seed != card.training_data.seed
        assert ev.torch_onnx_max_abs_diff is not None and ev.torch_onnx_max_abs_diff <= 1e-4


def _tolerances(card: ModelCard, figures) -> dict[str, float]:
    """How far a fresh set of N_FRESH may land from the card, from the card's own
    uncertainty: the AUC CI half-width scaled to the smaller set (both sets
    vary, hence the sum), 3 binomial standard errors for the proportions and 3
    standard errors of the mean for Dice."""
    ev = card.evaluation
    half = (ev.auc_ci95[1] - ev.auc_ci95[0]) / 2
    auc_tol = max(0.01, half * (1 + math.sqrt(ev.n / figures.n)))

    def prop(p: float, n: int) -> float:
        return max(0.03, 3 * math.sqrt(max(p * (1 - p), 0.01) / n))

    n_pos, n_neg = figures.n_positive, figures.n - figures.n_positive
    return {"auc": auc_tol, "sensitivity": prop(ev.sensitivity, n_pos),
            "specificity": prop(ev.specificity, n_neg),
            "peak_in_lesion": prop(ev.peak_in_lesion, n_pos),
            "dice": max(0.02, 3 * figures.dice_sd * math.sqrt(1 / n_pos + 1 / ev.n_positive))}


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_reproduces_its_card_on_fresh_phantoms(registry: ModelRegistry,
                                                               name: str):
    card = card_of(name)
    batch = {"fast_free_fluid": datasets.ultrasound_batch,
             "head_ct_ich": datasets.head_ct_batch}[name](FRESH_SEED[name], N_FRESH)
    figures = measure(registry.get(name).session, batch, card.threshold.value)
    tol = _tolerances(card, figures)
    ev = card.evaluation
    for field in ("auc", "sensitivity", "specificity", "dice", "peak_in_lesion"):
        got, want = getattr(figures, field), getattr(ev, field)
        assert abs(got - want) <= tol[field], \
            f"{name}: {field} {got:.4f} on fresh phantoms, card says {want:.4f} (+-{tol[field]:.3f})"


def test_the_auc_confidence_interval_matches_a_bootstrap():
    """DeLong's interval (what the cards report) against a plain bootstrap."""
    rng = np.random.default_rng(5)
    labels = rng.random(600) < 0.4
    scores = labels * 1.2 + rng.standard_normal(600)
    auc, (low, high) = metrics.auc_with_ci(scores, labels)
    boot = []
    for _ in range(400):
        idx = rng.integers(0, 600, 600)
        boot.append(metrics.auc_with_ci(scores[idx], labels[idx])[0])
    b_low, b_high = np.percentile(boot, [2.5, 97.5])
    assert abs(low - b_low) < 0.015 and abs(high - b_high) < 0.015
    assert low < auc < high
