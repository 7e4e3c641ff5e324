"""
lbproxy's epoll reactor dispatches readiness events without the legacy log
context, and survives a handler that raises; reads of plain TCP
connections are handled directly, and callAfterEvents runs functions once
an iteration's events are handled.
"""

import errno
import os
import select
import socket
import sys
import time

import pytest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IReactorFDSet,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.core.limits import LimitLog

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="epoll is Linux only")


class Reader(FileDescriptor):
    def __init__(self, sock, reactor, fail=False):
        super().__init__(reactor)
        self.sock = sock
        self.fail = fail
        self.data = []

    def fileno(self):
        return self.sock.fileno()

    def doRead(self):
        if self.fail:
            raise RuntimeError("handler bug")
        self.data.append(self.sock.recv(100))

    def connectionLost(self, reason):
        self.lost = reason


@pytest.fixture
def reactor():
    from lbproxy._twisted.reactor import EPollReactor

    reactor = EPollReactor()
    yield reactor
    reactor._poller.close()


def test_interfaces(reactor):
    assert verifyObject(IReactorFDSet, reactor)
    assert verifyObject(IReactorTCP, reactor)
    assert verifyObject(IReactorTime, reactor)


def test_readEventDispatched(reactor):
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        reader = Reader(a, reactor)
        reactor.addReader(reader)
        b.send(b"ping")
        reactor.doPoll(1)
        assert reader.data == [b"ping"]
        reactor.removeReader(reader)


def test_handlerErrorLoggedAndLoopGoesOn(reactor):
    """
    A handler that raises is logged; the reactor's own handling drops the
    broken selectable, and other selectables are still served.
    """
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        a.setblocking(False)
        c.setblocking(False)
        broken = Reader(a, reactor, fail=True)
        working = Reader(c, reactor)
        reactor.addReader(broken)
        reactor.addReader(working)
        b.send(b"x")
        d.send(b"y")
        with capturedLogs() as events:
            reactor.doPoll(1)
        assert working.data == [b"y"]
        assert broken.lost.check(RuntimeError)
        assert any("handler bug" in repr(e) for e in events)
        reactor.removeAll()


def test_emptyPollReturns(reactor):
    reactor.doPoll(0)


def test_callAfterEventsRunsAfterTheEvents(reactor):
    """
    A function given to C{callAfterEvents} while events are handled runs
    once, after every event of the iteration; one given from a timed call
    runs after the timed calls that are due.
    """
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    order = []

    class Noting(Reader):
        def doRead(self):
            super().doRead()
            order.append(self.data[-1])
            reactor.callAfterEvents(lambda: order.append("after"))

    with a, b, c, d:
        a.setblocking(False)
        c.setblocking(False)
        reactor.addReader(Noting(a, reactor))
        reactor.addReader(Noting(c, reactor))
        b.send(b"x")
        d.send(b"y")
        reactor.doPoll(1)
        assert sorted(order[:2]) == [b"x", b"y"]
        assert order[2:] == ["after", "after"]
        reactor.removeAll()
    del order[:]
    reactor.callLater(0, lambda: reactor.callAfterEvents(lambda: order.append("after")))
    reactor.callLater(0, lambda: order.append("timed"))
    reactor.runUntilCurrent()
    assert order == ["timed", "after"]


def test_callAfterEventsErrorLogged(reactor):
    """
    A function that raises is logged; the others still run, including one
    it scheduled.
    """
    ran = []

    def broken():
        reactor.callAfterEvents(lambda: ran.append("later"))
        raise RuntimeError("after bug")

    reactor.callAfterEvents(broken)
    reactor.callAfterEvents(lambda: ran.append("next"))
    with capturedLogs() as events:
        reactor.doPoll(0)
    assert ran == ["next", "later"]
    assert any("after bug" in repr(e) for e in events)


class Recorder(Protocol):
    """
    Keeps what arrives and how the connection ended; optionally raises on
    data.
    """

    fail = False

    def __init__(self):
        self.received = []
        self.ended = []

    def dataReceived(self, data):
        self.received.append(data)
        if self.fail:
            raise RuntimeError("protocol bug")

    def readConnectionLost(self):
        self.ended.append("read")
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.ended.append(reason.type)


@implementer(IHalfCloseableProtocol)
class HalfCloseRecorder(Recorder):
    pass


