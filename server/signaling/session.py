"""The signaling edge: one client's WebSocket, decoded and validated here, then
handed to its room. It holds no media state."""

from __future__ import annotations

import asyncio
import logging

import msgspec

from starlette.websockets import WebSocket, WebSocketDisconnect

from server.config import Config
from server.rooms.peer import Peer
from server.rooms.room import RoomRegistry
from server.signaling import messages as m

log = logging.getLogger(__name__)


class SignalingSession:
    """One signaling connection; at most one peer (one room membership) per connection."""

    def __init__(self, websocket: WebSocket, registry: RoomRegistry, config: Config) -> None:
        self._ws = websocket
        self._registry = registry
        self._config = config
        self._outbound: asyncio.Queue[m._Message] = asyncio.Queue(config.max_outbound_queue)
        self._binary = False
        self._peer: Peer | None = None
        self._ending = asyncio.Event()
        self._end_reason = ""
        self._watching_lobby = False

    async def run(self) -> None:
        await self._ws.accept()
        writer = asyncio.create_task(self._write_loop())
        reader = asyncio.create_task(self._read_loop())
        ending = asyncio.create_task(self._ending.wait())
        try:
            await asyncio.wait({writer, reader, ending}, return_when=asyncio.FIRST_COMPLETED)
            if self._ending.is_set() and not writer.done():
                # Let the client read why (the error is queued) before closing.
                await asyncio.wait({asyncio.create_task(self._outbound.join())}, timeout=1.0)
        finally:
            for task in (writer, reader, ending):
                task.cancel()
            await asyncio.gather(writer, reader, ending, return_exceptions=True)
            if self._watching_lobby:
                self._registry.unwatch_lobby(self.send)
            if self._peer is not None:
                await self._registry.leave(self._peer)
                self._peer = None
            if self._ending.is_set():
                await self._ws.close(code=1008, reason=self._end_reason[:120])

    def end(self, reason: str) -> None:
        """Close this connection (after the messages already queued), for `reason`."""
        if not self._ending.is_set():
            log.warning("closing a signaling connection", extra={"reason": reason})
            self._end_reason = reason
            self._ending.set()

    def send(self, message: m._Message) -> None:
        try:
            self._outbound.put_nowait(message)
        except asyncio.QueueFull:
            self.end("signaling messages not read in time")

    async def _write_loop(self) -> None:
        while True:
            message = await self._outbound.get()
            try:
                frame = m.encode(message, self._binary)
            except Exception:
                log.exception("cannot encode an outbound message; dropped")
                self._outbound.task_done()
                continue
            if isinstance(frame, bytes):
                await self._ws.send_bytes(frame)
            else:
                await self._ws.send_text(frame)
            self._outbound.task_done()

    async def _read_loop(self) -> None:
        while True:
            event = await self._ws.receive()
            if event["type"] == "websocket.disconnect":
                return
            data = event.get("bytes")
            frame: bytes | str = data if data is not None else event.get("text") or ""
            self._binary = isinstance(frame, bytes)
            try:
                message, _ = m.parse_frame(frame, m.ClientMessage)
                if await self._dispatch(message):
                    return
            except m.ProtocolError as exc:
                self.send(m.error_for(exc))
            except WebSocketDisconnect:
                return
            except Exception as exc:  # never let one message take the connection down
                log.exception("error handling a signaling message")
                self.send(m.Error(code="internal", message=f"internal error: {exc!r}"))

    async def _dispatch(self, message: object) -> bool:
        """Handle one valid message; returns True when the connection should end."""
        if isinstance(message, m.Ping):
            self.send(m.Pong(id=message.id))
            return False
        if isinstance(message, m.Join):
            await self._join(message)
            return False
        if isinstance(message, m.WatchLobby):
            self._registry.watch_lobby(self.send)
            self._watching_lobby = True
            return False
        peer = self._peer
        if peer is None:
            raise m.ProtocolError("not_joined", f"join a room before sending "
                                  f"{type(message).__name__}", None, message.id)
        try:
            if isinstance(message, m.PublishOffer):
                answer = await peer.publish(message.sdp, message.sources)
                answer.id = message.id
                self.send(answer)
            elif isinstance(message, m.SubscribeAnswer):
                await peer.apply_subscribe_answer(message.sdp, message.revision)
            elif isinstance(message, m.IceCandidate):
                await peer.add_ice_candidate(message.pc, message.candidate, message.sdp_mid,
                                             message.sdp_mline_index)
            elif isinstance(message, m.AnnotationMessage.__args__):
                reply = await peer.room.annotations.handle(peer, message)
                if reply is not None:
                    reply.id = message.id
                    self.send(reply)
            elif isinstance(message, m.RequestGuidance):
                request = self._registry.request_guidance(peer, message.reason)
                self.send(msgspec.structs.replace(request, id=message.id))
            elif isinstance(message, m.Leave):
                self._peer = None
                await self._registry.leave(peer)
                return True
        except m.ProtocolError as exc:
            exc.ref_id = message.id
            raise
        return False

    async def _join(self, message: m.Join) -> None:
        if self._peer is not None:
            raise m.ProtocolError("already_joined", f"already in room {self._peer.room.name!r}; "
                                  "one room per connection", "join", message.id)
        if self._config.require_token and not message.token:
            raise m.ProtocolError("token_required", "this server requires a room token",
                                  "join", message.id)
        try:
            room = self._registry.open(message.room, message.role, message.create)
        except m.ProtocolError as exc:
            exc.ref_id = message.id
            raise
        self._peer = await room.join(message.name, message.role, self._config, self._reply_to(
            message.id), self.end)

    def _reply_to(self, request_id: int | None):
        """The peer's notify function; the first message (`joined`) carries the join's id."""
        first = [True]

        def notify(message: m._Message) -> None:
            if first[0]:
                first[0] = False
                message.id = request_id
            self.send(message)
        return notify
