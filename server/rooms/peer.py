"""A peer: one participant of a room and the two peer connections it holds with us.

Like LiveKit, each peer has a *publish* connection (the client offers what it
sends; we answer) and a *subscribe* connection (we offer the room's other
producers and a data channel; the client answers). Keeping the two apart
means neither side ever has to resolve offer glare.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiortc import (RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender,
                    RTCSessionDescription)
from aiortc.codecs import is_rtx
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.sdp import SessionDescription, candidate_from_sdp

from server.sfu import aiortc_seams
from server.sfu.aiortc_seams import RtpInjector
from server.sfu.producer import Producer
from server.signaling import messages as m

if TYPE_CHECKING:
    from server.config import Config
    from server.rooms.room import Room

log = logging.getLogger(__name__)

DATA_CHANNEL_LABEL = "goldenhour"
#: Stop queueing data-channel messages to a peer that has this much unsent.
MAX_DATA_BACKLOG_BYTES = 256 * 1024

#: Poses a crew may send per second (sustained; twice that in a burst). A
#: headset sends one per frame, 30 or 60 a second; every pose is relayed to
#: every other peer, so a flood would stall the room.
POSES_PER_S = 120


class _TokenBucket:
    """At most `rate` takes a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate, self._burst = rate, burst
        self._tokens = burst
        self._stamp = time.monotonic()
        self._refused = False
        #: What it let through and what it refused, and when it was first and last asked.
        self.taken = self.refused = 0
        self.first_asked_at = self.last_asked_at = 0.0

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def take(self) -> bool:
        now = time.monotonic()
        if not self.taken + self.refused:
            self.first_asked_at = now
        self.last_asked_at = now
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._refused = False
            self.taken += 1
            return True
        self.refused += 1
        return False

    def first_refusal(self) -> bool:
        """True for the first refusal of a run of refusals (say it once)."""
        first = not self._refused
        self._refused = True
        return first


#: Trickled ICE candidates accepted per connection: a browser gathers a
#: handful; each one costs the server connectivity checks.
MAX_REMOTE_CANDIDATES = 32

#: What each role may publish (m-line kinds with a sending direction).
PUBLISHABLE = {"crew": {"audio", "video"}, "expert": {"audio"}, "observer": set()}


def _sending_media(sdp: str) -> dict[str | None, str]:
    """The kind of each m-line the offer sends on, by mid."""
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises ValueError, IndexError, KeyError...
        raise m.ProtocolError("invalid_sdp", f"SDP could not be parsed: {exc!r}") from None
    if not description.media:
        raise m.ProtocolError("invalid_sdp", "SDP has no media sections")
    return {media.rtp.muxId: media.kind for media in description.media
            if media.kind in ("audio", "video") and media.direction in (None, "sendrecv",
                                                                        "sendonly")}


def _codec_capability(kind: str, mime_type: str, parameters: dict) -> list:
    """The send capabilities that reproduce a producer's codec exactly (plus RTX)."""
    capabilities = RTCRtpSender.getCapabilities(kind).codecs
    same = [c for c in capabilities if c.mimeType.lower() == mime_type.lower()]
    wanted = {k: parameters.get(k) for k in ("packetization-mode", "profile-level-id")
              if k in parameters}
    exact = [c for c in same if all(str(c.parameters.get(k)) == str(v)
                                    for k, v in wanted.items())]
    chosen = (exact or same)[:1]
    if not chosen:
        raise RuntimeError(f"no send capability for {mime_type}")
    rtx = [c for c in capabilities if c.mimeType.lower() == f"{kind}/rtx"]
    return chosen + rtx


def _codec_key(producer: Producer) -> tuple:
    return (producer.mime_type.lower(), tuple(sorted(
        (k, str(v)) for k, v in producer.codec_parameters.items()
        if k in ("packetization-mode", "profile-level-id"))))


@dataclass
class _Slot:
    """One sendonly m-line of a subscribe connection and what it carries now."""

    transceiver: Any
    injector: RtpInjector
    kind: str
    codec: tuple
    producer: Producer | None = None
    timestamp_offset: int = 0