def _iterateUntil(reactor, condition):
    for _ in range(500):
        if condition():
            return
        reactor.iterate(0.01)
    raise AssertionError("condition not reached")


@pytest.fixture
def tcpPair(reactor):
    """
    A connected pair of plain TCP connections of the reactor: a server
    protocol (returned as built) and a client one, connected through an
    endpoint (so wrapped by it).
    """
    servers = []

    def build(serverClass=Recorder, clientClass=Recorder):
        factory = Factory.forProtocol(serverClass)
        factory.noisy = False
        built = []

        class Keeping(Factory):
            noisy = False

            def buildProtocol(self, addr):
                built.append(factory.buildProtocol(addr))
                return built[-1]

        port = reactor.listenTCP(0, Keeping(), interface="127.0.0.1")
        servers.append(port)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        connected = []
        connectProtocol(endpoint, clientClass()).addCallback(connected.append)
        _iterateUntil(reactor, lambda: connected and built)
        servers.extend([built[0].transport, connected[0].transport])
        return built[0], connected[0]

    yield build
    for each in servers:
        if hasattr(each, "stopListening"):
            each.stopListening()
        else:
            each.abortConnection()
    for _ in range(5):
        reactor.iterate(0)


def test_tcpReadsReachTheProtocols(reactor, tcpPair):
    """
    Data on plain TCP connections reaches the protocol, the one an
    endpoint wraps included, and the peer's close ends the connection.
    """
    server, client = tcpPair()
    assert type(client.transport.protocol).__name__ == "_WrappingProtocol"
    client.transport.write(b"ping")
    _iterateUntil(reactor, lambda: server.received)
    server.transport.write(b"pong")
    _iterateUntil(reactor, lambda: client.received)
    assert (server.received, client.received) == ([b"ping"], [b"pong"])
    client.transport.loseConnection()
    _iterateUntil(reactor, lambda: server.ended)
    assert server.ended == [ConnectionDone]


def test_bulkReadsGrow(reactor, tcpPair):
    """
    A connection whose reads fill the buffer (a bulk transfer) reads more
    at a time, doubling up to 256 KiB; one that reads little keeps
    Twisted's 64 KiB. Nothing is lost or reordered.
    """
    server, client = tcpPair()
    assert server.transport.bufferSize == 65536
    client.transport.write(b"small")
    _iterateUntil(reactor, lambda: server.received)
    assert server.transport.bufferSize == 65536
    payload = bytes(range(256)) * 16384
    server.received.clear()
    client.transport.write(payload)
    _iterateUntil(reactor, lambda: sum(map(len, server.received)) == len(payload))
    assert b"".join(server.received) == payload
    assert 65536 < server.transport.bufferSize <= 262144
    assert max(map(len, server.received)) <= 262144


def test_tcpHalfClose(reactor, tcpPair):
    """
    A half-closeable protocol hears of the peer's FIN through
    readConnectionLost, as with Twisted's dispatch.
    """
    server, client = tcpPair(serverClass=HalfCloseRecorder)
    client.transport.write(b"x")
    client.transport.loseWriteConnection()
    _iterateUntil(reactor, lambda: "read" in server.ended)
    assert server.received == [b"x"]


def test_tcpProtocolErrorClosesAndIsLogged(reactor, tcpPair):
    """
    A protocol that raises in dataReceived is logged and its connection
    lost with that error; the peer sees the connection end.
    """

    class Failing(Recorder):
        fail = True

    server, client = tcpPair(serverClass=Failing)
    with capturedLogs() as events:
        client.transport.write(b"boom")
        _iterateUntil(reactor, lambda: server.ended)
    assert server.ended == [RuntimeError]
    assert any("protocol bug" in repr(e) for e in events)
    _iterateUntil(reactor, lambda: client.ended)


def test_writeBatchSendsAfterEvents(reactor, tcpPair):
    """
    On this reactor a L{WriteBatch} is sent through C{callAfterEvents}:
    no timed call, and the data arrives.
    """
    from lbproxy._twisted.writebatch import WriteBatch

    server, client = tcpPair()
    batch = WriteBatch(reactor)
    batch.write(server.transport, b"one ")
    batch.write(server.transport, b"two")
    assert reactor.getDelayedCalls() == [] or all(
        call.func != batch.flush for call in reactor.getDelayedCalls()
    )
    _iterateUntil(reactor, lambda: b"".join(client.received) == b"one two")


