"""What the kernel alone charges an SFU for one forwarded datagram on loopback.

A benchmark, not a test. An SFU pays at least one UDP send per packet per
subscriber; on loopback the sender's system call also runs the receiver's side
of the kernel (UDP receive, socket wake-up). This times that floor with no
SRTP and no SFU: 16 receiving sockets in 2 processes that read as fast as
they can (uvloop, as bench/sfu.py's subscribers do), and one sender that, 30
times a second, sends a frame of 9 datagrams of 1,100 bytes to each of them:

* `sendto` per datagram, the SFU's way (the baseline);
* `sendmmsg`, one call per receiver per frame (9 datagrams), with its message
  vectors prepared beforehand: what batching could save in system calls;
* `sendto` to sockets nobody reads (their buffers full, the datagrams
  dropped): the condition bench/forwarding_cost.py's "sendto alone" floor
  runs in, which is why that floor reads lower.

CPU is the sender's process time per datagram. It prints a table and writes
bench/results/udp-floor-latest.json.

    .venv/bin/python bench/udp_floor.py [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import json
import multiprocessing
import os
import socket
import statistics
import time
from pathlib import Path

RECEIVERS = 16
DATAGRAMS_PER_FRAME = 9
DATAGRAM_BYTES = 1100
FPS = 30
BITRATE_BPS = 2_500_000
RESULTS = Path(__file__).resolve().parent / "results"


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def _receive(ports: list[int], ready: multiprocessing.synchronize.Event) -> None:
    import uvloop

    class Count(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for port in ports:
            await loop.create_datagram_endpoint(Count, local_addr=("127.0.0.1", port))
        ready.set()
        await asyncio.Event().wait()

    uvloop.run(main())


def _bound_udp_sockets(count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


class _Batches:
    """One prepared sendmmsg vector per destination: a frame's datagrams."""

    def __init__(self, datagrams: list[bytes], ports: list[int]) -> None:
        self._keep: list[object] = []
        self.vectors = []
        buffers = [ctypes.create_string_buffer(d, len(d)) for d in datagrams]
        self._keep.append(buffers)
        for port in ports:
            address = (ctypes.c_char * 16)(*(b"\x02\x00" + port.to_bytes(2, "big")
                                             + socket.inet_aton("127.0.0.1") + b"\0" * 8))
            iovecs = (_IoVec * len(buffers))(*[_IoVec(ctypes.cast(b, ctypes.c_void_p), len(d))
                                                for b, d in zip(buffers, datagrams)])
            messages = (_MMsgHdr * len(buffers))()
            for k in range(len(buffers)):
                messages[k].msg_hdr.msg_name = ctypes.cast(address, ctypes.c_void_p)
                messages[k].msg_hdr.msg_namelen = 16
                messages[k].msg_hdr.msg_iov = ctypes.pointer(iovecs[k])
                messages[k].msg_hdr.msg_iovlen = 1
            self._keep += [address, iovecs]
            self.vectors.append(messages)


def measure(seconds: float, rounds: int) -> dict:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    base = 42000 + os.getpid() % 1000 * 20
    live_ports = list(range(base, base + RECEIVERS))
    ready = [multiprocessing.Event() for _ in range(2)]
    half = RECEIVERS // 2
    receivers = [multiprocessing.Process(target=_receive, args=(ports, event), daemon=True)
                 for ports, event in zip((live_ports[:half], live_ports[half:]), ready)]
    for process in receivers:
        process.start()
    for event in ready:
        if not event.wait(20):
            raise RuntimeError("the receiving processes did not start")
    # Sockets bound and never read: their buffers fill, then the kernel drops.
    unread = _bound_udp_sockets(RECEIVERS)
    unread_ports = [s.getsockname()[1] for s in unread]
    senders = _bound_udp_sockets(RECEIVERS)
    datagrams = [os.urandom(DATAGRAM_BYTES) for _ in range(DATAGRAMS_PER_FRAME)]
    batches = _Batches(datagrams, live_ports)
    fds = [s.fileno() for s in senders]

    def per_datagram(ports: list[int]) -> None:
        for data in datagrams:
            for sock, port in zip(senders, ports):
                sock.sendto(data, ("127.0.0.1", port))

    def batched() -> None:
        for fd, vector in zip(fds, batches.vectors):
            if libc.sendmmsg(fd, vector, DATAGRAMS_PER_FRAME, 0) != DATAGRAMS_PER_FRAME:
                raise OSError(ctypes.get_errno(), "sendmmsg sent fewer datagrams")

    cases = {"sendto, live receivers": lambda: per_datagram(live_ports),
             "sendmmsg per frame, live receivers": batched,
             "sendto, unread sockets (dropped)": lambda: per_datagram(unread_ports)}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    frames = int(seconds * FPS)
    try:
        for _ in range(rounds):
            for name, send_frame in cases.items():
                started_cpu, started = time.process_time(), time.perf_counter()
                for frame in range(frames):
                    delay = started + frame / FPS - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    send_frame()
                used = time.process_time() - started_cpu
                samples[name].append(used / (frames * DATAGRAMS_PER_FRAME * RECEIVERS) * 1e6)
    finally:
        for process in receivers:
            process.terminate()
    return {"us_per_datagram": {name: statistics.median(v) for name, v in samples.items()},
            "rounds": rounds, "seconds_per_case": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result = measure(args.seconds, args.rounds)
    packets_per_s = BITRATE_BPS / 8 / (DATAGRAM_BYTES + 50)
    baseline = result["us_per_datagram"]["sendto, live receivers"]
    print(f"\nsender CPU per datagram on loopback: {RECEIVERS} receivers, {FPS} frames/s of "
          f"{DATAGRAMS_PER_FRAME} x {DATAGRAM_BYTES} B each, median of {args.rounds} rounds")
    print(f"{'case':38} {'us/datagram':>12} {'% core at 2.5 Mbit/s':>22} {'vs sendto':>10}")
    for name, us in result["us_per_datagram"].items():
        print(f"{name:38} {us:12.1f} {us * packets_per_s / 1e4:21.2f}% {us / baseline:9.2f}x")
    print(f"\n0.5% of a core per subscriber at 2.5 Mbit/s leaves {0.5e4 / packets_per_s:.1f} us "
          "per packet for everything: SRTP, the send and the SFU's own work")
    result["packets_per_s_at_2_5_mbps"] = packets_per_s
    result["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    result["cores"] = os.cpu_count()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "udp-floor-latest.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
