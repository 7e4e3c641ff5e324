"""
lbproxy's epoll reactor dispatches readiness events without the legacy log
context, and survives a handler that raises.
"""

import socket
import sys

import pytest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IReactorFDSet, IReactorTCP, IReactorTime
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

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
    from lbproxy.reactor import EPollReactor

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
