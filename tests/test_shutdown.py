"""
Tests for the graceful stop (BalancerService.stopService, ListenerService
drain): sockets close first, HTTP requests in flight are answered with
Connection: close, idle keep-alive connections close, other sessions get
the grace period, then are closed; on real loopback sockets in this
process.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from lbproxy.config import loadBytes
from lbproxy.core.model import ListenerState
from lbproxy.service import BalancerService
from support import freePort

CONFIG = """
[daemon]
grace = "{grace}"

[pools.web]
servers = [{{ name = "slow", address = "127.0.0.1:{backend}" }}]

[listeners.web]
bind = "tcp:{http}:interface=127.0.0.1"
mode = "http"
pool = "web"
timeouts.request = "1s"

[listeners.raw]
bind = "tcp:{tcp}:interface=127.0.0.1"
pool = "web"
"""


class SlowBackend(Protocol):
    """
    Answers each request head 0.3 s after it arrives; C{GET /streamed}
    gets its head at once and its body 0.3 s later.
    """

    def dataReceived(self, data):
        if b"\r\n\r\n" in data:
            if data.startswith(b"GET /streamed "):
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
                reactor.callLater(0.3, self.transport.write, b"slow")
            else:
                reactor.callLater(0.3, self.answer)

    def answer(self):
        if self.transport.connected:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")


class Client(Protocol):
    """
    Collects what it receives; C{closed} fires when the connection ends.
    """

    def __init__(self):
        self.received = b""
        self.closed = Deferred()
        self.responses = Deferred()

    def dataReceived(self, data):
        self.received += data
        if self.received.count(b"slow") and not self.responses.called:
            self.responses.callback(self.received)

    def connectionLost(self, reason):
        self.closed.callback(self.received)


class GracefulStop(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        backend = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(SlowBackend))
        self.addCleanup(backend.stopListening)
        self.backend = backend.getHost().port

    def start(self, grace: str) -> BalancerService:
        self.http, self.tcp = freePort(), freePort()
        text = CONFIG.format(grace=grace, backend=self.backend, http=self.http, tcp=self.tcp)
        service = BalancerService(loadBytes(text.encode(), "lb.toml"), reactor)
        service.privilegedStartService()
        service.startService()
        return service

    def connect(self, port: int):
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Client())

    @inlineCallbacks
    def test_httpInFlightAnsweredIdleClosed(self):
        """
        On stop, a request in flight is answered with Connection: close,
        an idle keep-alive connection is closed at once, and the stop
        waits for them.
        """
        service = self.start("30s")
        idle = yield self.connect(self.http)
        idle.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = yield idle.responses
        self.assertNotIn(b"onnection: close", first)
        busy = yield self.connect(self.http)
        busy.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        listener = service.balancer.listeners["web"]
        while not any(session.exchange is not None for session in listener.sessions):
            yield _later(0.01)
        stopping = service.stopService()
        stopped = []
        stopping.addCallback(stopped.append)
        self.assertEqual(listener.state, ListenerState.DRAINING)
        received = yield idle.closed
        self.assertEqual(received, first)
        self.assertEqual(stopped, [])
        answered = yield busy.closed
        self.assertIn(b"HTTP/1.1 200 OK", answered)
        self.assertIn(b"Connection: close", answered)
        self.assertTrue(answered.endswith(b"slow"))
        while not stopped:
            yield _later(0.01)
        self.assertEqual(listener.state, ListenerState.STOPPED)

    @inlineCallbacks
    def test_keepAliveResponseUnderWayThenIdle(self):
        """
        A keep-alive connection whose response head went out before the
        stop finishes its response, then is closed once idle for a moment
        (not after the keep-alive timeout), and the stop waits for it.
        """
        service = self.start("30s")
        client = yield self.connect(self.http)
        client.transport.write(b"GET /streamed HTTP/1.1\r\nHost: x\r\n\r\n")
        while b"\r\n\r\n" not in client.received:
            yield _later(0.01)
        stopping = service.stopService()
        stopped = []
        stopping.addCallback(stopped.append)
        received = yield client.closed
        self.assertTrue(received.endswith(b"slow"))
        self.assertNotIn(b"onnection: close", received)
        while not stopped:
            yield _later(0.01)

    @inlineCallbacks
    def test_sessionsClosedAfterTheGracePeriod(self):
        """
        A TCP session still open when the grace period ends is closed, and
        said so in one line.
        """
        service = self.start("200ms")
        session = yield self.connect(self.tcp)
        listener = service.balancer.listeners["raw"]
        while not listener.sessions:
            yield _later(0.01)
        yield service.stopService()
        yield session.closed
        self.assertEqual(listener.state, ListenerState.STOPPED)
        lines = [formatEvent(e) for e in self.events if "grace period over" in formatEvent(e)]
        self.assertEqual(lines, ["listener raw: 0.2s grace period over, closing 1 sessions still open"])


def _later(seconds: float) -> Deferred:
    done = Deferred()
    reactor.callLater(seconds, done.callback, None)
    return done
