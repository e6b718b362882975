"""Running models without blocking the event loop.

The loop carries live media, so it only hands work over: preprocessing,
onnxruntime and contour extraction all run on one inference thread (its own
executor, so a slow model never queues behind other blocking work). For live
video, LatestFrameRunner keeps at most one frame waiting and replaces it when
a newer one arrives: a result about an old frame is worth less than none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from server.inference.cards import CtPreprocessing, UltrasoundPreprocessing
from server.inference.preprocess import ct_resample, ct_tensor, ultrasound_tensor
from server.inference.registry import LoadedModel

if TYPE_CHECKING:
    from server.inference.gating import CtSlice

log = logging.getLogger(__name__)

#: Contours simpler than this (in model pixels) are not worth sending.
_MIN_CONTOUR_AREA_PX = 4.0
_MAX_CONTOUR_POINTS = 64


@dataclass(frozen=True)
class InferenceResult:
    """One model's answer about one picture, with where it came from."""

    model: str
    version: str
    not_for_clinical_use: bool
    probability: float
    threshold: float
    #: The per-pixel map on the model's grid, or None for a classifier.
    probability_map: np.ndarray | None = field(repr=False)
    #: Outlines where the map is >= 0.5, as polygons of (u, v) in normalised
    #: coordinates of the input picture (0..1, origin top-left).
    contours_uv_norm: list[list[tuple[float, float]]]
    #: Where the input came from (file, SOP instance UID, track, RTP timestamp...).
    provenance: dict
    inference_ms: float

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold


def _contours(prob_map: np.ndarray, to_uv: Callable[[np.ndarray], np.ndarray],
              ) -> list[list[tuple[float, float]]]:
    binary = (prob_map >= 0.5).astype(np.uint8)
    found, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for contour in sorted(found, key=cv2.contourArea, reverse=True):
        if cv2.contourArea(contour) < _MIN_CONTOUR_AREA_PX:
            continue
        epsilon = 0.5
        while len(contour) > _MAX_CONTOUR_POINTS:
            contour = cv2.approxPolyDP(contour, epsilon, True)
            epsilon *= 1.5
        uv = to_uv(contour.reshape(-1, 2).astype(np.float32))
        out.append([(round(float(u), 4), round(float(v), 4)) for u, v in uv])
    return out[:16]


class InferenceRuntime:
    """The one place models run; owns its inference thread (start/close)."""

    def __init__(self, workers: int = 1) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers,
                                             thread_name_prefix="inference")

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _in_thread(self, fn: Callable, *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def ultrasound(self, model: LoadedModel, frame_grey: np.ndarray, provenance: dict,
                         ) -> InferenceResult:
        return await self._in_thread(ultrasound_now, model, frame_grey, provenance)

    async def head_ct(self, model: LoadedModel, slices: list[CtSlice]) -> list[InferenceResult]:
        """A slice or a series (run as one batch)."""
        return await self._in_thread(head_ct_now, model, slices)


def ultrasound_now(model: LoadedModel, frame_grey: np.ndarray, provenance: dict,
                   ) -> InferenceResult:
    """Blocking: preprocess, run and outline one greyscale frame."""
    spec = model.card.preprocessing
    assert isinstance(spec, UltrasoundPreprocessing)
    started = time.perf_counter()
    outputs = model.run(ultrasound_tensor(frame_grey, spec)[None])
    height, width = spec.size
    scale = np.array([1.0 / width, 1.0 / height], np.float32)
    return _result(model, outputs, 0, lambda xy: (xy + 0.5) * scale, provenance, started)


def head_ct_now(model: LoadedModel, slices: list[CtSlice]) -> list[InferenceResult]:
    """Blocking: preprocess and run a batch of slices, outline each."""
    spec = model.card.preprocessing
    assert isinstance(spec, CtPreprocessing)
    started = time.perf_counter()
    grids = [ct_resample(s.hu, s.pixel_spacing_mm, spec) for s in slices]
    batch = np.stack([ct_tensor(g, spec) for g, _ in grids])
    outputs = model.run(batch)
    results = []
    for i, (s, (_, (top, left))) in enumerate(zip(slices, grids)):
        row_mm, col_mm = s.pixel_spacing_mm
        fx = spec.pixel_spacing_mm / col_mm / s.hu.shape[1]
        fy = spec.pixel_spacing_mm / row_mm / s.hu.shape[0]

        def to_uv(xy: np.ndarray, top: int = top, left: int = left, fx: float = fx,
                  fy: float = fy) -> np.ndarray:
            return np.stack([(xy[:, 0] + 0.5 + left) * fx, (xy[:, 1] + 0.5 + top) * fy], 1)
        results.append(_result(model, outputs, i, to_uv, s.provenance, started,
                               per_item=len(slices)))
    return results


def _result(model: LoadedModel, outputs: dict[str, np.ndarray], index: int,
            to_uv: Callable[[np.ndarray], np.ndarray], provenance: dict, started: float,
            per_item: int = 1) -> InferenceResult:
    card = model.card
    prob_map = None
    contours: list = []
    if card.map_output is not None:
        prob_map = outputs[card.map_output][index].reshape(outputs[card.map_output].shape[-2:])
        contours = _contours(prob_map, to_uv)
    return InferenceResult(
        model=card.name, version=card.version, not_for_clinical_use=card.not_for_clinical_use,
        probability=float(outputs[card.probability_output][index]),
        threshold=card.threshold.value, probability_map=prob_map,
        contours_uv_norm=contours, provenance=dict(provenance),
        inference_ms=(time.perf_counter() - started) * 1000 / per_item)


@dataclass
class LiveFrame:
    """A decoded greyscale frame of a live track and its RTP timestamp."""

    grey: np.ndarray
    rtp_timestamp: int
    received_at: float


class LatestFrameRunner:
    """Live inference on one video track: latest frame wins.

    `submit` never blocks and never queues more than one frame: a frame that
    arrives while another waits replaces it (counted in `dropped`). One task,
    started by `start` and cancelled by `stop`, runs each waiting frame and
    hands the result to `on_result` on the event loop.
    """

    def __init__(self, runtime: InferenceRuntime, model: LoadedModel,
                 on_result: Callable[[InferenceResult, LiveFrame], None],
                 provenance: dict) -> None:
        self._runtime = runtime
        self._model = model
        self._on_result = on_result
        self._provenance = provenance
        self._pending: LiveFrame | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.submitted = 0
        self.dropped = 0
        self.completed = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def submit(self, frame: LiveFrame) -> None:
        self.submitted += 1
        if self._pending is not None:
            self.dropped += 1
        self._pending = frame
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            frame, self._pending = self._pending, None
            if frame is None:
                continue
            provenance = dict(self._provenance, rtp_timestamp=frame.rtp_timestamp)
            try:
                result = await self._runtime.ultrasound(self._model, frame.grey, provenance)
            except Exception:  # a model failing on one frame must not end live inference
                log.exception("live inference failed", extra={"model": self._model.name})
                continue
            self.completed += 1
            self._on_result(result, frame)
