"""A router: the media side of one room, holding its producers and consumers."""

from __future__ import annotations

from aiortc import RTCRtpReceiver

from server.sfu.aiortc_seams import RtpInjector

from server.sfu.consumer import Consumer
from server.sfu.producer import Producer


class Router:
    """Holds a room's producers and the consumers that copy them to subscribers.

    It knows peers only by id and nothing of signaling, SDP or messages.
    """

    def __init__(self) -> None:
        self._producers: dict[str, Producer] = {}
        self._consumers: dict[str, Consumer] = {}

    @property
    def producers(self) -> tuple[Producer, ...]:
        return tuple(self._producers.values())

    def producer(self, producer_id: str) -> Producer | None:
        return self._producers.get(producer_id)

    def create_producer(self, receiver: RTCRtpReceiver, kind: str, mime_type: str,
                        codec_parameters: dict, peer_id: str) -> Producer:
        producer = Producer(receiver, kind, mime_type, codec_parameters, peer_id)
        self._producers[producer.id] = producer
        return producer

    def create_consumer(self, producer: Producer, injector: RtpInjector,
                        subscriber_id: str, timestamp_offset: int = 0) -> Consumer:
        consumer = Consumer(producer, injector, subscriber_id, timestamp_offset)
        self._consumers[consumer.id] = consumer
        return consumer

    def close_peer(self, peer_id: str) -> list[str]:
        """Close what belongs to a leaving peer; returns its closed producer ids."""
        closed = [p.id for p in self._producers.values() if p.peer_id == peer_id]
        for producer_id in closed:
            self._producers.pop(producer_id).close()
        for consumer in list(self._consumers.values()):
            if consumer.subscriber_id == peer_id or consumer.producer.id in closed:
                consumer.close()
                del self._consumers[consumer.id]
        return closed

    def close(self) -> None:
        for producer in self._producers.values():
            producer.close()
        self._producers.clear()
        self._consumers.clear()

    def stats(self) -> list[dict]:
        out = []
        for p in self._producers.values():
            out.append({
                "producer_id": p.id, "peer_id": p.peer_id, "kind": p.kind,
                "codec": p.mime_type, "packets_in": p.packets_in,
                "packets_on_arrival": p.packets_on_arrival,
                "keyframe_requests_sent": p.keyframe_requests_sent,
                "uplink_estimate_bps": p.uplink_estimate_bps,
                "upstream_remb_bps": p.upstream_bitrate_bps,
                "consumers": [{"consumer_id": c.id, "subscriber_id": c.subscriber_id,
                               "packets_out": c.packets_out,
                               "packets_dropped": c.packets_dropped,
                               "packets_retransmitted": c.packets_retransmitted,
                               "waiting_for_keyframe": c.waiting_for_keyframe,
                               "c_loop": c.fast,
                               "remb_bps": c.bitrate_estimate_bps}
                              for c in p.consumers],
            })
        return out