class _FailingAccept:
    """
    A listening socket whose C{accept} fails with C{errno}; everything else
    is the real socket's.
    """

    def __init__(self, sock, number):
        self._sock = sock
        self.number = number
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def accept(self):
        self.calls += 1
        raise OSError(self.number, os.strerror(self.number))


def _stopListening(reactor, port):
    port.stopListening()
    for _ in range(5):
        reactor.iterate(0)


def _listen(reactor, accepted, unixPath=None):
    class Keeping(Factory):
        noisy = False

        def buildProtocol(self, addr):
            accepted.append(Recorder())
            return accepted[-1]

    if unixPath is not None:
        return reactor.listenUNIX(unixPath, Keeping())
    return reactor.listenTCP(0, Keeping(), interface="127.0.0.1")


@pytest.mark.parametrize("number", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_acceptLimitPausesTheListener(reactor, number):
    """
    A listener whose accept fails for want of descriptors, buffers or
    memory stops reading for ACCEPT_PAUSE and logs one line naming
    lbproxy's limit; the waiting connection is not accepted and closed (as
    Twisted's own EMFILE recovery would) but stays queued, and is accepted
    once the pause is over. This runs Twisted's own Port.doRead, so it
    fails if Twisted stops accepting through the port's C{socket}
    attribute or stops taking EAGAIN as "none waiting".
    """
    from lbproxy.core.limits import describeLocalLimit
    from lbproxy._twisted.reactor import ACCEPT_PAUSE, AcceptGuard

    accepted = []
    port = _listen(reactor, accepted)
    guard = port.socket
    assert isinstance(guard, AcceptGuard)
    real = guard._socket
    guard._socket = failing = _FailingAccept(real, number)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        with capturedLogs() as events:
            reactor.doPoll(1)
        assert failing.calls == 1
        assert port not in reactor.getReaders()
        lines = [formatEvent(e) for e in events]
        assert lines == [
            f"{describeLocalLimit(number)}: stopped accepting on 127.0.0.1:{port.getHost().port} "
            "for 0.1s, once (connections wait in the listen queue)"
        ]
        assert accepted == []
        guard._socket = real
        time.sleep(ACCEPT_PAUSE)
        reactor.runUntilCurrent()
        assert port in reactor.getReaders()
        _iterateUntil(reactor, lambda: accepted)
        client.sendall(b"still here")
        _iterateUntil(reactor, lambda: accepted[0].received)
        assert accepted[0].received == [b"still here"]
    finally:
        client.close()
        for protocol in accepted:
            protocol.transport.abortConnection()
        _stopListening(reactor, port)


def test_acceptLimitsLoggedOnceASecond(reactor):
    """
    A listener that keeps running out of descriptors logs one line a
    second at most, with the count of pauses.
    """
    from lbproxy._twisted.reactor import AcceptGuard

    clock = Clock()
    accepted = []
    port = _listen(reactor, accepted)
    guard = AcceptGuard(port, clock, LimitLog(clock))
    guard._socket = _FailingAccept(port.socket._socket, errno.EMFILE)
    try:
        with capturedLogs() as events:
            for _ in range(25):
                with pytest.raises(BlockingIOError):
                    guard.accept()
                clock.advance(0.1)
            clock.advance(1)
        lines = [formatEvent(e) for e in events]
        assert [line.rsplit(",", 1)[1] for line in lines] == [
            " once (connections wait in the listen queue)",
            " 10 times (connections wait in the listen queue)",
            " 10 times (connections wait in the listen queue)",
            " 4 times (connections wait in the listen queue)",
        ]
    finally:
        _stopListening(reactor, port)


def test_otherAcceptErrorsLeftToTwisted(reactor):
    """
    An accept error that is not a local limit (a connection aborted before
    it was accepted) does not pause the listener.
    """
    accepted = []
    port = _listen(reactor, accepted)
    guard = port.socket
    guard._socket = _FailingAccept(guard._socket, errno.ECONNABORTED)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        with capturedLogs():
            reactor.doPoll(1)
        assert port in reactor.getReaders()
    finally:
        client.close()
        _stopListening(reactor, port)


def test_unixListenerGuarded(reactor, tmp_path):
    from lbproxy._twisted.reactor import AcceptGuard

    port = _listen(reactor, [], unixPath=str(tmp_path / "s"))
    try:
        assert isinstance(port.socket, AcceptGuard)
        assert port.socket._where == str(tmp_path / "s")
    finally:
        _stopListening(reactor, port)


def test_adoptedListenerGuarded(reactor):
    """
    A listening socket handed over (systemd socket activation, a socket
    made with SO_REUSEPORT) is guarded too.
    """
    from lbproxy._twisted.reactor import AcceptGuard

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    sock.setblocking(False)
    port = reactor.adoptStreamPort(sock.detach(), socket.AF_INET, Factory.forProtocol(Protocol))
    try:
        assert isinstance(port.socket, AcceptGuard)
        assert port.socket._where == f"127.0.0.1:{port.getHost().port}"
    finally:
        _stopListening(reactor, port)


def test_twistedAloneSpinsOnENFILE():
    """
    Why the guard exists, on Twisted's own epoll reactor: a listener whose
    accept fails with ENFILE is polled again at once, round after round,
    each with a log line, while the connection waits.
    """
    from twisted.internet import epollreactor

    plain = epollreactor.EPollReactor()
    accepted = []
    port = _listen(plain, accepted)
    port.socket = _FailingAccept(port.socket, errno.ENFILE)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        with capturedLogs() as events:
            for _ in range(20):
                plain.doPoll(1)
        assert port.socket.calls == 20
        assert len(events) == 20
    finally:
        client.close()
        port.socket = port.socket._sock
        _stopListening(plain, port)
        plain._poller.close()


def _watched(reactor, fd):
    """
    The events the reactor's epoll reports for C{fd} now, or None when it
    is not registered (a registered descriptor of a socket pair is
    writable, and readable when data waits).
    """
    events = dict(reactor._poller.poll(0))
    return events.get(fd)


def test_watchingDescriptors(reactor):
    """
    addReader, addWriter, removeReader and removeWriter keep epoll and the
    reactor's sets in step, in any order, and each is a no-op when the
    descriptor is already in the state asked for.
    """
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.send(b"x")
        selectable = Reader(a, reactor)
        fd = a.fileno()
        reactor.addReader(selectable)
        reactor.addReader(selectable)
        assert _watched(reactor, fd) == select.EPOLLIN
        reactor.addWriter(selectable)
        reactor.addWriter(selectable)
        assert _watched(reactor, fd) == select.EPOLLIN | select.EPOLLOUT
        assert selectable in reactor.getReaders() and selectable in reactor.getWriters()
        reactor.removeReader(selectable)
        reactor.removeReader(selectable)
        assert _watched(reactor, fd) == select.EPOLLOUT
        assert selectable not in reactor.getReaders() and selectable in reactor.getWriters()
        reactor.addReader(selectable)
        reactor.removeWriter(selectable)
        reactor.removeWriter(selectable)
        assert _watched(reactor, fd) == select.EPOLLIN
        reactor.removeReader(selectable)
        assert _watched(reactor, fd) is None
        assert fd not in reactor._selectables and fd not in reactor._reads | reactor._writes


def test_removedAfterItsSocketClosed(reactor):
    """
    A selectable whose C{fileno()} is -1 by now (its socket closed) is
    still removed, by the descriptor it was registered with.
    """
    a, b = socket.socketpair()
    with b:
        selectable = Reader(a, reactor)
        reactor.addReader(selectable)
        reactor.addWriter(selectable)
        fd = a.fileno()
        selectable.fileno = lambda: -1
        reactor.removeReader(selectable)
        assert fd not in reactor._reads and fd in reactor._writes
        reactor.removeWriter(selectable)
        assert fd not in reactor._selectables and fd not in reactor._writes
        a.close()


def test_regularFilesPolledContinuously(reactor, tmp_path):
    """
    A descriptor epoll refuses (a regular file) is polled continuously,
    and removed from there.
    """
    path = tmp_path / "file"
    path.write_bytes(b"data")
    with open(path, "rb") as f:
        selectable = Reader(f, reactor)
        reactor.addReader(selectable)
        reactor.addWriter(selectable)
        assert reactor._continuousPolling.isReading(selectable)
        assert reactor._continuousPolling.isWriting(selectable)
        assert selectable not in reactor._selectables.values()
        reactor.removeReader(selectable)
        reactor.removeWriter(selectable)
        assert not reactor._continuousPolling.isReading(selectable)
        assert not reactor._continuousPolling.isWriting(selectable)
