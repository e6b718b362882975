"""Live ultrasound inference: the one track the server decodes.

The SFU forwards every other track undecoded. A crew's ultrasound probe track
gets one extra subscriber, an UltrasoundTap: it reassembles the RTP packets
into encoded frames, decodes them in order on a decoder thread (every frame:
a video decoder cannot skip the frames later ones refer to), and hands each
decoded frame to a LatestFrameRunner, which runs the model on the newest frame
and drops the ones that arrive while it is busy. Each result comes back with
the frame's RTP timestamp, on the publisher's clock, so clients draw it on
the frame it is about.

It reuses aiortc's own frame assembly and decoders (aiortc.jitterbuffer,
aiortc.codecs.depayload and get_decoder: module-level functions, not the
private attributes server/sfu/aiortc_seams.py isolates); aiortc is pinned,
and tests/test_inference_live.py exercises them end to end before an upgrade.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import depayload, get_decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from server.inference.gating import Refused, check_frame_rate, check_frame_size
from server.inference.registry import LoadedModel, ModelRegistry
from server.inference.runtime import InferenceResult, InferenceRuntime, LatestFrameRunner, LiveFrame

if TYPE_CHECKING:
    from server.sfu.producer import Producer

log = logging.getLogger(__name__)

#: The model that watches live ultrasound tracks.
LIVE_ULTRASOUND_MODEL = "fast_free_fluid"
#: Encoded frames waiting for the decoder before we give up and restart at the
#: next keyframe (a decoder this far behind is useless for live overlays).
MAX_DECODE_BACKLOG = 15


@dataclass(frozen=True)
class LiveResult:
    """A result about one frame of a live track."""

    result: InferenceResult
    producer_id: str
    rtp_timestamp: int
    frame_width: int
    frame_height: int


class UltrasoundTap:
    """A subscriber of the ultrasound producer that decodes and runs the model.

    It quacks like an SFU Consumer (id, subscriber_id, waiting_for_keyframe,
    wants_keyframe, fast, enter_fast, forward, close, bitrate_estimate_bps,
    packets_out, packets_dropped), so the producer feeds it, and /api/stats
    lists it, like any other subscriber (in Python: it decodes, so the C
    fan-out has nothing to offer it).
    """

    fast = False
    #: Packets it took are never "dropped" in the SFU's sense (a consumer's
    #: send that failed); frames it could not keep up with are frames_dropped.
    packets_dropped = 0
    #: Nothing here NACKs.
    packets_retransmitted = 0
    #: The server's own decoder has no link to estimate: it never holds the
    #: publisher's bitrate down (Producer.subscriber_bitrate_cap).
    bitrate_estimate_bps: int | None = None
    bitrate_estimate_at = float("-inf")

    def enter_fast(self, fast: object, producer_ext: int) -> bool:
        """Never: it decodes what it gets, so it stays on the Python path."""
        return False

    def __init__(self, producer: Producer, model: LoadedModel, runtime: InferenceRuntime,
                 on_result: Callable[[LiveResult], None]) -> None:
        self.id = "inference-" + uuid.uuid4().hex[:8]
        #: Who it is in /api/stats: the server, running this model.
        self.subscriber_id = f"server:{model.name}"
        self.packets_out = 0
        self.waiting_for_keyframe = True
        self.frames_decoded = 0
        self.decode_errors = 0
        self.refusals: list[str] = []
        self._producer = producer
        self._model = model
        self._on_result = on_result
        self._codec: RTCRtpCodecParameters | None = None
        self._jitter = JitterBuffer(capacity=512, is_video=True)
        self._decoder_thread = ThreadPoolExecutor(max_workers=1,
                                                  thread_name_prefix="ultrasound-decode")
        self._decoder = None
        self._backlog = 0
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._runner = LatestFrameRunner(runtime, model, self._on_inference,
                                         {"source": "live", "producer_id": producer.id,
                                          "peer_id": producer.peer_id})
        self._timestamps: deque[int] = deque(maxlen=30)  # of recent decoded frames

    @property
    def wants_keyframe(self) -> bool:
        return self.waiting_for_keyframe and not self._closed

    @property
    def frames_dropped(self) -> int:
        return self._runner.dropped

    @property
    def frames_scored(self) -> int:
        return self._runner.completed

    def start(self) -> None:
        self._runner.start()
        self._producer.add_consumer(self)
        self._producer.request_keyframe()

    async def stop(self) -> None:
        self.close()
        await self._runner.stop()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._producer.remove_consumer(self)
        self._decoder_thread.shutdown(wait=False, cancel_futures=True)

    async def forward(self, packet: RtpPacket, abs_send_time: bytes) -> None:
        """One RTP packet of the ultrasound track, in arrival order (on the loop:
        only reassembly here; decoding runs on the decoder thread)."""
        if self._closed:
            return
        self.packets_out += 1
        if self._codec is None or self._codec.payloadType != packet.payload_type:
            self._codec = RTCRtpCodecParameters(mimeType=self._producer.mime_type,
                                                clockRate=90000,
                                                payloadType=packet.payload_type)
        self.waiting_for_keyframe = False
        # A copy: the producer hands the same packet object to every subscriber.
        copy = RtpPacket(payload_type=packet.payload_type, marker=packet.marker,
                         sequence_number=packet.sequence_number, timestamp=packet.timestamp,
                         ssrc=packet.ssrc, payload=packet.payload)
        try:
            copy._data = depayload(self._codec, packet.payload) if packet.payload else b""
        except ValueError:
            return
        pli, frame = self._jitter.add(copy)
        if pli:
            self._producer.request_keyframe()
        if frame is not None:
            if self._backlog >= MAX_DECODE_BACKLOG:
                self._restart()
                return
            self._backlog += 1
            future = self._loop.run_in_executor(self._decoder_thread, self._decode,
                                                self._codec, frame)
            future.add_done_callback(self._on_decoded)

    def _restart(self) -> None:
        """Fallen behind: drop what is queued and start again at a keyframe."""
        self._jitter = JitterBuffer(capacity=512, is_video=True)
        self.waiting_for_keyframe = True
        self._producer.request_keyframe()

    def _decode(self, codec: RTCRtpCodecParameters, frame: JitterFrame,
                ) -> tuple[int, np.ndarray | None]:
        """Decoder thread: one encoded frame to greyscale (the luma plane)."""
        if self._decoder is None:
            self._decoder = get_decoder(codec)
        try:
            decoded = self._decoder.decode(frame)
        except Exception:  # a damaged frame: the next keyframe repairs the stream
            return frame.timestamp, None
        if not decoded:
            return frame.timestamp, None
        grey = decoded[-1].to_ndarray(format="gray")
        return frame.timestamp, grey

    def _on_decoded(self, future: asyncio.Future) -> None:
        self._backlog -= 1
        if future.cancelled() or self._closed:
            return
        if future.exception() is not None:
            self.decode_errors += 1
            return
        timestamp, grey = future.result()
        if grey is None:
            self.decode_errors += 1
            self._producer.request_keyframe()
            return
        self.frames_decoded += 1
        self._timestamps.append(timestamp)
        try:
            check_frame_size(grey.shape[1], grey.shape[0], self._model.card.gate)
            if len(self._timestamps) >= 10:  # the rate, from the frames' own clock
                span = (self._timestamps[-1] - self._timestamps[0]) & 0xFFFFFFFF
                check_frame_rate((len(self._timestamps) - 1) * 90000 / max(span, 1),
                                 self._model.card.gate)
        except Refused as exc:
            if str(exc) not in self.refusals:  # said once per reason, not per frame
                self.refusals.append(str(exc))
                log.warning("live ultrasound refused: %s", exc,
                            extra={"producer": self._producer.id})
            return
        self._runner.submit(LiveFrame(grey, timestamp, self._loop.time()))

    def _on_inference(self, result: InferenceResult, frame: LiveFrame) -> None:
        if self._closed:
            return
        height, width = frame.grey.shape
        self._on_result(LiveResult(result, self._producer.id, frame.rtp_timestamp, width, height))


class LiveInference:
    """The server's live inference: the model registry, the runtime and one tap
    per watched track. Owns them all: `close` stops every tap and the runtime."""

    def __init__(self, registry: ModelRegistry, runtime: InferenceRuntime | None = None) -> None:
        self.registry = registry
        self.runtime = runtime or InferenceRuntime()
        self._taps: dict[str, UltrasoundTap] = {}

    @property
    def model(self) -> LoadedModel | None:
        return self.registry.get(LIVE_ULTRASOUND_MODEL)

    def tap(self, producer_id: str) -> UltrasoundTap | None:
        return self._taps.get(producer_id)

    def watch(self, producer: Producer, on_result: Callable[[LiveResult], None]) -> bool:
        """Start running the live model on an ultrasound producer; False when
        no live model is loaded (the track is still forwarded as usual)."""
        model = self.model
        if model is None or producer.id in self._taps or producer.kind != "video":
            return False
        tap = UltrasoundTap(producer, model, self.runtime, on_result)
        self._taps[producer.id] = tap
        tap.start()
        log.info("live inference started", extra={"producer": producer.id, "model": model.name})
        return True

    async def unwatch(self, producer_id: str) -> None:
        tap = self._taps.pop(producer_id, None)
        if tap is not None:
            await tap.stop()

    async def close(self) -> None:
        for producer_id in list(self._taps):
            await self.unwatch(producer_id)
        self.runtime.close()
