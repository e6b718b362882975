"""When a datagram reached its socket: the kernel's receive timestamp.

The forwarding delay the SFU reports starts there, not when the event loop
got round to reading the datagram, so that time a packet waits in the socket
behind other work counts. The benchmark's subscribers time their packets the
same way.
"""

from __future__ import annotations

import fcntl
import struct

#: ioctl: the receive time of the last datagram read from a socket, as a
#: struct timespec (linux/sockios.h SIOCGSTAMPNS_OLD; 64-bit time_t here).
_SIOCGSTAMPNS = 0x8907
_TIMESPEC = struct.Struct("qq")
_EMPTY = bytes(_TIMESPEC.size)


def kernel_receive_time(fd: int) -> float | None:
    """When the kernel received the datagram last read from socket `fd`
    (CLOCK_REALTIME, as time.time()), or None where it has not timed one.

    The first call turns timestamping on for the socket, so the datagram
    already read then has no timestamp. On loopback the timestamp is taken
    inside the sender's send call.
    """
    try:
        sec, nsec = _TIMESPEC.unpack(fcntl.ioctl(fd, _SIOCGSTAMPNS, _EMPTY))
    except OSError:
        return None
    return sec + nsec * 1e-9
