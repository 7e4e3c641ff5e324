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

Two more costs of Twisted's dispatch are left out on the busy path:

  - A read event of a connected plain TCP connection (C{tcp.Server},
    C{tcp.Client}) is handled here: C{recv}, then the protocol's
    C{dataReceived} (the protocol an endpoint wraps, directly), instead of
    C{_doReadOrWrite}, C{doRead} and C{_dataReceived} one after the other.
    Errors, the end of the stream and a handler's exception end the
    connection as Twisted's dispatch does.
  - L{EPollReactor.callAfterEvents} runs a function once the events of
    the current iteration are handled, without the C{DelayedCall} a
    C{callLater(0)} allocates, schedules and runs: what
    L{lbproxy._twisted.writebatch.WriteBatch} uses to send the iteration's writes.

And one change of behaviour: a listening socket whose C{accept} fails for
want of descriptors, socket buffers or memory (C{EMFILE}, C{ENFILE},
C{ENOBUFS}, C{ENOMEM}) stops accepting for L{ACCEPT_PAUSE} seconds, as
HAProxy and nginx do, and says so in one line a second at most
(L{AcceptGuard}). The connections wait in the kernel's listen queue until
descriptors are free again. Twisted alone would accept and close every
waiting connection on C{EMFILE} (with a line for each), and on the other
three errors poll the still readable socket again at once, round after
round, at full CPU.

Its TCP listening ports accept, and its C{connectTCP} makes, connections
that keep their attributes in slots (L{lbproxy._twisted.transports}):
the same transports for less memory per connection.

