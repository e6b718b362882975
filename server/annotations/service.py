"""The annotation service: anchors what experts draw on a crew's video in 3D, against
the pose of the frame they drew on, and keeps the room's current annotations.

It knows rooms only through what it is handed (a pose, an author, a crew's
spatial map) and returns typed results; the room decides who hears about them.
Anchoring and map rebuilds run in a worker thread: a long stroke takes a few
milliseconds, a map compaction much longer, and neither may stall the media on
the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from vision import measure
from vision.anchoring import AnchoredShape, Shape, ShapeKind, anchor_shape
from vision.camera import Intrinsics
from vision.spatial_map import SpatialMap

#: Colours given to experts in the order they first annotate (distinct on video).
PALETTE = ("#ff3b30", "#0a84ff", "#ffd60a", "#30d158", "#bf5af2", "#ff9f0a", "#64d2ff", "#ff375f")


class AnnotationRefused(Exception):
    """An annotation request that cannot be honoured; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


#: Shapes with at most this many points (a point, a ruler, an arrow, most
#: freehand strokes) are anchored on the event loop: anchoring hardly depends on
#: the point count (0.9 ms p50 for 8 to 128 points, 1.2 ms for 256, with the
#: 85k-triangle scene). Handed to the anchoring thread instead, a 40-sample
#: stroke took 12 ms p50 / 81 ms p99 in the server on the loaded round-trip
#: bench: the thread waits for the GIL again after every open3d and numpy call.
INLINE_MAX_POINTS = 256
#: Deleted annotations kept per author for redo.
TRASH_PER_AUTHOR = 50


@dataclass(frozen=True)
class Author:
    peer_id: str
    name: str
    color: str


@dataclass(frozen=True)
class FramePose:
    """The pose and camera of the frame an annotation was drawn on."""

    rtp_timestamp: int
    T_world_camera: np.ndarray
    intrinsics: Intrinsics


@dataclass(frozen=True)
class SharedImage:
    """An image an expert hung in the scene, as a panel of `width_m` x `height_m`."""

    mime: str
    data: bytes
    width_px: int
    height_px: int
    width_m: float
    height_m: float


@dataclass(frozen=True)
class Annotation:
    annotation_id: str
    author: Author
    kind: ShapeKind
    text: str | None
    crew_peer_id: str
    producer_id: str
    rtp_timestamp: int
    anchored: AnchoredShape
    measurements: dict[str, measure.Measurement]
    created_ms: float
    client_ref: str | None
    anchor_ms: float
    image: SharedImage | None = None


def measurements_of(anchored: AnchoredShape) -> dict[str, measure.Measurement]:
    """The measurements a shape of this kind shows its users."""
    if anchored.kind == ShapeKind.RULER:
        return {"distance": measure.distance(anchored)}
    if anchored.kind == ShapeKind.ANGLE:
        return {"angle": measure.angle(anchored)}
    if anchored.kind in (ShapeKind.POLYGON, ShapeKind.ELLIPSE):
        return {"area": measure.area(anchored), "perimeter": measure.path_length(anchored)}
    if anchored.kind in (ShapeKind.STROKE, ShapeKind.ARROW):
        return {"length": measure.path_length(anchored)}
    return {}


