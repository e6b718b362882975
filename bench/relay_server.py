"""The aiortc baseline for bench/sfu.py: a decode/re-encode relay (an MCU in all but name).

It receives the crew's track, decodes it once (aiortc's receiver always does)
and hands the decoded frames to every subscriber through
`aiortc.contrib.media.MediaRelay`, so each subscriber's sender re-encodes
them with its own VP8 encoder: what an aiortc server does out of the box.

Signaling is plain offer/answer over HTTP on 127.0.0.1 (the publisher and each
subscriber offer; we answer):
    POST /publish    {"sdp", "type": "offer"} -> answer   (one publisher)
    POST /subscribe  {"sdp", "type": "offer"} -> answer   (any number)
    GET  /healthz
Run by bench/sfu.py as its own process so that its CPU can be measured alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator

import uvicorn
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from sender_seams import pin_vp8_bitrate
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.sfu import aiortc_seams

log = logging.getLogger("bench.relay_server")


class RelayServer:
    """One publisher's video, decoded once and re-encoded for every subscriber."""

    def __init__(self, buffered: bool) -> None:
        self._buffered = buffered
        self._relay = MediaRelay()
        self._source: asyncio.Future[MediaStreamTrack] | None = None
        self._pcs: set[RTCPeerConnection] = set()
        self._drain: asyncio.Task | None = None

    def _source_future(self) -> asyncio.Future[MediaStreamTrack]:
        if self._source is None:
            self._source = asyncio.get_running_loop().create_future()
        return self._source

    async def publish(self, request: Request) -> JSONResponse:
        offer = await request.json()
        pc = self._new_pc()
        source = self._source_future()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not source.done():
                source.set_result(track)
                # Keep reading the source while nobody (or a slow encoder)
                # is: a real relay decodes continuously, and frames must not
                # pile up in the receiver's queue before the first subscriber.
                self._drain = asyncio.create_task(self._discard(
                    self._relay.subscribe(track, buffered=False)))

        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        return JSONResponse({"sdp": pc.localDescription.sdp, "type": "answer"})

    async def subscribe(self, request: Request) -> JSONResponse:
        offer = await request.json()
        source = await asyncio.wait_for(asyncio.shield(self._source_future()), 10.0)
        pc = self._new_pc()
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        # The subscriber offered recvonly video (VP8 only); this fills that
        # transceiver with a relayed copy that its sender will encode.
        pc.addTrack(self._relay.subscribe(source, buffered=self._buffered))
        await pc.setLocalDescription(await pc.createAnswer())
        return JSONResponse({"sdp": pc.localDescription.sdp, "type": "answer"})

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "peers": len(self._pcs)})

    def _new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pcs.add(pc)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._pcs.discard(pc)
                await pc.close()
        return pc

    @staticmethod
    async def _discard(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    async def close(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
        await asyncio.gather(*(pc.close() for pc in list(self._pcs)), return_exceptions=True)
        self._pcs.clear()


def create_app(buffered: bool) -> Starlette:
    relay = RelayServer(buffered)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await relay.close()

    return Starlette(routes=[
        Route("/healthz", relay.health),
        Route("/publish", relay.publish, methods=["POST"]),
        Route("/subscribe", relay.subscribe, methods=["POST"]),
    ], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bitrate", type=int, default=2_500_000,
                        help="bit/s of each re-encoded copy (as the publisher's)")
    parser.add_argument("--unbuffered", action="store_true",
                        help="MediaRelay(buffered=False): keep only the newest frame per "
                             "subscriber instead of aiortc's default unbounded queue")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="[relay %(process)d] %(levelname)s %(name)s: %(message)s")
    aiortc_seams.use_loopback_ice(True, only=True)
    pin_vp8_bitrate(args.bitrate)
    uvicorn.run(create_app(buffered=not args.unbuffered), host="127.0.0.1", port=args.port,
                loop="uvloop", log_config=None, lifespan="on", access_log=False)


if __name__ == "__main__":
    main()
