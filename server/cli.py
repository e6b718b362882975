"""The `goldenhour` command: `serve` runs the server, `crew --simulate` a simulated crew,
`bridge` connects a headset (hl2ss, simulated or replayed)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys

from server import logs
from server.config import Config
from server.scheduling import SERVE_REALTIME_PRIORITY

log = logging.getLogger("goldenhour")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.tls import ensure_certificate

    # The event loop under SCHED_FIFO unless told otherwise (server/scheduling.py).
    asked = args.realtime_priority is not None or "GOLDENHOUR_REALTIME_PRIORITY" in os.environ
    try:
        config = Config.from_env(host=args.host, port=args.port, tls=False if args.no_tls else None,
                                 ice_loopback_only=True if args.loopback_only else None,
                                 realtime_priority=args.realtime_priority if asked
                                 else SERVE_REALTIME_PRIORITY,
                                 realtime_priority_asked=asked)
    except ValueError as exc:
        print(f"goldenhour serve: {exc}", file=sys.stderr)
        return 2
    ssl_files: dict[str, str] = {}
    if config.tls:
        cert, key = ensure_certificate(config.data_dir, config.host)
        ssl_files = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, loop="uvloop", ws="websockets-sansio",
        ws_max_size=1 << 20, log_config=None, lifespan="on", **ssl_files))

    crew: subprocess.Popen | None = None

    async def main() -> None:
        nonlocal crew
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if task.done():
            return await task
        room = config.demo_room
        print(f"\n  GoldenHour is serving on {config.url}/", file=sys.stderr)
        if room and not args.no_demo_crew:
            ws_scheme = "wss" if config.tls else "ws"
            # The demo crew is the real headset bridge, fed by the simulated
            # hl2ss headset: the same path a HoloLens takes (docs/hololens.md).
            crew = subprocess.Popen([sys.executable, "-m", "server.cli", "bridge", "--simulate",
                                     "--url", f"{ws_scheme}://{config.host}:{config.port}/ws",
                                     "--room", room, "--name", "Simulated headset", "--insecure"],
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            print(f"  A simulated headset (inside a synthetic ambulance, through the hl2ss "
                  f"bridge) is streaming into room '{room}'. Open:\n\n"
                  f"      {config.url}/app/viewer.html?room={room}   draw on the patient\n"
                  f"      {config.url}/app/lobby.html                the expert lobby\n",
                  file=sys.stderr)
        if config.tls:
            print("  (self-signed certificate: accept the browser's warning once)\n",
                  file=sys.stderr)
        await task

    import uvloop
    try:
        uvloop.run(main())
    finally:
        if crew is not None:
            crew.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                crew.wait(5)
    return 0


def _die_with_parent() -> None:
    """In the demo crew's process: be sent SIGTERM when the server process dies.

    uvicorn re-raises the SIGTERM it caught once it has shut down, which ends
    the server before any `finally` of ours could stop the child.
    """
    import ctypes
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _crew(args: argparse.Namespace) -> int:
    from clients.hololens_bridge.scene_crew import SceneCrew
    from clients.hololens_bridge.simulated import SimulatedCrew, SyntheticUltrasoundTrack
    from clients.sdk.client import GoldenHourClient, ssl_context_for
    from server.sfu import aiortc_seams

    if not args.simulate:
        print("goldenhour crew: only --simulate is available in this release", file=sys.stderr)
        return 2
    aiortc_seams.use_loopback_ice(True, only=args.loopback_only)
    context = ssl_context_for(args.url, args.cafile, args.insecure)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        delay = 0.5
        while not stop.is_set():
            client = GoldenHourClient(args.url, args.room, "crew", args.name, create=True,
                                      ssl_context=context)
            probe = SyntheticUltrasoundTrack() if args.ultrasound else None
            if args.scene:
                crew = SceneCrew(client, args.width or 640, args.height or 360, args.fps,
                                 video_codec=args.codec, ultrasound=probe)
            else:
                crew = SimulatedCrew(client, args.width or 1280, args.height or 720, args.fps,
                                     video_codec=args.codec, ultrasound=probe)
            waits: list[asyncio.Future] = []
            try:
                await crew.start()
                if args.scene and args.walk:
                    waits.append(asyncio.ensure_future(crew.walk()))
                log.info("simulated crew streaming", extra={"room": args.room})
                delay = 0.5
                waits += [asyncio.ensure_future(client.wait_closed()),
                          asyncio.ensure_future(stop.wait())]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            except Exception as exc:  # unreachable, refused, dropped: all mean retry
                log.warning("lost the server; retrying",
                            extra={"error": repr(exc), "retry_s": delay})
            finally:
                for waiting in waits:
                    waiting.cancel()
                await crew.stop()
            if not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 10.0)

    asyncio.run(main())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="goldenhour", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (and a simulated headset in the demo room)")
    serve.add_argument("--host", default=None, help="default 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default 8443")
    serve.add_argument("--no-tls", action="store_true", help="plain HTTP (localhost tests)")
    serve.add_argument("--no-demo-crew", action="store_true",
                       help="do not start the simulated crew in the demo room")
    serve.add_argument("--realtime-priority", type=int, default=None, metavar="N",
                       help="run the media event loop under SCHED_FIFO at priority N (1-99; "
                            "needs CAP_SYS_NICE or RLIMIT_RTPRIO, and without them the server "
                            f"serves at normal priority; default {SERVE_REALTIME_PRIORITY}; "
                            "0: normal priority)")
    serve.add_argument("--loopback-only", action="store_true",
                       help="offer only 127.0.0.1 as ICE candidate")
    serve.set_defaults(func=_serve)

    crew = sub.add_parser("crew", help="publish a (simulated) headset as crew")
    crew.add_argument("--simulate", action="store_true", help="synthetic camera, tone, poses")
    crew.add_argument("--url", default="wss://127.0.0.1:8443/ws")
    crew.add_argument("--room", default="demo")
    crew.add_argument("--name", default="Simulated crew")
    crew.add_argument("--scene", action=argparse.BooleanOptionalAction, default=True,
                      help="render vision/'s synthetic ambulance and send its spatial map "
                           "(default), or --no-scene for the cheap moving test pattern")
    crew.add_argument("--walk", action=argparse.BooleanOptionalAction, default=True,
                      help="with --scene, move like a paramedic around the patient")
    crew.add_argument("--width", type=int, default=None, help="default 640 (scene), 1280")
    crew.add_argument("--height", type=int, default=None, help="default 360 (scene), 720")
    crew.add_argument("--fps", type=int, default=30)
    crew.add_argument("--codec", default=None, help="video/VP8 or video/H264")
    crew.add_argument("--ultrasound", action="store_true",
                      help="also publish a wireless ultrasound probe (a FAST view with free "
                           "fluid): the server's model scores it live")
    crew.add_argument("--cafile", default=None, help="trust this certificate (wss)")
    crew.add_argument("--insecure", action="store_true", help="accept any certificate (wss)")
    crew.add_argument("--loopback-only", action="store_true")
    crew.set_defaults(func=_crew)

    from clients.hololens_bridge import run as bridge_run
    bridge = sub.add_parser("bridge", help="connect a headset (hl2ss, simulated or replayed) as crew",
                            description=bridge_run.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    bridge_run.add_arguments(bridge)
    bridge.set_defaults(func=bridge_run.run)

    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
