"""A room's annotations: turns annotation messages from its peers into calls on the
annotation service, and tells every peer what changed.

Who may do what: experts (and crews) draw; only an author deletes their own;
only a crew sends its spatial map. An annotation is anchored against the pose
the crew sent for the frame it was drawn on, found by RTP timestamp.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import cv2
import numpy as np

from server.annotations.service import (
    Annotation,
    AnnotationRefused,
    AnnotationService,
    FramePose,
    SharedImage,
)
from server.signaling import messages as m
from vision.anchoring import Shape, anchor_shape
from vision.camera import Intrinsics, check_pose
from vision.reprojection import reproject

if TYPE_CHECKING:
    from server.rooms.peer import Peer
    from server.rooms.room import Room

log = logging.getLogger(__name__)

#: Chromium reports some frames' RTP timestamps a tick or two below what was sent.
_RTP_SLACK_TICKS = 2
#: Laser points per second per peer; more are dropped (it is a pointer, not a record).
_LASER_RATE_HZ = 30
#: How long an annotation waits for its frame's pose, which travels on the data
#: channel and may arrive after the frame itself was shown.
_POSE_WAIT_S = 2.0
#: How often the room works out which annotation points a crew's camera cannot
#: see (occlusion changes as fast as the wearer moves; 5 Hz is plenty for dashes).
_VISIBILITY_INTERVAL_S = 0.2
_PANEL_WIDTH_M = 0.3


def _runs(flags: np.ndarray) -> list[list[int]]:
    """[start, end) runs of True in a boolean array."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return edges.reshape(-1, 2).tolist()


def annotation_message(annotation: Annotation) -> m.AnnotationInfo:
    anchored = annotation.anchored
    return m.AnnotationInfo(
        annotation_id=annotation.annotation_id,
        author_peer_id=annotation.author.peer_id,
        author_name=annotation.author.name,
        color=annotation.author.color,
        kind=annotation.kind.value,
        text=annotation.text,
        crew_peer_id=annotation.crew_peer_id,
        producer_id=annotation.producer_id,
        rtp_timestamp=annotation.rtp_timestamp,
        points_world_m=np.round(anchored.points_world_m, 6).tolist(),
        normals_world=np.round(anchored.normals_world, 4).tolist(),
        anchoring=anchored.anchoring.astype(int).tolist(),
        sigma_m=np.round(anchored.sigma_m, 6).tolist(),
        measurements=[
            m.MeasurementInfo(name=name, value=round(x.value, 2), sigma=round(x.sigma, 2), unit=x.unit, on_map=x.on_map)
            for name, x in annotation.measurements.items()
        ],
        client_ref=annotation.client_ref,
        created_ms=annotation.created_ms,
        anchor_ms=round(annotation.anchor_ms, 3),
        image_mime=annotation.image.mime if annotation.image else None,
        image_data=annotation.image.data if annotation.image else None,
        panel_width_m=annotation.image.width_m if annotation.image else None,
        panel_height_m=annotation.image.height_m if annotation.image else None,
    )


