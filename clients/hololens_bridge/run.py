"""`goldenhour bridge`: a headset (real, simulated or replayed) into a room.

    goldenhour bridge --headset 192.168.1.40        # a HoloLens 2 running hl2ss
    goldenhour bridge --simulate --preview out/      # the simulated headset
    goldenhour bridge --replay recordings/case-17    # a recorded session
    ... --record recordings/case-18                  # also record what the headset sends

Type `g` and Enter (or send the process SIGUSR1: a voice or gesture hook on
the headset's side can) to request guidance: the expert lobby alerts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import stat
import sys
from pathlib import Path

from clients.hololens_bridge import hl2ss_wire as wire
from clients.hololens_bridge.bridge import Bridge, cancel_all

log = logging.getLogger("goldenhour.bridge")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--headset", metavar="HOST", help="a HoloLens 2 running hl2ss (its address)")
    source.add_argument("--simulate", action="store_true",
                        help="a simulated headset inside the synthetic ambulance, on loopback")
    source.add_argument("--replay", metavar="DIR", type=Path, help="replay a recorded session")
    parser.add_argument("--record", metavar="DIR", type=Path, help="record the headset's streams here")
    parser.add_argument("--preview", metavar="DIR", type=Path,
                        help="with --simulate: write the wearer's view (holograms drawn) as JPEGs")
    parser.add_argument("--walk", action=argparse.BooleanOptionalAction, default=True,
                        help="with --simulate: move like a paramedic around the patient")
    parser.add_argument("--pose-noise-mm", type=float, default=0.0,
                        help="with --simulate: noise on the poses the headset reports")
    parser.add_argument("--pose-noise-deg", type=float, default=0.0)
    parser.add_argument("--width", type=int, default=None, help="PV width (1280; 640 simulated)")
    parser.add_argument("--height", type=int, default=None, help="PV height (720; 360 simulated)")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--bitrate", type=int, default=2_500_000, help="PV H.264 bits per second")
    parser.add_argument("--url", default="wss://127.0.0.1:8443/ws")
    parser.add_argument("--room", default="demo")
    parser.add_argument("--name", default="Headset")
    parser.add_argument("--cafile", default=None, help="trust this certificate (wss)")
    parser.add_argument("--insecure", action="store_true", help="accept any certificate (wss)")
    parser.add_argument("--loopback-only", action="store_true")


def run(args: argparse.Namespace) -> int:
    from clients.sdk.client import ssl_context_for
    from server.sfu import aiortc_seams
    aiortc_seams.use_loopback_ice(True, only=args.loopback_only)
    context = ssl_context_for(args.url, args.cafile, args.insecure)
    if args.preview and not args.simulate:
        print("goldenhour bridge: --preview needs --simulate", file=sys.stderr)
        return 2
    from clients.hololens_bridge.recording import RecordingError
    try:
        asyncio.run(_main(args, context))
    except RecordingError as error:  # a clear message, not a traceback
        print(f"goldenhour bridge: {error}", file=sys.stderr)
        return 2
    return 0


async def _main(args: argparse.Namespace, context: ssl.SSLContext | None) -> None:
    from clients.hololens_bridge.headset import Hl2ssHeadset
    from clients.hololens_bridge.recording import RecordingSource, ReplaySource

    tasks: list[asyncio.Task] = []
    headset = None
    if args.replay:
        source = ReplaySource(args.replay)
    else:
        host = args.headset
        ports = None
        width, height = args.width or 1280, args.height or 720
        if args.simulate:
            from clients.hololens_bridge.simulated_headset import SimulatedHeadset, write_previews
            headset = SimulatedHeadset(pose_noise_m=args.pose_noise_mm / 1000,
                                       pose_noise_deg=args.pose_noise_deg)
            await headset.start()
            host, ports = headset.host, headset.ports
            width, height = args.width or 640, args.height or 360
            if args.walk:
                tasks.append(asyncio.create_task(headset.walk()))
            if args.preview:
                tasks.append(asyncio.create_task(write_previews(headset, args.preview)))
        source = Hl2ssHeadset(host, ports, pv=wire.PvConfig(
            width, height, args.fps, bitrate=args.bitrate,
            options=((wire.OPTION_GOP_SIZE, args.fps),)))
    if args.record:
        source = RecordingSource(source, args.record)
    bridge = Bridge(source, args.url, args.room, args.name, ssl_context=context)
    await bridge.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: tasks.append(
        asyncio.create_task(_request_guidance(bridge, "hook on the headset"))))
    if _stdin_can_be_watched():
        tasks.append(asyncio.create_task(_keyboard(bridge)))
    log.info("bridge running", extra={"room": args.room, "url": args.url})
    if sys.stdin is not None and sys.stdin.isatty():
        print(f"  Bridge publishing into room '{args.room}'. Type g and Enter to request guidance.",
              file=sys.stderr)
    try:
        await stop.wait()
    finally:
        await cancel_all(tasks)
        await bridge.stop()
        if headset is not None:
            await headset.stop()


async def _request_guidance(bridge: Bridge, reason: str) -> None:
    try:
        await bridge.request_guidance(reason)
        print("  Guidance requested: the experts' lobby is alerting.", file=sys.stderr)
    except Exception as error:  # noqa: BLE001 - say it, keep running
        print(f"  Could not request guidance: {error}", file=sys.stderr)


def _stdin_can_be_watched() -> bool:
    """A terminal, a pipe or a socket. Not a regular file or /dev/null (a service's
    stdin): the event loop cannot poll those, and asyncio reports the failure
    from a callback as an error instead of raising it here."""
    if sys.stdin is None or sys.stdin.closed:
        return False
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError):
        return False
    return os.isatty(fd) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def _keyboard(bridge: Bridge) -> None:
    """`g` + Enter on the bridge's terminal requests guidance."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (ValueError, OSError):
        return  # no usable stdin (a service): the SIGUSR1 hook still works
    while line := await reader.readline():
        if line.strip().lower() in (b"g", b"guidance"):
            await _request_guidance(bridge, "requested from the bridge")
