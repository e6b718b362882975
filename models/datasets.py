"""Phantom cases turned into model inputs and ground truth on the model's grid,
through the same preprocessing the server applies (numpy and OpenCV only)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.phantoms import head_ct, ultrasound
from server.inference.cards import CtPreprocessing, UltrasoundPreprocessing, Window
from server.inference.preprocess import ct_resample, ct_tensor, ultrasound_tensor

#: The shipped models' preprocessing, written into their cards.
FAST_PREPROCESSING = UltrasoundPreprocessing(size=(128, 128), mean=0.3, std=0.25)
HEAD_CT_PREPROCESSING = CtPreprocessing(
    pixel_spacing_mm=1.875, size=(128, 128),
    # the brain window and a subdural window (blood vs bone and calcium)
    windows=[Window(level=40, width=80), Window(level=75, width=215)])


@dataclass
class Batch:
    """Inputs [N, C, H, W] float32, truth masks [N, H, W] bool and labels [N] bool."""

    x: np.ndarray
    masks: np.ndarray
    labels: np.ndarray


def _stack(items: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
    x = np.stack([i[0] for i in items])
    masks = np.stack([i[1] for i in items])
    return Batch(x, masks, masks.reshape(len(items), -1).any(1))


def ultrasound_case(rng: np.random.Generator, size: int = 256, fluid: bool | None = None,
                    spec: UltrasoundPreprocessing = FAST_PREPROCESSING,
                    ) -> tuple[np.ndarray, np.ndarray]:
    case = ultrasound.generate(rng, size, fluid)
    x = ultrasound_tensor(case.image, spec)
    height, width = spec.size
    mask = cv2.resize(case.fluid_mask.astype(np.float32), (width, height),
                      interpolation=cv2.INTER_AREA) >= 0.5
    if case.has_fluid and not mask.any():  # a sliver thinner than one model pixel
        mask = cv2.resize(case.fluid_mask.astype(np.float32), (width, height),
                          interpolation=cv2.INTER_AREA) > 0.25
    return x, mask


def ultrasound_batch(seed: int, n: int, size: int = 256) -> Batch:
    rng = np.random.default_rng(seed)
    return _stack([ultrasound_case(rng, size) for _ in range(n)])


def head_ct_case(rng: np.random.Generator, bleed: bool | None = None,
                 spec: CtPreprocessing = HEAD_CT_PREPROCESSING,
                 ) -> tuple[np.ndarray, np.ndarray]:
    case = head_ct.generate(rng, bleed)
    spacing = (case.pixel_spacing_mm, case.pixel_spacing_mm)
    grid, (top, left) = ct_resample(case.hu, spacing, spec)
    # The mask follows the same resampling and crop.
    scale = case.pixel_spacing_mm / spec.pixel_spacing_mm
    resized = cv2.resize(case.bleed_mask.astype(np.float32),
                         (round(case.hu.shape[1] * scale), round(case.hu.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA)
    height, width = spec.size
    mask = np.zeros((height, width), np.float32)
    src_t, src_l = max(top, 0), max(left, 0)
    src_b = min(top + height, resized.shape[0])
    src_r = min(left + width, resized.shape[1])
    mask[src_t - top:src_b - top, src_l - left:src_r - left] = resized[src_t:src_b, src_l:src_r]
    truth = mask >= 0.5
    if case.has_bleed and not truth.any():
        truth = mask > 0.2
    return ct_tensor(grid, spec), truth


def head_ct_batch(seed: int, n: int) -> Batch:
    rng = np.random.default_rng(seed)
    return _stack([head_ct_case(rng) for _ in range(n)])
