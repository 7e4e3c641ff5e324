"""
lbproxy's own resource limits, told apart from server failures.

A connection attempt to a server can fail because of lbproxy rather than
the server: the process is out of file descriptors (C{EMFILE}, its
C{RLIMIT_NOFILE}), the system is (C{ENFILE}), the kernel has no socket
buffers or memory left (C{ENOBUFS}, C{ENOMEM}), or there is no local
address to connect from (C{EADDRNOTAVAIL}: every ephemeral port towards
that address is taken, or a configured bind address is gone). Counting
such a failure against the server would mark a healthy server down: an
outage caused by the proxy itself. L{localLimit} recognises them, however
Twisted reports them:

  - creating the socket fails (C{socket()} or a C{bind()} before the
    connect): a TCP client reports L{twisted.internet.error.ConnectBindError}
    with the errno in C{osError}; a UNIX client raises the C{OSError}
    itself, which its endpoint returns as a failed L{Deferred};
  - C{connect()} fails at once (C{EADDRNOTAVAIL} when the ephemeral ports
    are exhausted): L{twisted.internet.error.getConnectError} makes a
    L{twisted.internet.error.ConnectError} with the errno in C{osError};
  - the same errors come through unchanged from a
    L{twisted.internet.endpoints.HostnameEndpoint} (which fails with its
    last attempt's error) and from TLS wrapped around either.

A host name lookup that fails for want of descriptors is not among them:
the resolver reports it as an unknown name, without the reason.

L{LimitLog} writes the lines for such events, at most one a second per
kind of event, with counts, so that a flood of refused connections does
not become a flood of lines.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from twisted.internet.error import ConnectError
from twisted.python.failure import Failure

#: The errors that are lbproxy's (or its host's) limits, with what each says.
LOCAL_ERRORS: dict[int, str] = {
    errno.EMFILE: "lbproxy is out of file descriptors",
    errno.ENFILE: "the system is out of file descriptors",
    errno.ENOBUFS: "the kernel is out of socket buffers",
    errno.ENOMEM: "the kernel is out of memory for sockets",
    errno.EADDRNOTAVAIL: "lbproxy has no local address or port left to connect from",
}

#: Seconds between two lines about one kind of local limit event.
LOG_PERIOD = 1.0


def localLimit(reason: Failure | BaseException) -> int | None:
    """
    The errno of C{reason} when it is one of lbproxy's own resource limits
    (L{LOCAL_ERRORS}), else None (a failure of the server, the network or
    anything else).
    """
    value = reason.value if isinstance(reason, Failure) else reason
    if isinstance(value, ConnectError):
        number = value.osError
    elif isinstance(value, OSError):
        number = value.errno
    else:
        return None
    return number if isinstance(number, int) and number in LOCAL_ERRORS else None


def plural(count: int, word: str) -> str:
    """
    C{1 client}, C{2 clients}.
    """
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def describeLocalLimit(number: int) -> str:
    """
    One line naming the local limit C{number}, e.g. C{lbproxy is out of
    file descriptors (EMFILE)}.
    """
    what = LOCAL_ERRORS.get(number, "lbproxy hit a local resource limit")
    return f"{what} ({errno.errorcode.get(number, number)})"


class LimitLog:
    """
    Writes the lines of repeated events, one per key per L{LOG_PERIOD} at
    most: the first event at once, the ones that follow within the period
    as one line at its end, with their count.

    An event is C{note(key, emit)}: C{emit(count)} writes the line for
    C{count} events (the last caller's C{emit} is used for a summary).
    """

    def __init__(self, reactor, period: float = LOG_PERIOD) -> None:
        """
        @param reactor: provides C{seconds} and C{callLater}.
        """
        self._reactor = reactor
        self.period = period
        # key -> [time of the last line, events since, emit, summary call]
        self._keys: dict = {}

    def note(self, key, emit: Callable[[int], None]) -> None:
        now = self._reactor.seconds()
        entry = self._keys.get(key)
        if entry is None or (entry[1] == 0 and now - entry[0] >= self.period):
            self._keys[key] = [now, 0, emit, None]
            emit(1)
            return
        entry[1] += 1
        entry[2] = emit
        if entry[3] is None:
            entry[3] = self._reactor.callLater(
                max(0.0, entry[0] + self.period - now), self._summarise, key
            )

    def _summarise(self, key) -> None:
        entry = self._keys[key]
        count, emit = entry[1], entry[2]
        entry[:] = [self._reactor.seconds(), 0, emit, None]
        emit(count)

    def flush(self) -> None:
        """
        Write the pending summaries now (when the service stops).
        """
        for key, entry in list(self._keys.items()):
            call = entry[3]
            if call is not None and call.active():
                call.cancel()
                self._summarise(key)
