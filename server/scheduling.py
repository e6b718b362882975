"""Real-time scheduling for the event loop that carries live media.

The event loop forwards every packet of every stream. On a machine whose
cores are shared (with inference, with the browsers and processes of a
demo, or, in the benchmark, with 16 subscribers woken by our own packets),
a packet waits in the socket until the scheduler gives the loop a core:
that wait was most of the SFU's forwarding delay at p99 (docs/sfu.md).
Media servers that must not wait ask for a real-time policy (FreeSWITCH's
`-rp`, PipeWire through rtkit); `goldenhour serve` does the same for the
event loop's thread alone, at SERVE_REALTIME_PRIORITY unless told
otherwise (`--realtime-priority N`, 0 for normal scheduling).

SCHED_RESET_ON_FORK keeps everything the loop starts at normal priority:
the threads that run inference and `asyncio.to_thread` work, and child
processes (the demo crew). Linux caps a real-time policy at 95% of each
second (kernel.sched_rt_runtime_us), so a loop that spun would still leave
other work a core's slice; the other cores it leaves alone.

Where the system refuses (no CAP_SYS_NICE, no RLIMIT_RTPRIO), the server
says so in its log and in /healthz and serves at normal priority.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: What `goldenhour serve` asks for unless told otherwise: above every
#: normal-priority process, below the kernel's own real-time threads (its
#: interrupt threads run at 50) and the audio servers that use rtkit (up
#: to 20 there, 88 for PipeWire's data thread).
SERVE_REALTIME_PRIORITY = 10


@dataclass(frozen=True)
class Scheduling:
    """How the event loop's thread is scheduled, for /healthz."""
    #: "fifo" (SCHED_FIFO) or "normal".
    policy: str
    priority: int = 0
    #: Why the real-time policy asked for is not in force (None if it is, or
    #: if none was asked for).
    refused: str | None = None


def use_realtime_priority(priority: int, asked: bool = True) -> Scheduling:
    """Put the calling thread under SCHED_FIFO at `priority` (1-99), its
    children (threads and processes) back to normal; 0 asks for nothing.

    Never raises for a refusal: without CAP_SYS_NICE or an RLIMIT_RTPRIO of
    at least `priority`, it logs why (a warning if someone `asked` for this
    priority, a note if it is only the default) and the server runs at
    normal priority.
    """
    if priority == 0:
        return Scheduling("normal")
    low, high = os.sched_get_priority_min(os.SCHED_FIFO), os.sched_get_priority_max(os.SCHED_FIFO)
    if not low <= priority <= high:
        raise ValueError(f"realtime priority {priority} is outside SCHED_FIFO's {low}-{high}")
    try:
        # pid 0: on Linux, the calling thread alone.
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except PermissionError:
        refused = (f"SCHED_FIFO {priority} refused: needs CAP_SYS_NICE or an RLIMIT_RTPRIO "
                   f"of at least {priority} (for example LimitRTPRIO= in a systemd unit)")
        (log.warning if asked else log.info)("the event loop runs at normal priority",
                                             extra={"reason": refused})
        return Scheduling("normal", 0, refused)
    log.info("the event loop runs under SCHED_FIFO", extra={"priority": priority})
    return Scheduling("fifo", priority)
