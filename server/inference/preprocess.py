"""Turning a validated picture into a model's input tensor, as its card says.

One implementation serves the server, the training scripts and the
evaluation, so that a model is trained on exactly what it will be given.
Inputs here have passed the gate (gating.py): no re-checking.
"""

from __future__ import annotations

import cv2
import numpy as np

from server.inference.cards import CtPreprocessing, UltrasoundPreprocessing


def greyscale(frame: np.ndarray) -> np.ndarray:
    """A uint8 greyscale picture from a greyscale, RGB or RGBA one (Rec. 601 luma)."""
    if frame.ndim == 2:
        return frame
    if frame.shape[2] == 4:
        frame = frame[:, :, :3]
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def ultrasound_tensor(frame_grey: np.ndarray, spec: UltrasoundPreprocessing) -> np.ndarray:
    """[1, H, W] float32 from a uint8 greyscale B-mode frame."""
    height, width = spec.size
    resized = cv2.resize(frame_grey, (width, height), interpolation=cv2.INTER_AREA)
    return ((resized.astype(np.float32) / 255.0 - spec.mean) / spec.std)[None]


def ct_resample(hu: np.ndarray, pixel_spacing_mm: tuple[float, float],
                spec: CtPreprocessing) -> tuple[np.ndarray, tuple[int, int]]:
    """The slice on the model's grid: resampled to the card's pixel spacing and
    cropped (or padded with air) to its size around the body's centre.

    Returns the resampled slice in HU and the crop's top-left corner on the
    resampled grid (to map a result back)."""
    row_mm, col_mm = pixel_spacing_mm
    fx, fy = col_mm / spec.pixel_spacing_mm, row_mm / spec.pixel_spacing_mm
    out_w = max(1, round(hu.shape[1] * fx))
    out_h = max(1, round(hu.shape[0] * fy))
    interp = cv2.INTER_AREA if fx < 1 else cv2.INTER_LINEAR
    resampled = cv2.resize(hu.astype(np.float32), (out_w, out_h), interpolation=interp)
    cy, cx = body_centre(resampled)
    height, width = spec.size
    top, left = cy - height // 2, cx - width // 2
    out = np.full((height, width), spec.pad_hu, np.float32)
    src_t, src_l = max(top, 0), max(left, 0)
    src_b, src_r = min(top + height, out_h), min(left + width, out_w)
    out[src_t - top:src_b - top, src_l - left:src_r - left] = resampled[src_t:src_b, src_l:src_r]
    return out, (top, left)


def body_centre(hu: np.ndarray, threshold_hu: float = -500.0) -> tuple[int, int]:
    """Row and column of the centre of the largest connected non-air region."""
    body = (hu > threshold_hu).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(body, connectivity=8)
    if count <= 1:
        return hu.shape[0] // 2, hu.shape[1] // 2
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top = stats[largest, cv2.CC_STAT_LEFT], stats[largest, cv2.CC_STAT_TOP]
    w, h = stats[largest, cv2.CC_STAT_WIDTH], stats[largest, cv2.CC_STAT_HEIGHT]
    return int(top + h // 2), int(left + w // 2)


def ct_tensor(hu_on_grid: np.ndarray, spec: CtPreprocessing) -> np.ndarray:
    """[C, H, W] float32: one channel per display window, each mapped to 0..1."""
    channels = [np.clip((hu_on_grid - (w.level - w.width / 2)) / w.width, 0.0, 1.0)
                for w in spec.windows]
    return np.stack(channels).astype(np.float32)
