"""
The reactor lbproxy runs on by default: Twisted's epoll reactor without
the legacy per-event log context.

For every readiness event Twisted's epoll reactor calls the handler
through C{twisted.python.log.callWithLogger}, which asks the selectable
for its log prefix and pushes a context dictionary for C{twisted.python.log}
messages emitted meanwhile. lbproxy logs only through C{twisted.logger},
which does not read that context, and a relayed request costs a few such
events, at about 1.4 microseconds each: a large share of a small L4 request.
This reactor dispatches the events directly and logs a handler's
unexpected error itself.

C{twistd -n lbproxy} installs it unless C{--reactor} names another one.
"""

from __future__ import annotations

import errno

from twisted.internet import epollreactor
from twisted.logger import Logger


class EPollReactor(epollreactor.EPollReactor):
    """
    epoll reactor dispatching readiness events without a log context.
    """

    _eventLog = Logger()

    def doPoll(self, timeout: float | None) -> None:
        try:
            events = self._poller.poll(
                -1 if timeout is None else timeout, len(self._selectables)
            )
        except InterruptedError:
            return
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                handle(selectable, fd, event)
            except Exception:
                self._eventLog.failure(
                    "unhandled error handling an event of {selectable!r}",
                    selectable=selectable,
                )

    doIteration = doPoll


def install() -> EPollReactor:
    """
    Install L{EPollReactor} as the global reactor.
    """
    from twisted.internet.main import installReactor

    reactor = EPollReactor()
    installReactor(reactor)
    return reactor