class RoomAnnotations:
    """The annotation side of one room."""

    def __init__(self, room: Room) -> None:
        self._room = room
        self.service = AnnotationService()
        # Visibility is re-checked five times a second per crew camera. Shapes
        # too long to anchor on the event loop go to the anchoring thread, where
        # they queued behind those checks: up to 40 ms on a loaded 2-core
        # machine (bench/annotation_roundtrip.py). Map snapshots may be ray-cast
        # from any thread.
        self.visibility_executor = ThreadPoolExecutor(max_workers=1,
                                                      thread_name_prefix="visibility")
        self._laser_at: dict[str, float] = {}
        #: Per expert, the pose of the frame they froze (outlives the 10 s history).
        self._frozen: dict[str, m.CameraPose] = {}
        self._visibility_at: dict[str, float] = {}
        self._visibility_busy: set[str] = set()
        #: The last visibility told to the room, per producer: sent again only when
        #: it changes, and to each newcomer.
        self._visibility_told: dict[str, m.AnnotationVisibility] = {}
        #: Visibility computations finished (sent or not): for tests and stats.
        self.visibility_checks = 0
        self._tasks: set[asyncio.Task] = set()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.visibility_executor.shutdown(wait=False, cancel_futures=True)
        self.service.close()

    def on_pose(self, crew_peer_id: str, pose: m.CameraPose) -> None:
        """A crew's frame pose arrived: now and then, tell the room which annotation
        points that camera cannot see (peers draw those dashed)."""
        producer_id = pose.producer_id or ""
        now = time.monotonic()
        if (now - self._visibility_at.get(producer_id, -1e9) < _VISIBILITY_INTERVAL_S
                or producer_id in self._visibility_busy):
            return
        annotations = [a for a in self.service.annotations if a.crew_peer_id == crew_peer_id]
        if not annotations:
            return
        self._visibility_at[producer_id] = now
        self._visibility_busy.add(producer_id)
        task = asyncio.create_task(self._send_visibility(crew_peer_id, pose, annotations))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_visibility(self, crew_peer_id: str, pose: m.CameraPose, annotations: list[Annotation]) -> None:
        producer_id = pose.producer_id or ""
        try:
            try:
                T = check_pose(pose.T_world_camera)
                k = pose.intrinsics
                intrinsics = Intrinsics(k.width, k.height, k.fx, k.fy, k.cx, k.cy, tuple(k.distortion))
            except ValueError:
                return
            snapshot = self.service.spatial_map(crew_peer_id).snapshot()

            def work() -> dict[str, list[list[int]]]:
                points = np.concatenate([a.anchored.points_world_m for a in annotations])
                hidden = reproject(points, T, intrinsics, snapshot).occluded
                out, start = {}, 0
                for a in annotations:
                    n = len(a.anchored.points_world_m)
                    out[a.annotation_id] = _runs(hidden[start:start + n])
                    start += n
                return out

            occluded = await asyncio.get_running_loop().run_in_executor(self.visibility_executor, work)
            self.visibility_checks += 1
            told = self._visibility_told.get(producer_id)
            if told is not None and told.occluded == occluded:
                # Unchanged (a camera held still, say): every page would only redraw
                # the same picture, on the busy machine that can least afford it.
                return
            message = m.AnnotationVisibility(producer_id=producer_id, rtp_timestamp=pose.rtp_timestamp,
                                             occluded=occluded)
            self._visibility_told[producer_id] = message
            self._broadcast(message)
        finally:
            self._visibility_busy.discard(producer_id)

    def forget(self, peer_id: str) -> None:
        """A peer left: drop what the room kept for it alone (its annotations stay)."""
        self._frozen.pop(peer_id, None)
        self._laser_at.pop(peer_id, None)
        self.service.forget_author(peer_id)

    def welcome(self, peer: Peer) -> None:
        """A newcomer sees every current annotation."""
        for annotation in self.service.annotations:
            peer.notify(annotation_message(annotation))
        live = {producer.id for producer in self._room.router.producers}
        for producer_id in list(self._visibility_told):
            if producer_id in live:
                peer.notify(self._visibility_told[producer_id])
            else:
                del self._visibility_told[producer_id]  # that crew's camera has gone

    def _broadcast(self, message: m._Message) -> None:
        for peer in self._room.peers:
            peer.notify(message)

    def _tell_others(self, sender: Peer, message: m._Message) -> None:
        for peer in self._room.peers:
            if peer is not sender:
                peer.notify(message)

    async def handle(self, peer: Peer, message: m._Message) -> m._Message | None:
        """Handle one annotation message; returns the reply for the sender (if any)."""
        try:
            if isinstance(message, m.Annotate):
                return await self._annotate(peer, message)
            if isinstance(message, m.ShareImage):
                return await self._share_image(peer, message)
            if isinstance(message, m.FreezeFrame):
                self._frozen[peer.id] = await self._pose(message.producer_id, message.rtp_timestamp, None, "freeze_frame")
                return m.FrameFrozen(producer_id=message.producer_id, rtp_timestamp=message.rtp_timestamp)
            if isinstance(message, (m.AnnotationDelete, m.AnnotationClear)):
                if isinstance(message, m.AnnotationDelete):
                    removed = [self.service.remove(peer.id, message.annotation_id)]
                else:
                    removed = self.service.clear(peer.id)
                self._tell_others(peer, m.AnnotationsRemoved(annotation_ids=removed, by_peer_id=peer.id))
                return m.AnnotationsRemoved(annotation_ids=removed, by_peer_id=peer.id)
            if isinstance(message, m.AnnotationRestore):
                restored = self.service.restore(peer.id, message.annotation_id)
                self._tell_others(peer, annotation_message(restored))
                return annotation_message(restored)
            if isinstance(message, m.Laser):
                await self._laser(peer, message)
                return None
            if isinstance(message, m.MapBlock):
                self._require_crew(peer, "map_block")
                vertices = np.asarray(message.vertices, dtype=np.float64)
                if len(vertices) % 3:
                    raise AnnotationRefused("invalid_field", "map_block: vertices must hold x, y, z per vertex")
                triangles = np.asarray(message.triangles, dtype=np.int64)
                if len(triangles) % 3:
                    raise AnnotationRefused("invalid_field", "map_block: triangles must hold 3 indices per triangle")
                await self.service.set_map_block(peer.id, message.block_id, vertices.reshape(-1, 3), triangles.reshape(-1, 3))
                return m.MapBlockStored(id=message.id, block_id=message.block_id, triangles=len(triangles) // 3)
            if isinstance(message, m.MapBlockRemove):
                self._require_crew(peer, "map_block_remove")
                await self.service.remove_map_block(peer.id, message.block_id)
                return None
        except AnnotationRefused as refused:
            tag = type(message).__struct_config__.tag
            raise m.ProtocolError(refused.code, str(refused), tag, message.id) from None
        raise m.ProtocolError("unknown_type", f"not an annotation message: {type(message).__name__}")

    @staticmethod
    def _require_crew(peer: Peer, what: str) -> None:
        if peer.role != "crew":
            raise AnnotationRefused("forbidden", f"{what}: only a crew sends its spatial map")

    async def _pose(self, producer_id: str, rtp_timestamp: int, peer_id: str | None, what: str) -> m.CameraPose:
        frozen = self._frozen.get(peer_id) if peer_id is not None else None
        if frozen is not None and frozen.producer_id == producer_id and abs(
            ((frozen.rtp_timestamp - rtp_timestamp + 2**31) & 0xFFFFFFFF) - 2**31
        ) <= _RTP_SLACK_TICKS:
            return frozen
        history = self._room.pose_history(producer_id)
        if history is not None:
            pose = await history.wait_for(rtp_timestamp, _RTP_SLACK_TICKS, _POSE_WAIT_S)
            if pose is not None:
                return pose
        raise AnnotationRefused(
            "no_pose",
            f"{what}: no camera pose for RTP timestamp {rtp_timestamp} of track {producer_id!r} "
            "(it waited 2 s; the server keeps the last 300 frames' poses, and the frame an expert froze)",
        )

    async def _frame(self, producer_id: str, rtp_timestamp: int, what: str, peer_id: str | None = None) -> tuple[str, FramePose]:
        producer = next((p for p in self._room.router.producers if p.id == producer_id), None)
        if producer is None or producer.kind != "video":
            raise AnnotationRefused("not_found", f"{what}: no video track {producer_id!r} in this room")
        pose = await self._pose(producer_id, rtp_timestamp, peer_id, what)
        try:
            intrinsics = Intrinsics(
                pose.intrinsics.width, pose.intrinsics.height, pose.intrinsics.fx, pose.intrinsics.fy,
                pose.intrinsics.cx, pose.intrinsics.cy, tuple(pose.intrinsics.distortion),
            )
            T = check_pose(pose.T_world_camera)
        except ValueError as exc:
            raise AnnotationRefused("invalid_pose", f"{what}: the crew's pose for that frame is unusable: {exc}") from None
        return producer.peer_id, FramePose(pose.rtp_timestamp, T, intrinsics)

    async def _annotate(self, peer: Peer, message: m.Annotate) -> m.AnnotationInfo:
        if peer.role == "observer":
            raise AnnotationRefused("forbidden", "annotate: observers watch; they do not draw")
        started = time.perf_counter()
        crew_peer_id, frame = await self._frame(message.producer_id, message.rtp_timestamp, "annotate", peer.id)
        found_pose = time.perf_counter()
        author = self.service.author(peer.id, peer.name)
        annotation = await self.service.anchor(
            author, crew_peer_id, message.producer_id, frame, message.kind, message.points,
            text=message.text, client_ref=message.client_ref,
        )
        done = time.perf_counter()
        self._tell_others(peer, annotation_message(annotation))
        # Where the server's part of the round trip goes: waiting for the frame's
        # pose, queueing for and running the geometry thread.
        log.info("annotation anchored", extra={
            "room": self._room.name, "annotation": annotation.annotation_id, "kind": annotation.kind.value,
            "pose_wait_ms": round((found_pose - started) * 1e3, 2), "anchor_ms": round(annotation.anchor_ms, 2),
            "server_ms": round((done - started) * 1e3, 2)})
        reply = annotation_message(annotation)
        reply.id = message.id
        return reply

    async def _share_image(self, peer: Peer, message: m.ShareImage) -> m.AnnotationInfo:
        if peer.role == "observer":
            raise AnnotationRefused("forbidden", "share_image: observers watch; they do not share")
        pixels = cv2.imdecode(np.frombuffer(message.data, np.uint8), cv2.IMREAD_UNCHANGED)
        if pixels is None or pixels.ndim < 2:
            raise AnnotationRefused("invalid_field", f"share_image: data is not a decodable {message.mime} image")
        height_px, width_px = pixels.shape[:2]
        if max(width_px, height_px) > 4096 or min(width_px, height_px) < 8:
            raise AnnotationRefused("invalid_field", f"share_image: {width_px}x{height_px} px is outside 8..4096 px")
        # A panel 30 cm wide, as tall as the image's aspect says: readable at arm's length.
        image = SharedImage(message.mime, message.data, width_px, height_px,
                            _PANEL_WIDTH_M, round(_PANEL_WIDTH_M * height_px / width_px, 4))
        crew_peer_id, frame = await self._frame(message.producer_id, message.rtp_timestamp, "share_image", peer.id)
        annotation = await self.service.anchor(
            self.service.author(peer.id, peer.name), crew_peer_id, message.producer_id, frame, "image",
            [message.point], text=message.title, client_ref=message.client_ref, image=image)
        self._tell_others(peer, annotation_message(annotation))
        reply = annotation_message(annotation)
        reply.id = message.id
        return reply

    async def _laser(self, peer: Peer, message: m.Laser) -> None:
        if peer.role == "observer":
            raise AnnotationRefused("forbidden", "laser: observers watch; they do not point")
        now = time.monotonic()
        if now - self._laser_at.get(peer.id, -1.0) < 1.0 / _LASER_RATE_HZ:
            return
        self._laser_at[peer.id] = now
        crew_peer_id, frame = await self._frame(message.producer_id, message.rtp_timestamp, "laser", peer.id)
        author = self.service.author(peer.id, peer.name)
        try:  # one ray: cheap enough for the event loop
            anchored = anchor_shape(Shape.checked("point", [message.point]), frame.T_world_camera,
                                    frame.intrinsics, self.service.spatial_map(crew_peer_id).snapshot())
        except ValueError as exc:
            raise AnnotationRefused("invalid_field", f"laser: {exc}") from None
        self._broadcast(m.LaserInfo(
            author_peer_id=peer.id, color=author.color, producer_id=message.producer_id,
            rtp_timestamp=frame.rtp_timestamp, point_world_m=anchored.points_world_m[0].round(6).tolist(),
            anchoring=int(anchored.anchoring[0]),
        ))