def _takeover_offset(injector: RtpInjector, producer: Producer) -> int:
    """The RTP timestamp offset for a producer taking over a transceiver.

    A receiver that saw timestamps jump backwards on the same SSRC would take
    the new frames for old ones (Chromium drops them): shift the new
    producer's timestamps to continue a frame interval after the last one
    sent. A fresh transceiver needs no shift.
    """
    if injector.last_timestamp is None or producer.last_timestamp is None:
        return 0
    return (injector.last_timestamp + 3000 - producer.last_timestamp) & 0xFFFFFFFF


class Peer:
    """A crew member, expert or observer in one room."""

    def __init__(self, room: Room, peer_id: str, name: str, role: m.Role, config: Config,
                 notify: Callable[[m._Message], None],
                 disconnect: Callable[[str], None]) -> None:
        self.id = peer_id
        self.name = name
        self.role = role
        self.room = room
        self._config = config
        self._notify = notify
        self._disconnect = disconnect
        self._answer_deadline: asyncio.TimerHandle | None = None
        self._rtc_config = RTCConfiguration(
            iceServers=[RTCIceServer(**server) for server in config.ice_servers])
        self._publish_pc: RTCPeerConnection | None = None
        self._subscribe_pc = RTCPeerConnection(self._rtc_config)
        self._subscribe_channel: RTCDataChannel = self._subscribe_pc.createDataChannel(
            DATA_CHANNEL_LABEL)
        self._producers: dict[str, Producer] = {}  # by mid of the publish transceiver
        self._subscribed: set[str] = set()  # producer ids this peer consumes
        self._pending_producers: list[Producer] = []
        self._slots: list[_Slot] = []
        self._revision = 0
        self._awaiting_answer = False
        self._renegotiate = False
        self._negotiation_lock = asyncio.Lock()
        self._pose_budget = _TokenBucket(POSES_PER_S, 2 * POSES_PER_S)
        #: The crew's pose rate limit, for stats and tests.
        self.pose_budget = self._pose_budget
        self._remote_candidates: dict[str, int] = {}
        self._closed = False

    @property
    def info(self) -> m.PeerInfo:
        return m.PeerInfo(peer_id=self.id, name=self.name, role=self.role)

    @property
    def video_producer(self) -> Producer | None:
        """The camera (poses belong to it), not an ultrasound probe."""
        return next((p for p in self._producers.values() if p.kind == "video"
                     and self.room.source_of(p.id) != "ultrasound"), None)

    # --- publishing -----------------------------------------------------------

    async def publish(self, sdp: str, sources: dict[str, str] | None = None,
                      ) -> m.PublishAnswer:
        allowed = PUBLISHABLE[self.role]
        media = _sending_media(sdp)
        kinds = set(media.values())
        for mid in sources or {}:
            if media.get(mid) != "video":
                raise m.ProtocolError("invalid_field", f"publish: sources names mid {mid!r}, "
                                      "which is not a video m-line of the offer", "publish")
        if not allowed:
            raise m.ProtocolError("forbidden", f"role {self.role} may not publish", "publish")
        if kinds - allowed:
            raise m.ProtocolError(
                "forbidden", f"role {self.role} may publish {', '.join(sorted(allowed))} only, "
                f"not {', '.join(sorted(kinds - allowed))}", "publish")
        first_offer = self._publish_pc is None
        if first_offer:
            self._publish_pc = RTCPeerConnection(self._rtc_config)
            self._publish_pc.on("datachannel", self._on_publish_channel)
        pc = self._publish_pc
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            if first_offer:
                # Half-configured and carrying nothing yet: start afresh next time.
                self._publish_pc = None
                await pc.close()
            # A rejected re-offer leaves the connection (and what it already
            # publishes) as it was: aiortc checks an offer before applying it.
            raise m.ProtocolError("invalid_sdp", f"SDP offer rejected: {exc!r}", "publish") from None
        created = []
        for transceiver in pc.getTransceivers():
            key = transceiver.mid
            if key is None or key in self._producers or transceiver.currentDirection not in (
                    "recvonly", "sendrecv"):
                continue
            codecs = [c for c in aiortc_seams.negotiated_codecs(transceiver) if not is_rtx(c)]
            if not codecs:
                continue
            producer = self.room.router.create_producer(
                transceiver.receiver, transceiver.kind, codecs[0].mimeType,
                dict(codecs[0].parameters), self.id)
            self._producers[key] = producer
            if producer.kind == "video":
                self.room.set_source(producer.id, (sources or {}).get(key, "camera"))
            created.append(producer)
        if created:
            log.info("peer published", extra={"peer": self.id, "room": self.room.name,
                                               "producers": [p.id for p in created]})
            self.room.announce_producers(self, created)
        return m.PublishAnswer(sdp=pc.localDescription.sdp,
                               producer_ids=[p.id for p in self._producers.values()])

    def _on_publish_channel(self, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(data: bytes | str) -> None:
            # An exception escaping this handler would close the crew's whole
            # transport (aiortc's SCTP code re-raises it): never let one out.
            try:
                message, binary = m.parse_frame(data, m.DataMessage)
                self._on_data_message(message)
            except m.ProtocolError as exc:
                reply = m.error_for(exc)
            except Exception as exc:
                log.exception("error handling a data-channel message", extra={"peer": self.id})
                reply = m.Error(code="internal", message=f"internal error: {exc!r}")
            else:
                return
            if channel.readyState == "open":
                channel.send(m.encode(reply, binary=True))

    def _on_data_message(self, message: object) -> None:
        if isinstance(message, m.CameraPose):
            if self.role != "crew":
                raise m.ProtocolError("forbidden", f"role {self.role} may not send poses", "pose")
            m.validate_pose(message)
            if not self._pose_budget.take():
                if self._pose_budget.first_refusal():
                    raise m.ProtocolError(
                        "rate_limited", f"more than {POSES_PER_S} poses a second: dropping "
                        "poses until the rate falls", "pose")
                return
            producer = self.video_producer
            if producer is None:
                raise m.ProtocolError("no_video", "pose sent before any video was published",
                                      "pose")
            self.room.on_pose(self, producer, message)
        else:
            raise m.ProtocolError("unknown_type", f"{type(message).__name__} is not accepted "
                                  "on the data channel")

    # --- subscribing ----------------------------------------------------------

    async def subscribe(self, producers: list[Producer]) -> None:
        """Add the given producers to this peer's subscribe connection."""
        if self._closed:
            return
        for producer in producers:
            if producer.peer_id != self.id and not producer.closed \
                    and producer.id not in self._subscribed:
                self._subscribed.add(producer.id)
                self._pending_producers.append(producer)
        await self._negotiate()

    async def _negotiate(self) -> None:
        async with self._negotiation_lock:
            if self._closed:
                return
            if self._awaiting_answer:
                self._renegotiate = True
                return
            pc = self._subscribe_pc
            added = []
            for producer in self._pending_producers:
                if producer.closed:
                    continue
                slot = self._free_slot(producer)
                if slot is None:
                    transceiver = pc.addTransceiver(producer.kind, direction="sendonly")
                    transceiver.setCodecPreferences(_codec_capability(
                        producer.kind, producer.mime_type, producer.codec_parameters))
                    slot = _Slot(transceiver, RtpInjector(transceiver.sender), producer.kind,
                                 _codec_key(producer))
                    self._slots.append(slot)
                slot.producer = producer
                slot.timestamp_offset = _takeover_offset(slot.injector, producer)
                self.room.router.create_consumer(producer, slot.injector, self.id,
                                                 slot.timestamp_offset)
                added.append(producer)
            self._pending_producers.clear()
            if self._revision > 0 and not added:
                return
            await pc.setLocalDescription(await pc.createOffer())
            self._revision += 1
            self._awaiting_answer = True
            tracks = [m.TrackInfo(mid=slot.transceiver.mid, producer_id=p.id, peer_id=p.peer_id,
                                  kind=p.kind, codec=p.mime_type,
                                  rtp_timestamp_offset=slot.timestamp_offset,
                                  source=self.room.source_of(p.id))
                      for slot in self._slots
                      if (p := slot.producer) is not None and slot.transceiver.mid is not None]
            self._notify(m.SubscribeOffer(sdp=pc.localDescription.sdp, revision=self._revision,
                                          tracks=tracks))
            self._answer_deadline = asyncio.get_event_loop().call_later(
                self._config.subscribe_answer_timeout_s, self._answer_overdue, self._revision)

    def _answer_overdue(self, revision: int) -> None:
        """A client that does not answer an offer would never get another track:
        tell it, and end its session so that it can join afresh."""
        if self._awaiting_answer and revision == self._revision and not self._closed:
            timeout = self._config.subscribe_answer_timeout_s
            self._notify(m.Error(code="answer_timeout", ref_type="subscribe_offer",
                                 message=f"no subscribe_answer for revision {revision} within "
                                 f"{timeout:g} s; closing this session"))
            self._disconnect(f"no subscribe_answer within {timeout:g} s")

    def _free_slot(self, producer: Producer) -> _Slot | None:
        """A transceiver whose producer has gone and that carries this codec."""
        key = _codec_key(producer)
        return next((slot for slot in self._slots if slot.producer is None
                     and slot.kind == producer.kind and slot.codec == key), None)

    def release(self, producer_ids: list[str]) -> None:
        """These producers are gone: their transceivers wait, silent, for the
        next producer of the same kind and codec (an m-line per reconnect
        would grow this peer's SDP without bound)."""
        for slot in self._slots:
            if slot.producer is not None and slot.producer.id in producer_ids:
                slot.producer = None
        self._subscribed.difference_update(producer_ids)

    async def apply_subscribe_answer(self, sdp: str, revision: int) -> None:
        async with self._negotiation_lock:
            if not self._awaiting_answer or revision != self._revision:
                raise m.ProtocolError(
                    "stale_answer", f"answer for revision {revision}, but the open offer is "
                    f"{self._revision if self._awaiting_answer else 'none'}", "subscribe_answer")
            try:
                await self._subscribe_pc.setRemoteDescription(
                    RTCSessionDescription(sdp=sdp, type="answer"))
            except Exception as exc:
                raise m.ProtocolError("invalid_sdp", f"SDP answer rejected: {exc!r}",
                                      "subscribe_answer") from None
            self._awaiting_answer = False
            if self._answer_deadline is not None:
                self._answer_deadline.cancel()
            again = self._renegotiate
            self._renegotiate = False
        if again:
            await self._negotiate()

    async def add_ice_candidate(self, pc_name: str, candidate: str, sdp_mid: str | None,
                                sdp_mline_index: int | None) -> None:
        pc = self._publish_pc if pc_name == "publish" else self._subscribe_pc
        if pc is None:
            raise m.ProtocolError("no_connection", f"no {pc_name} connection yet", "ice")
        if not candidate:
            return  # end-of-candidates: aiortc needs no signal
        count = self._remote_candidates.get(pc_name, 0)
        if count >= MAX_REMOTE_CANDIDATES:
            raise m.ProtocolError("too_many_candidates", f"ice: more than "
                                  f"{MAX_REMOTE_CANDIDATES} candidates for the {pc_name} "
                                  "connection", "ice")
        self._remote_candidates[pc_name] = count + 1
        if sdp_mid is None and sdp_mline_index is None:
            raise m.ProtocolError("invalid_field", "ice: a candidate needs sdp_mid or "
                                  "sdp_mline_index", "ice")
        try:
            parsed = candidate_from_sdp(candidate.removeprefix("candidate:"))
            parsed.sdpMid = sdp_mid
            parsed.sdpMLineIndex = sdp_mline_index
            await pc.addIceCandidate(parsed)
        except Exception as exc:
            raise m.ProtocolError("invalid_field", f"ice: bad candidate: {exc!r}", "ice") from None

    def send_data(self, data: bytes) -> None:
        """Send an encoded (msgpack) message on this peer's subscribe data channel,
        if open and not backed up: poses are perishable, a stale one is worthless."""
        channel = self._subscribe_channel
        if channel.readyState == "open" and channel.bufferedAmount < MAX_DATA_BACKLOG_BYTES:
            channel.send(data)

    def notify(self, message: m._Message) -> None:
        self._notify(message)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._answer_deadline is not None:
            self._answer_deadline.cancel()
        for slot in self._slots:
            slot.injector.close()
        for pc in (self._publish_pc, self._subscribe_pc):
            if pc is not None:
                await pc.close()
