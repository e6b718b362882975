"""Rooms: who is in a session, and how their media and messages meet.

A room's state is its peers, its router (media) and its pose histories. Only
this module decides who receives what; the signaling edge calls in with
validated messages, the router knows nothing of peers beyond their ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from server.config import Config
from server.inference.live import LiveInference, LiveResult
from server.rooms.annotating import RoomAnnotations
from server.rooms.peer import Peer
from server.rooms.poses import PoseHistory
from server.sfu.producer import Producer
from server.sfu.router import Router
from server.signaling import messages as m

log = logging.getLogger(__name__)

#: How long new producers may take to deliver their first packet before they
#: are offered to the room anyway (a publisher's ICE and DTLS come first).
FIRST_PACKET_WAIT_S = 2.0


class Room:
    """One emergency: a crew (or several), the experts guiding them, observers."""

    def __init__(self, name: str, persistent: bool = False,
                 inference: LiveInference | None = None) -> None:
        self.name = name
        self.persistent = persistent
        self.created_at = time.time()
        self.router = Router()
        self._peers: dict[str, Peer] = {}
        self._poses: dict[str, PoseHistory] = {}
        self._sources: dict[str, str] = {}  # video producer id -> camera | ultrasound
        self._inference = inference
        self._tasks: set[asyncio.Task] = set()
        self.annotations = RoomAnnotations(self)

    @property
    def peers(self) -> tuple[Peer, ...]:
        return tuple(self._peers.values())

    def pose_history(self, producer_id: str) -> PoseHistory | None:
        return self._poses.get(producer_id)

    def set_source(self, producer_id: str, source: str) -> None:
        self._sources[producer_id] = source

    def source_of(self, producer_id: str) -> str | None:
        return self._sources.get(producer_id)

    @staticmethod
    def _receives(peer: Peer, producer: Producer) -> bool:
        """What a peer is sent: a crew hears the others but is not sent video
        (a headset on a mobile uplink has no use for another crew's camera)."""
        return producer.peer_id != peer.id and not (peer.role == "crew"
                                                    and producer.kind == "video")

    async def join(self, name: str, role: m.Role, config: Config,
                   notify: Callable[[m._Message], None],
                   disconnect: Callable[[str], None]) -> Peer:
        peer = Peer(self, uuid.uuid4().hex[:12], name, role, config, notify, disconnect)
        others = self.peers
        self._peers[peer.id] = peer
        notify(m.Joined(protocol=m.PROTOCOL_VERSION, peer_id=peer.id, room=self.name, role=role,
                        peers=[p.info for p in others], ice_servers=config.ice_servers,
                        max_message_bytes=m.MAX_MESSAGE_BYTES))
        for other in others:
            other.notify(m.PeerJoined(peer=peer.info))
        self.annotations.welcome(peer)
        log.info("peer joined", extra={"room": self.name, "peer": peer.id, "role": role})
        try:
            await peer.subscribe([p for p in self.router.producers if self._receives(peer, p)])
        except BaseException:
            # Cancelled (the client went away) or failed before the caller
            # could hold on to the peer: leave now, or it haunts the room.
            await self.leave(peer)
            raise
        return peer

    def announce_producers(self, source: Peer, producers: list[Producer]) -> None:
        """Offer a peer's new producers to everyone else, in a task the room owns."""
        task = asyncio.get_event_loop().create_task(self._offer_producers(source, producers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _offer_producers(self, source: Peer, producers: list[Producer]) -> None:
        # A producer taking over another's transceiver needs its current RTP
        # timestamp (peer._takeover_offset): wait briefly for its first packet.
        try:
            await asyncio.wait_for(asyncio.gather(*(p.flowing.wait() for p in producers)),
                                   FIRST_PACKET_WAIT_S)
        except asyncio.TimeoutError:
            pass
        if source.id not in self._peers:
            return  # it left before we got here
        for producer in producers:
            if self._sources.get(producer.id) == "ultrasound":
                if self._inference is not None:
                    self._inference.watch(producer, self._on_live_result)
            elif producer.kind == "video":
                self._poses.setdefault(producer.id, PoseHistory())
        peers = [p for p in self.peers if p is not source]
        results = await asyncio.gather(
            *(p.subscribe([x for x in producers if self._receives(p, x)]) for p in peers),
            return_exceptions=True)
        for peer, result in zip(peers, results):
            if isinstance(result, Exception):  # one peer's failure must not starve the others
                log.error("subscribe failed", exc_info=result,
                          extra={"room": self.name, "peer": peer.id})

    def on_pose(self, source: Peer, producer: Producer, pose: m.CameraPose) -> None:
        pose.producer_id = producer.id
        pose.peer_id = source.id
        history = self._poses.setdefault(producer.id, PoseHistory())
        history.add(pose)
        self.annotations.on_pose(source.id, pose)
        data = m.encode(pose, binary=True)  # once, for every subscriber
        for peer in self._peers.values():
            if peer is not source:
                peer.send_data(data)

    def _on_live_result(self, live: LiveResult) -> None:
        """A model's result about an ultrasound frame: to everyone in the room
        (the experts draw it over the video, the crew's glasses show a panel)."""
        result = live.result
        overlay = m.Overlay(
            producer_id=live.producer_id, peer_id=result.provenance.get("peer_id", ""),
            rtp_timestamp=live.rtp_timestamp, model=result.model, version=result.version,
            probability=round(result.probability, 4), threshold=result.threshold,
            positive=result.positive,
            contours=[[list(point) for point in polygon] for polygon in result.contours_uv_norm],
            frame_width=live.frame_width, frame_height=live.frame_height,
            not_for_clinical_use=result.not_for_clinical_use, input=result.provenance,
            inference_ms=round(result.inference_ms, 2))
        data = m.encode(overlay, binary=True)  # once, for every peer
        for peer in self._peers.values():
            peer.send_data(data)

    async def leave(self, peer: Peer) -> None:
        if self._peers.pop(peer.id, None) is None:
            return
        closed = self.router.close_peer(peer.id)
        for producer_id in closed:
            self._poses.pop(producer_id, None)
            self._sources.pop(producer_id, None)
            if self._inference is not None:
                await self._inference.unwatch(producer_id)
        for other in self._peers.values():
            other.release(closed)
        await peer.close()
        self.annotations.forget(peer.id)
        for other in self._peers.values():
            other.notify(m.PeerLeft(peer_id=peer.id))
        log.info("peer left", extra={"room": self.name, "peer": peer.id})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in list(self._peers.values()):
            await self.leave(peer)
        self.router.close()
        self.annotations.close()


class RoomRegistry:
    """All rooms of this server process.

    Rooms live in memory; the registry is the one place that would move to an
    external store when rooms span machines.
    """

    def __init__(self, config: Config, inference: LiveInference | None = None) -> None:
        self._config = config
        self._inference = inference
        self._rooms: dict[str, Room] = {}
        #: Lobby pages listening for guidance requests (their send functions).
        self._lobby: set[Callable[[m._Message], None]] = set()
        #: Open guidance requests, newest last: room name -> the request.
        self.guidance_requests: dict[str, m.GuidanceRequested] = {}
        if config.demo_room:
            self._rooms[config.demo_room] = Room(config.demo_room, persistent=True,
                                                 inference=inference)

    @property
    def rooms(self) -> tuple[Room, ...]:
        return tuple(self._rooms.values())

    def get(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def watch_lobby(self, send: Callable[[m._Message], None]) -> None:
        """A lobby page: it hears every guidance request, the open ones first."""
        self._lobby.add(send)
        for request in self.guidance_requests.values():
            send(request)

    def unwatch_lobby(self, send: Callable[[m._Message], None]) -> None:
        self._lobby.discard(send)

    def request_guidance(self, peer: Peer, reason: str | None) -> m.GuidanceRequested:
        """A crew asks for an expert: every lobby page and every expert in the room hear it."""
        if peer.role != "crew":
            raise m.ProtocolError("forbidden", "request_guidance: only a crew asks for guidance")
        request = m.GuidanceRequested(room=peer.room.name, peer_id=peer.id, name=peer.name,
                                      reason=reason, time_ms=time.time() * 1e3)
        self.guidance_requests[peer.room.name] = request
        log.info("guidance requested", extra={"room": peer.room.name, "peer": peer.id})
        for send in list(self._lobby):
            send(request)
        for other in peer.room.peers:
            if other.role == "expert":
                other.notify(request)
        return request

    def open(self, name: str, role: m.Role, create: bool) -> Room:
        room = self._rooms.get(name)
        if room is not None:
            return room
        if create and role == "crew" and self._config.crew_may_create_rooms:
            room = self._rooms[name] = Room(name, inference=self._inference)
            log.info("room created", extra={"room": name})
            return room
        hint = " (only a crew may create a room, with create: true)" if create or role == "crew" \
            else ""
        raise m.ProtocolError("room_not_found", f"room {name!r} does not exist{hint}", "join")

    async def leave(self, peer: Peer) -> None:
        room = peer.room
        await room.leave(peer)
        if not room.peers and not room.persistent and self._rooms.get(room.name) is room:
            del self._rooms[room.name]
            self.guidance_requests.pop(room.name, None)
            room.router.close()
            room.annotations.close()
            log.info("room closed", extra={"room": room.name})

    async def close(self) -> None:
        for room in list(self._rooms.values()):
            await room.close()
        self._rooms.clear()