class AnnotationService:
    """One room's annotations and each crew's spatial map."""

    def __init__(self, *, max_annotations: int = 500, executor: ThreadPoolExecutor | None = None) -> None:
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="anchoring")
        self._owns_executor = executor is None
        self._maps: dict[str, SpatialMap] = {}
        self._annotations: OrderedDict[str, Annotation] = OrderedDict()
        self._colors: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._max = max_annotations
        #: author peer id -> their deleted annotations (oldest first), for redo
        self._trash: dict[str, dict[str, Annotation]] = {}

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The worker thread for geometry work (anchoring, map rebuilds, visibility)."""
        return self._executor

    def close(self) -> None:
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # --- authors and maps -------------------------------------------------------

    def author(self, peer_id: str, name: str) -> Author:
        color = self._colors.get(peer_id)
        if color is None:
            color = PALETTE[len(self._colors) % len(PALETTE)]
            self._colors[peer_id] = color
        return Author(peer_id, name, color)

    def spatial_map(self, crew_peer_id: str) -> SpatialMap:
        spatial_map = self._maps.get(crew_peer_id)
        if spatial_map is None:
            spatial_map = self._maps[crew_peer_id] = SpatialMap()
        return spatial_map

    def map_triangles(self, crew_peer_id: str) -> int:
        """Triangles in a crew's spatial map now (0 before its first block)."""
        spatial_map = self._maps.get(crew_peer_id)
        return spatial_map.snapshot().triangle_count if spatial_map is not None else 0

    async def set_map_block(self, crew_peer_id: str, block_id: str, vertices: np.ndarray, triangles: np.ndarray) -> None:
        spatial_map = self.spatial_map(crew_peer_id)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, spatial_map.set_block, block_id, vertices, triangles)
        except ValueError as exc:
            raise AnnotationRefused("invalid_field", f"map_block: {exc}") from None

    async def remove_map_block(self, crew_peer_id: str, block_id: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self.spatial_map(crew_peer_id).remove_block, block_id)
        except KeyError as exc:
            raise AnnotationRefused("not_found", str(exc.args[0])) from None

    # --- annotations ---------------------------------------------------------------

    @property
    def annotations(self) -> list[Annotation]:
        return list(self._annotations.values())

    async def anchor(
        self,
        author: Author,
        crew_peer_id: str,
        producer_id: str,
        frame: FramePose,
        kind: str,
        uv_norm: list[list[float]],
        text: str | None = None,
        client_ref: str | None = None,
        image: SharedImage | None = None,
    ) -> Annotation:
        """Anchor one shape drawn on `frame` of a crew's video and keep it."""
        if len(self._annotations) >= self._max:
            raise AnnotationRefused(
                "too_many_annotations", f"the room holds {self._max} annotations; delete some first"
            )
        try:
            shape = Shape.checked(kind, uv_norm)
        except ValueError as exc:
            raise AnnotationRefused("invalid_field", f"annotate: {exc}") from None
        snapshot = self.spatial_map(crew_peer_id).snapshot()
        loop = asyncio.get_running_loop()

        def work() -> tuple[AnchoredShape, dict[str, measure.Measurement], float]:
            start = time.perf_counter()
            anchored = anchor_shape(shape, frame.T_world_camera, frame.intrinsics, snapshot)
            return anchored, measurements_of(anchored), (time.perf_counter() - start) * 1e3

        try:
            if len(uv_norm) <= INLINE_MAX_POINTS:
                # About 1 ms: cheaper than the thread hop, which on a busy 2-core
                # machine costs up to two GIL switch intervals (server.app sets 1 ms).
                anchored, measurements, anchor_ms = work()
            else:
                anchored, measurements, anchor_ms = await loop.run_in_executor(self._executor, work)
        except ValueError as exc:
            raise AnnotationRefused("invalid_field", f"annotate: {exc}") from None
        annotation = Annotation(
            annotation_id=f"a{next(self._ids)}",
            author=author,
            kind=shape.kind,
            text=text,
            crew_peer_id=crew_peer_id,
            producer_id=producer_id,
            rtp_timestamp=frame.rtp_timestamp,
            anchored=anchored,
            measurements=measurements,
            created_ms=time.time() * 1e3,
            client_ref=client_ref,
            anchor_ms=anchor_ms,
            image=image,
        )
        self._annotations[annotation.annotation_id] = annotation
        return annotation

    def remove(self, peer_id: str, annotation_id: str) -> str:
        """Delete one of `peer_id`'s own annotations; returns its id."""
        annotation = self._annotations.get(annotation_id)
        if annotation is None:
            raise AnnotationRefused("not_found", f"no annotation {annotation_id!r} in this room")
        if annotation.author.peer_id != peer_id:
            raise AnnotationRefused(
                "forbidden", f"annotation {annotation_id!r} belongs to {annotation.author.name}; only its author may delete it"
            )
        self._discard(self._annotations.pop(annotation_id))
        return annotation_id

    def clear(self, peer_id: str) -> list[str]:
        """Delete all of `peer_id`'s annotations; returns their ids."""
        mine = [a.annotation_id for a in self._annotations.values() if a.author.peer_id == peer_id]
        for annotation_id in mine:
            self._discard(self._annotations.pop(annotation_id))
        return mine

    def _discard(self, annotation: Annotation) -> None:
        """Keep a deleted annotation for its author's redo (the last TRASH_PER_AUTHOR)."""
        trash = self._trash.setdefault(annotation.author.peer_id, {})
        trash[annotation.annotation_id] = annotation
        while len(trash) > TRASH_PER_AUTHOR:
            del trash[next(iter(trash))]

    def restore(self, peer_id: str, annotation_id: str) -> Annotation:
        """Put back one of `peer_id`'s deleted annotations, anchored exactly as it was:
        redo must not depend on the frame's pose still being kept (10 s)."""
        annotation = self._trash.get(peer_id, {}).pop(annotation_id, None)
        if annotation is None:
            raise AnnotationRefused(
                "not_found", f"annotation_restore: {annotation_id!r} is not one of your deleted annotations")
        if len(self._annotations) >= self._max:
            self._trash[peer_id][annotation_id] = annotation
            raise AnnotationRefused(
                "too_many_annotations", f"the room holds {self._max} annotations; delete some first")
        self._annotations[annotation_id] = annotation
        return annotation

    def forget_author(self, peer_id: str) -> None:
        """An author left: their deleted annotations can no longer be restored."""
        self._trash.pop(peer_id, None)
