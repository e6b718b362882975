"""The figures on a model card, computed the same way by the build and by the tests
(numpy only)."""

from __future__ import annotations

import math

import numpy as np


def _midranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    n = len(x)
    ranks = np.empty(n, float)
    i = 0
    while i < n:
        j = i
        while j < n and sorted_x[j] == sorted_x[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n, float)
    out[order] = ranks
    return out


def auc_with_ci(scores: np.ndarray, labels: np.ndarray, z: float = 1.959964,
                ) -> tuple[float, tuple[float, float]]:
    """ROC AUC and its 95% confidence interval by DeLong's method (deterministic:
    no bootstrap seed to report)."""
    labels = labels.astype(bool)
    pos, neg = scores[labels].astype(float), scores[~labels].astype(float)
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        raise ValueError("AUC needs positives and negatives")
    tz = _midranks(np.concatenate([pos, neg]))
    tx, ty = _midranks(pos), _midranks(neg)
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v01 = (tz[:m] - tx) / n           # structural components of the positives
    v10 = 1.0 - (tz[m:] - ty) / m     # ... and of the negatives
    var = np.var(v01, ddof=1) / m + np.var(v10, ddof=1) / n
    half = z * math.sqrt(max(var, 0.0))
    return float(auc), (float(max(0.0, auc - half)), float(min(1.0, auc + half)))


def threshold_for_sensitivity(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity (score >= threshold) reaches `target`."""
    pos = np.sort(scores[labels.astype(bool)])
    k = math.floor((1.0 - target) * len(pos))
    return float(pos[min(k, len(pos) - 1)])


def sensitivity_specificity(scores: np.ndarray, labels: np.ndarray, threshold: float,
                            ) -> tuple[float, float]:
    labels = labels.astype(bool)
    called = scores >= threshold
    return float(called[labels].mean()), float((~called[~labels]).mean())


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * inter / total)


def case_dice(prob_maps: np.ndarray, masks: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Per-case Dice over the cases with a lesion, map thresholded at `level`."""
    return np.array([dice(p >= level, t) for p, t in zip(prob_maps, masks) if t.any()])


def mean_dice(prob_maps: np.ndarray, masks: np.ndarray, level: float = 0.5) -> float:
    return float(np.mean(case_dice(prob_maps, masks, level)))


def peak_in_lesion(prob_maps: np.ndarray, masks: np.ndarray) -> float:
    """Over the cases with a lesion: how often the map's highest pixel lies in it."""
    hits = []
    for p, t in zip(prob_maps, masks):
        if t.any():
            hits.append(bool(t.reshape(-1)[int(np.argmax(p))]))
    return float(np.mean(hits))
