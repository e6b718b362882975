"""Drawing a result over its picture: the one renderer for the browser's
snapshots, the headset panel and recordings, so that all show the same thing.

Contours in the model's colour, the probability map as a heatmap with a colour
bar, and a label naming the model, its version and, when its card says so,
NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import cv2
import numpy as np

from server.inference.runtime import InferenceResult

_CONTOUR_BGR = (60, 220, 60)
_WARNING_BGR = (40, 40, 230)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BAR_WIDTH = 14


def _bgr(picture: np.ndarray) -> np.ndarray:
    if picture.ndim == 2:
        return cv2.cvtColor(picture, cv2.COLOR_GRAY2BGR)
    return picture.copy()


def label_lines(result: InferenceResult) -> list[str]:
    verdict = "POSITIVE" if result.positive else "negative"
    lines = [f"{result.model} v{result.version}",
             f"p={result.probability:.2f} (threshold {result.threshold:.2f}): {verdict}"]
    if result.not_for_clinical_use:
        lines.append("NOT FOR CLINICAL USE - synthetic training data")
    return lines


def render(picture: np.ndarray, result: InferenceResult, heatmap: bool = True,
           map_uv_box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> np.ndarray:
    """A BGR uint8 copy of `picture` (greyscale or BGR uint8) with the result drawn on.

    `map_uv_box` is where the model's map lies on the picture (u0, v0, u1, v1
    in normalised coordinates): the whole frame for ultrasound; for CT the
    crop the preprocessing took.
    """
    out = _bgr(picture)
    height, width = out.shape[:2]
    bar = width >= 64 and heatmap and result.probability_map is not None
    if heatmap and result.probability_map is not None:
        u0, v0, u1, v1 = map_uv_box
        x0, y0 = round(u0 * width), round(v0 * height)
        x1, y1 = round(u1 * width), round(v1 * height)
        resized = cv2.resize(result.probability_map.astype(np.float32),
                             (max(1, x1 - x0), max(1, y1 - y0)), interpolation=cv2.INTER_LINEAR)
        full = np.zeros((height, width), np.float32)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        full[sy0:sy1, sx0:sx1] = resized[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
        colours = cv2.applyColorMap((full * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
        alpha = np.clip((full - 0.1) / 0.4, 0, 0.6)[..., None]
        out = (out * (1 - alpha) + colours * alpha).astype(np.uint8)
    scale = np.array([width, height], np.float32)
    polygons = [np.round(np.array(p, np.float32) * scale - 0.5).astype(np.int32)
                for p in result.contours_uv_norm]
    cv2.polylines(out, polygons, True, _CONTOUR_BGR, max(1, width // 320), cv2.LINE_AA)
    if bar:
        _colour_bar(out)
    _label(out, label_lines(result), result.not_for_clinical_use)
    return out


def _colour_bar(out: np.ndarray) -> None:
    height, width = out.shape[:2]
    top, bottom = int(height * 0.2), int(height * 0.8)
    x0 = width - _BAR_WIDTH - 30
    ramp = np.linspace(255, 0, bottom - top).astype(np.uint8)[:, None]
    colours = cv2.applyColorMap(np.repeat(ramp, _BAR_WIDTH, 1), cv2.COLORMAP_INFERNO)
    out[top:bottom, x0:x0 + _BAR_WIDTH] = colours
    cv2.rectangle(out, (x0, top), (x0 + _BAR_WIDTH - 1, bottom - 1), (255, 255, 255), 1)
    for value, y in ((1.0, top), (0.5, (top + bottom) // 2), (0.0, bottom)):
        cv2.putText(out, f"{value:.1f}", (x0 + _BAR_WIDTH + 3, y + 4), _FONT, 0.35,
                    (255, 255, 255), 1, cv2.LINE_AA)


def _label(out: np.ndarray, lines: list[str], warning: bool) -> None:
    scale = max(0.35, out.shape[1] / 1400)
    y = int(18 * scale / 0.45)
    for i, line in enumerate(lines):
        colour = _WARNING_BGR if warning and i == len(lines) - 1 else (255, 255, 255)
        (w, h), _ = cv2.getTextSize(line, _FONT, scale, 1)
        cv2.rectangle(out, (4, y - h - 4), (8 + w, y + 4), (0, 0, 0), -1)
        cv2.putText(out, line, (6, y), _FONT, scale, colour, 1, cv2.LINE_AA)
        y += h + 10