C{twistd -n lbproxy} installs it unless C{--reactor} names another one.
"""

from __future__ import annotations

import errno
from select import EPOLLIN, EPOLLOUT

from types import MappingProxyType

from twisted.internet import epollreactor, tcp
from twisted.internet.base import DelayedCall
from twisted.internet.endpoints import _WrappingProtocol
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.logger import Logger

from lbproxy._twisted import PLAIN_TCP
from lbproxy._twisted.directconnect import connectDirect
from lbproxy._twisted.transports import LeanConnector, LeanServer
from lbproxy.core.limits import LimitLog, describeLocalLimit

#: The largest read a connection grows to (from Twisted's 64 KiB) once its
#: reads fill the buffer.
_BULK_READ = 262144

#: The keyword arguments of a timed call given none (read only).
_NO_KEYWORDS = MappingProxyType({})

#: Seconds a listening socket stops accepting after running out of
#: descriptors, buffers or memory.
ACCEPT_PAUSE = 0.1

#: The errors of C{accept} that are lbproxy's limits, not the client's.
_ACCEPT_LIMITS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptGuard:
    """
    Stands in for the socket of a listening port (its C{socket}
    attribute), passing everything to the socket, and pauses the port when
    C{accept} fails for one of lbproxy's limits: the port stops reading
    for L{ACCEPT_PAUSE} seconds and the accept reports that no connection
    is waiting (C{EAGAIN}), which ends the port's accept loop quietly.

    It relies on Twisted's listening ports accepting through their
    C{socket} attribute, and taking C{EAGAIN} as "none waiting"
    (C{test_reactor} checks both on a real port).
    """

    log = Logger()

    def __init__(self, port, reactor, limitLog: LimitLog, pause: float = ACCEPT_PAUSE) -> None:
        self._socket = port.socket
        self._port = port
        self._reactor = reactor
        self._limitLog = limitLog
        self._pause = pause
        self._resume = None
        address = port.getHost()
        name = getattr(address, "name", None)
        if name is not None:
            self._where = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        else:
            self._where = f"{address.host}:{address.port}"

    def __getattr__(self, name: str):
        return getattr(self._socket, name)

    def accept(self):
        try:
            return self._socket.accept()
        except OSError as e:
            if e.errno not in _ACCEPT_LIMITS:
                raise
            self._paused(e.errno)
            raise BlockingIOError(errno.EAGAIN, "accepting paused") from None

    def _paused(self, number: int) -> None:
        port = self._port
        port.stopReading()
        if self._resume is None or not self._resume.active():
            self._resume = self._reactor.callLater(self._pause, self._resumeAccepting)
        where = self._where
        limit = describeLocalLimit(number)
        pause = self._pause

        def emit(count: int) -> None:
            self.log.error(
                "{limit}: stopped accepting on {address} for {pause}s, {times} "
                "(connections wait in the listen queue)",
                limit=limit,
                address=where,
                pause=f"{pause:g}",
                times="once" if count == 1 else f"{count} times",
                count=count,
            )

        self._limitLog.note((where, number), emit)

    def _resumeAccepting(self) -> None:
        self._resume = None
        port = self._port
        if port.connected and not port.disconnecting:
            port.startReading()


def guardAccepts(port, reactor, limitLog: LimitLog):
    """
    Put an L{AcceptGuard} on the listening C{port} (a started
    C{twisted.internet.tcp.Port} or C{unix.Port}); return C{port}.
    """
    port.socket = AcceptGuard(port, reactor, limitLog)
    return port


def _leanConnections(port):
    """
    Make the listening C{port}, if it is a TCP one, accept
    L{LeanServer}s; return it.
    """
    if type(port) is tcp.Port:
        port.transport = LeanServer
    return port


class EPollReactor(epollreactor.EPollReactor):
    """
    epoll reactor dispatching readiness events without a log context.
    """

    _eventLog = Logger()

    def __init__(self) -> None:
        self._afterEvents: list = []
        super().__init__()
        self._acceptLimitLog = LimitLog(self)
        # Bound once, for every timed call (see callLater).
        self._cancelTimedCall = self._cancelCallLater
        self._moveTimedCallSooner = self._moveCallLaterSooner

    def callLater(self, delay, callable, *args, **kw) -> DelayedCall:
        """
        As Twisted's C{callLater}, without allocating for each call what
        they all share: its C{DelayedCall} gets the reactor's two bound
        methods made once, and one empty keyword dictionary (a timed call
        never changes it). A connection's timer costs about 190 bytes less
        while it waits.
        """
        assert delay >= 0, f"{delay} is not greater than or equal to 0 seconds"
        call = DelayedCall(
            self.seconds() + delay,
            callable,
            args,
            kw or _NO_KEYWORDS,
            self._cancelTimedCall,
            self._moveTimedCallSooner,
            seconds=self.seconds,
        )
        self._newTimedCalls.append(call)
        return call

    # Listening ports pause when lbproxy runs out of descriptors (see the
    # module docstring); TLS listeners listen through listenTCP.

    def listenTCP(self, port, factory, backlog=50, interface=""):
        return guardAccepts(
            _leanConnections(super().listenTCP(port, factory, backlog, interface)), self, self._acceptLimitLog
        )

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        return guardAccepts(
            super().listenUNIX(address, factory, backlog, mode, wantPID), self, self._acceptLimitLog
        )

    def adoptStreamPort(self, fileDescriptor, addressFamily, factory):
        return guardAccepts(
            _leanConnections(super().adoptStreamPort(fileDescriptor, addressFamily, factory)),
            self,
            self._acceptLimitLog,
        )

    # Connections with their attributes in slots (lbproxy._twisted.transports).

    def connectTCP(self, host, port, factory, timeout=30.0, bindAddress=None):
        connector = LeanConnector(host, port, factory, timeout, bindAddress, self)
        connector.connect()
        return connector

    def connectDirect(self, host: str, port: int, attempt):
        """
        Start connecting to the IP address C{host} and C{port} without a
        connector (L{lbproxy._twisted.directconnect}), telling C{attempt}
        (an L{IConnectAttempt}) what happens.

        @return: the connection; C{stopConnecting()} abandons the attempt.
        """
        return connectDirect(self, host, port, attempt)

    # Watching descriptors: what Twisted's addReader, addWriter,
    # removeReader and removeWriter do through _add, _remove and the
    # continuous poller's isReading/isWriting, written out in one call
    # each. A proxied connection makes some twenty-five of these calls,
    # most of them for a descriptor already in the state asked for.

    def addReader(self, reader) -> None:
        fd = reader.fileno()
        reads = self._reads
        if fd in reads:
            return
        try:
            if fd in self._writes:
                self._poller.modify(fd, EPOLLIN | EPOLLOUT)
            else:
                self._poller.register(fd, EPOLLIN)
        except OSError as e:
            if e.errno == errno.EPERM:
                self._continuousPolling.addReader(reader)
                return
            raise
        reads.add(fd)
        self._selectables[fd] = reader

    def addWriter(self, writer) -> None:
        fd = writer.fileno()
        writes = self._writes
        if fd in writes:
            return
        try:
            if fd in self._reads:
                self._poller.modify(fd, EPOLLIN | EPOLLOUT)
            else:
                self._poller.register(fd, EPOLLOUT)
        except OSError as e:
            if e.errno == errno.EPERM:
                self._continuousPolling.addWriter(writer)
                return
            raise
        writes.add(fd)
        self._selectables[fd] = writer

    def removeReader(self, reader) -> None:
        polling = self._continuousPolling
        if reader in polling._readers:
            polling.removeReader(reader)
            return
        fd = self._watchedFileno(reader)
        reads = self._reads
        if fd in reads:
            if fd in self._writes:
                self._poller.modify(fd, EPOLLOUT)
            else:
                del self._selectables[fd]
                self._poller.unregister(fd)
            reads.remove(fd)

    def removeWriter(self, writer) -> None:
        polling = self._continuousPolling
        if writer in polling._writers:
            polling.removeWriter(writer)
            return
        fd = self._watchedFileno(writer)
        writes = self._writes
        if fd in writes:
            if fd in self._reads:
                self._poller.modify(fd, EPOLLIN)
            else:
                del self._selectables[fd]
                self._poller.unregister(fd)
            writes.remove(fd)

    def _watchedFileno(self, selectable) -> int:
        """
        The descriptor C{selectable} is watched under: its C{fileno()}, or,
        once it has none (-1, its socket closed), the one it was
        registered with (-1 if none).
        """
        fd = selectable.fileno()
        if fd == -1:
            for watched, other in self._selectables.items():
                if other is selectable:
                    return watched
        return fd

    def callAfterEvents(self, f) -> None:
        """
        Call C{f} (no arguments) once, after the readiness events of the
        current iteration are handled; called from a timed call (or before
        the reactor runs), after the timed calls that are due, before the
        reactor polls again. A function that raises is logged.
        """
        self._afterEvents.append(f)

    def _runAfterEvents(self) -> None:
        while self._afterEvents:
            calls = self._afterEvents
            self._afterEvents = []
            for f in calls:
                try:
                    f()
                except Exception:
                    self._eventLog.failure("unhandled error after events in {f!r}", f=f)

    def runUntilCurrent(self) -> None:
        super().runUntilCurrent()
        if self._afterEvents:
            self._runAfterEvents()

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
            if (
                event == EPOLLIN
                and type(selectable) in PLAIN_TCP
                and selectable.connected
                and not selectable._aborting
            ):
                # What _doReadOrWrite, doRead and _dataReceived do for
                # it, written out: this runs for nearly every event.
                size = selectable.bufferSize
                try:
                    data = selectable.socket.recv(size)
                except OSError as e:
                    if e.args[0] != errno.EWOULDBLOCK:
                        self._readEnded(selectable, CONNECTION_LOST)
                    continue
                if not data:
                    self._readEnded(selectable, CONNECTION_DONE)
                    continue
                if len(data) == size and size < _BULK_READ:
                    # The read filled the buffer: a bulk transfer. Read
                    # more at a time from now on.
                    selectable.bufferSize = size * 2
                protocol = selectable.protocol
                if type(protocol) is _WrappingProtocol:
                    protocol = protocol._wrappedProtocol
                try:
                    protocol.dataReceived(data)
                except BaseException as e:
                    self._eventLog.failure(
                        "unhandled error handling data of {selectable!r}",
                        selectable=selectable,
                    )
                    self._readEnded(selectable, e)
                continue
            try:
                handle(selectable, fd, event)
            except Exception:
                self._eventLog.failure(
                    "unhandled error handling an event of {selectable!r}",
                    selectable=selectable,
                )

        if self._afterEvents:
            self._runAfterEvents()

    doIteration = doPoll

    def _readEnded(self, connection: tcp.Connection, why: BaseException) -> None:
        """
        A plain TCP connection's read ended it (C{why}: the end of the
        stream, a failed C{recv} or the protocol's exception): what
        C{_doReadOrWrite} then does.
        """
        try:
            self._disconnectSelectable(connection, why, True)
        except Exception:
            self._eventLog.failure(
                "unhandled error handling an event of {selectable!r}",
                selectable=connection,
            )


def install() -> EPollReactor:
    """
    Install L{EPollReactor} as the global reactor.
    """
    from twisted.internet.main import installReactor

    reactor = EPollReactor()
    installReactor(reactor)
    return reactor
