"""What one forwarded RTP packet costs the SFU, per subscriber, and where it goes.

A benchmark, not a test: it starts a GoldenHour server, a small simulated crew
and one subscriber in this process (uvloop, loopback ICE), then times, on the
subscriber's live consumer, many sends of a 1,100-byte VP8-sized payload:

* GoldenHour's C loop (server/sfu/_fanout.c) with this one consumer in its
  table: one call per packet, so the call's own overhead, shared by all
  subscribers in a real fan-out, is all this copy's here (an upper bound);
* GoldenHour's Python path (RtpInjector.send: hand-packed header, SRTP,
  sendto), which consumers take until they are steady and where there is no
  C compiler;
* its two floors measured alone: SRTP protect (pylibsrtp) and a UDP sendto on
  the same ICE socket;
* the baseline in the same run: what the first pass-through did with aiortc's
  own pieces (build an aiortc RtpPacket with mid and abs-send-time, serialize
  it, RTCDtlsTransport._send_rtp through aiortc and aioice).

It prints a table and writes bench/results/forwarding-cost-latest.json. CPU
per subscriber at 2.5 Mbit/s follows as (us per packet) x (packets per second).

    .venv/bin/python bench/forwarding_cost.py [--packets 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import uvloop

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiortc import clock  # noqa: E402
from aiortc.rtp import RtpPacket  # noqa: E402

from server.sfu import aiortc_seams, fastpath  # noqa: E402
from tests.conftest import World, loopback_config, start_server  # noqa: E402

PAYLOAD_BYTES = 1100
BITRATE_BPS = 2_500_000


async def measure(packets: int, rounds: int) -> dict:
    async with start_server(loopback_config()) as server:
        world = World(server)
        try:
            await world.crew(width=320, height=180)
            expert = await world.expert("bench")
            remote = await expert.wait_for_track("video")
            received = [0]

            async def count(packet: RtpPacket) -> None:
                received[0] += 1
            aiortc_seams.tap_receiver(remote.receiver, count)  # the subscriber decodes nothing
            await expert.wait_until(lambda: received[0] > 5)

            room = server.app.state.registry.get("demo")
            producer = next(p for p in room.router.producers if p.kind == "video")
            consumer = producer.consumers[0]
            injector = consumer._injector
            # From here on only this benchmark sends on the consumer's SRTP stream.
            producer.remove_consumer(consumer)
            sender = injector._sender
            dtls = sender.transport
            pair = dtls.transport._connection._nominated[1]
            extensions = sender._RTCRtpSender__rtp_header_extensions_map
            mid = sender._RTCRtpSender__mid
            source = RtpPacket(payload_type=96, sequence_number=1, timestamp=1,
                               payload=bytes(PAYLOAD_BYTES))
            seq = [injector.next_seq]  # continue the stream the subscriber knows

            def next_seq() -> int:
                seq[0] = (seq[0] + 1) & 0xFFFF
                return seq[0]

            async def goldenhour() -> None:
                pending = injector.send(source, next_seq(), 5, aiortc_seams.abs_send_time_now())
                assert pending is None  # sent at once on the nominated pair

            fast = fastpath.FastFanout()
            fast.admit(1, injector.direct_route(), seq_offset=0, timestamp_offset=0, start_ext=0)

            async def c_loop() -> None:
                # ext + offset 0 = the next sequence number of the same stream.
                assert fast.send(source, next_seq(), aiortc_seams.abs_send_time_now()) == 1

            async def aiortc_stock() -> None:
                packet = RtpPacket(payload_type=injector.payload_type, marker=0,
                                   sequence_number=next_seq(), timestamp=5, ssrc=sender._ssrc,
                                   payload=source.payload)
                packet.extensions.abs_send_time = (clock.current_ntp_time() >> 14) & 0xFFFFFF
                packet.extensions.mid = mid
                await dtls._send_rtp(packet.serialize(extensions))

            plain = bytes(12 + 8 + PAYLOAD_BYTES)

            srtp_seq = [0]

            async def srtp_only() -> None:
                # Its own SSRC (0) and sequence, so each SRTP stream stays contiguous.
                srtp_seq[0] = (srtp_seq[0] + 1) & 0xFFFF
                dtls._tx_srtp.protect(plain[:2] + srtp_seq[0].to_bytes(2, "big") + plain[4:])

            protected = dtls._tx_srtp.protect(plain)
            sendto, addr = pair.protocol.transport.sendto, pair.remote_addr

            async def sendto_only() -> None:
                sendto(protected, addr)

            cases = {"c_loop": c_loop, "goldenhour": goldenhour, "aiortc_stock": aiortc_stock,
                     "srtp_protect": srtp_only, "udp_sendto": sendto_only}
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(rounds):
                for name, case in cases.items():
                    start = time.process_time()
                    for _ in range(packets):
                        await case()
                    samples[name].append((time.process_time() - start) / packets * 1e6)
                    # Let the subscriber's side of this process drain its socket
                    # before the next case is timed.
                    await asyncio.sleep(0.05)
        finally:
            await world.close()
    return {name: statistics.median(values) for name, values in samples.items()} | {
        "rounds": rounds, "packets_per_round": packets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    aiortc_seams.use_loopback_ice(True, only=True)
    result = uvloop.run(measure(args.packets, args.rounds))

    packets_per_s = BITRATE_BPS / 8 / (PAYLOAD_BYTES + 50)
    rows = [("GoldenHour C loop, 1 target per call", result["c_loop"]),
            ("GoldenHour RtpInjector.send (Python)", result["goldenhour"]),
            ("baseline: aiortc RtpPacket + _send_rtp", result["aiortc_stock"]),
            ("  floor: SRTP protect alone", result["srtp_protect"]),
            ("  floor: UDP sendto alone (loopback)", result["udp_sendto"])]
    print(f"\nCPU per forwarded packet per subscriber ({PAYLOAD_BYTES} B payload), "
          f"median of {args.rounds} rounds x {args.packets} packets")
    print(f"{'path':42} {'us/packet':>10} {'% core at 2.5 Mbit/s':>22}")
    for name, us in rows:
        print(f"{name:42} {us:10.1f} {us * packets_per_s / 1e4:21.2f}%")
    floor = result["srtp_protect"] + result["udp_sendto"]
    print(f"\nGoldenHour vs baseline: C loop {result['c_loop'] / result['aiortc_stock']:.2f}x, "
          f"Python {result['goldenhour'] / result['aiortc_stock']:.2f}x; "
          f"above the floor: C loop {result['c_loop'] - floor:.1f} us, "
          f"Python {result['goldenhour'] - floor:.1f} us; "
          f"goal 0.5% of a core = {0.5e4 / packets_per_s:.1f} us/packet")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    result["packets_per_s_at_2_5_mbps"] = packets_per_s
    (out / "forwarding-cost-latest.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
