"""The SFU's per-copy loop in C (server/sfu/_fanout.c), seen from Python.

A producer's steady consumers (past their first keyframe, on an open direct
path) are sent each packet by one C call per incoming packet; the rest take
the Python path (`Consumer.forward`). Once per video frame the producer tends
the table: a consumer whose path changed (DTLS state, ICE pair, SRTP session,
renegotiated header) goes back to Python, and each member's counters go to
its aiortc sender for RTCP sender reports.

The C loop reaches two things no public API gives: the `srtp_protect`
function of the libsrtp that pylibsrtp bundles (its cffi library exports it),
and a pylibsrtp session's `srtp_t`. Both are here and only here, checked by
tests/test_fastpath.py. The compiled module is optional: without it (no C
compiler at install time), or with GOLDENHOUR_FANOUT=python, every copy takes
the Python path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pylibsrtp
from pylibsrtp._binding import ffi as _srtp_ffi, lib as _srtp_lib

try:
    from server.sfu import _fanout
except ImportError:  # built without a C compiler
    _fanout = None

if TYPE_CHECKING:
    from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

#: The signature the C loop calls srtp_protect with (libsrtp 2).
SRTP_PROTECT_SIGNATURE = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"


def compiled() -> bool:
    """Whether the C loop was built."""
    return _fanout is not None


def enabled() -> bool:
    """Whether producers use the C loop: built, and not turned off
    (GOLDENHOUR_FANOUT=python, for comparisons and as a way out)."""
    return _fanout is not None and os.environ.get("GOLDENHOUR_FANOUT", "c").lower() != "python"


def protect_address() -> int:
    """The address of libsrtp's srtp_protect, as pylibsrtp loaded it."""
    function = _srtp_ffi.addressof(_srtp_lib, "srtp_protect")
    kind = _srtp_ffi.typeof(function).cname
    if kind != SRTP_PROTECT_SIGNATURE:
        raise RuntimeError(f"pylibsrtp's srtp_protect is {kind}, not {SRTP_PROTECT_SIGNATURE}")
    return int(_srtp_ffi.cast("uintptr_t", function))


def session_address(session: pylibsrtp.Session) -> int:
    """The srtp_t inside a pylibsrtp session (valid while the session lives)."""
    return int(_srtp_ffi.cast("uintptr_t", session._srtp[0]))  # type: ignore[attr-defined]


#: The largest payload the C loop takes (its history slots' size less the
#: longest header); 0 without the loop.
MAX_PAYLOAD = _fanout.MAX_PAYLOAD if _fanout is not None else 0


def _level(packet: RtpPacket) -> int:
    level = packet.extensions.audio_level
    return -1 if level is None else (0x80 if level[0] else 0) | level[1]


@dataclass(frozen=True)
class DirectRoute:
    """Everything the C loop needs to send one subscriber's copies, and what
    tells that it still holds (RtpInjector.direct_route makes it)."""

    session: pylibsrtp.Session
    fd: int
    host: str
    port: int
    ssrc: int
    payload_type: int
    ext_prefix: bytes
    abs_send_time: bool
    level_id: int
    #: Compared by identity when the producer tends the table.
    pair: Any
    config_version: int


class FastFanout:
    """One producer's table of steady consumers in the C loop."""

    def __init__(self) -> None:
        assert _fanout is not None
        self._table = _fanout.Fanout(protect_address())
        #: key -> the session the table points into (kept alive while it does).
        self._sessions: dict[int, pylibsrtp.Session] = {}

    def __len__(self) -> int:
        return len(self._table)

    def send(self, packet: RtpPacket, ext_seq: int, abs_send_time: bytes) -> int:
        return self._table.send(packet.payload, packet.marker, ext_seq, packet.timestamp,
                                abs_send_time, _level(packet))

    def send_many(self, packets: list[tuple[RtpPacket, int]], abs_send_time: bytes) -> list[float]:
        """Send packets that arrived together ((packet, extended sequence number),
        in arrival order): each member gets all of them, in one system call,
        before the next member gets any. Returns when each member that was
        sent any had them (time.time()'s clock)."""
        return self._table.send_many([(p.payload, p.marker, ext, p.timestamp, _level(p))
                                      for p, ext in packets], abs_send_time)

    def admit(self, key: int, route: DirectRoute, seq_offset: int, timestamp_offset: int,
              start_ext: int) -> None:
        self._table.add(key=key, session=session_address(route.session), fd=route.fd,
                        host=route.host, port=route.port, ssrc=route.ssrc,
                        payload_type=route.payload_type, seq_offset=seq_offset,
                        timestamp_offset=timestamp_offset, start_ext=start_ext,
                        ext_prefix=route.ext_prefix, abs_send_time=route.abs_send_time,
                        level_id=route.level_id)
        self._sessions[key] = route.session

    def counters(self, key: int) -> dict[str, Any] | None:
        return self._table.counters(key)

    def history(self, key: int, sequence_number: int) -> bytes | None:
        return self._table.history(key, sequence_number)

    def release(self, key: int) -> tuple[dict[str, Any] | None, dict[int, bytes]]:
        """Take a consumer out; returns its counters and the clear packets it
        was sent that are still kept (sequence number -> packet)."""
        counters = self._table.counters(key)
        kept: dict[int, bytes] = {}
        if counters is not None and counters["sent_any"]:
            last = counters["last_seq"]
            for back in range(_fanout.HISTORY):
                seq = (last - back) & 0xFFFF
                data = self._table.history(key, seq)
                if data is not None:
                    kept[seq] = data
        self._table.remove(key)
        self._sessions.pop(key, None)
        return counters, kept
