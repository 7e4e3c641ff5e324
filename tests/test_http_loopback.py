"""
End-to-end tests of the HTTP front on loopback sockets with the real
reactor and small Twisted backends: backend connection reuse, pipelining,
large bodies both ways with bounded buffering, the keep-alive race,
websocket tunnels, retries and 503.
"""

from __future__ import annotations

import hashlib

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from lbproxy.config import PoolConfig
from lbproxy.http.config import HTTPListenerConfig
from lbproxy.http.factory import HTTPProxyFactory
from lbproxy.http.parser import ResponseParser
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin

from support import freePort
from test_http_front import RecordingLog

pytestmark = pytest.mark.integration


@implementer(IPushProducer)
class _Streamer:
    """
    Writes C{size} bytes to a twisted.web request, pausing when the
    transport asks.
    """

    def __init__(self, request, size: int, block: int = 65536) -> None:
        self.request = request
        self.remaining = size
        self.block = b"z" * block
        self.paused = False
        self.digest = hashlib.sha256()

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.remaining > 0:
            piece = self.block[: self.remaining]
            self.remaining -= len(piece)
            self.digest.update(piece)
            self.request.write(piece)
        if self.remaining <= 0 and not self.paused:
            self.request.unregisterProducer()
            self.request.finish()
            self.remaining = -1

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.remaining = -1


class BackendResource(resource.Resource):
    """
    /            -> "NAME URI xff=..."
    /big?n=N     -> N bytes streamed, chunked
    /upload      -> "LENGTH SHA256" of the request body
    """

    isLeaf = True

    def __init__(self, name: str, delay: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.delay = delay

    def render(self, request):
        if self.delay:
            reactor.callLater(self.delay, self._late, request)
            return server.NOT_DONE_YET
        return self._answer(request)

    def _late(self, request):
        if not request.finished and not request._disconnected:
            request.write(self._answer(request))
            request.finish()

    def _answer(self, request):
        path = request.path
        if path == b"/big":
            size = int(request.args[b"n"][0])
            _Streamer(request, size).start()
            return server.NOT_DONE_YET
        if path == b"/upload":
            body = request.content.read()
            return b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
        xff = request.getHeader(b"x-forwarded-for") or b"-"
        return b"%s %s xff=%s" % (self.name.encode(), request.uri, xff)


class CountingSite(server.Site):
    """
    A twisted.web site that counts the connections it accepts, and can
    drop them all at once (a killed server).
    """

    noisy = False

    def __init__(self, name: str, delay: float = 0.0) -> None:
        super().__init__(BackendResource(name, delay))
        self.accepted = 0
        self.connections = []

    def buildProtocol(self, addr):
        self.accepted += 1
        protocol = super().buildProtocol(addr)
        self.connections.append(protocol)
        return protocol

    def kill(self) -> None:
        for protocol in self.connections:
            channel = getattr(protocol, "_channel", protocol)
            transport = getattr(channel, "transport", None)
            if transport is not None:
                transport.abortConnection()


class OneRequestPerConnection(Protocol):
    """
    Answers the first request of a connection (keep-alive), then closes
    the connection as soon as the next request arrives, without answering:
    the keep-alive race, every time.
    """

    def connectionMade(self):
        self.answered = False
        self.factory.accepted += 1

    def dataReceived(self, data):
        if not self.answered:
            self.answered = True
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine")
        else:
            self.transport.abortConnection()


class WebSocketEcho(Protocol):
    """
    Switches protocols on the first request, then echoes bytes upper-cased.
    """

    def connectionMade(self):
        self.switched = False
        self.buffer = b""

    def dataReceived(self, data):
        if self.switched:
            self.transport.write(data.upper())
            return
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            self.factory.heads.append(head)
            self.switched = True
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n\r\n"
            )
            if rest:
                self.transport.write(rest.upper())


class Responses:
    """
    Collects the responses a client receives, parsed strictly.
    """

    def __init__(self):
        self.items: list[list] = []

    def headersComplete(self, head):
        if not head.interim:
            self.items.append([head, []])

    def bodyData(self, data):
        self.items[-1][1].append(data)

    def messageComplete(self):
        pass


class RawClient(Protocol):
    """
    Sends raw bytes and parses the responses; C{done} fires when C{count}
    responses are complete or the connection closes.
    """

    def __init__(self, methods: list[bytes], count: int | None = None, upgrade=False):
        self.responses = Responses()
        self.parser = ResponseParser(self.responses, maxBufferedBytes=1 << 30)
        for method in methods:
            self.parser.expectResponse(method, upgrade)
        self.count = len(methods) if count is None else count
        self.done: Deferred = Deferred()
        self.raw = b""
        self.closed = False
        self.received = 0

    def dataReceived(self, data):
        self.received += len(data)
        if self.parser is None:
            self.raw += data
            return
        self.parser.dataReceived(data)
        items = self.responses.items
        if self.count == len(items) and (self.parser.idle or items[-1][0].tunnel):
            self._fire()

    def connectionLost(self, reason):
        self.closed = True
        if self.parser is not None:
            try:
                self.parser.connectionLost()
            except Exception:
                pass
        self._fire()

    def _fire(self):
        if not self.done.called:
            self.done.callback(self)

    def bodies(self) -> list[bytes]:
        return [b"".join(body) for _, body in self.responses.items]


class HTTPLoopbackTests(TestCase):
    timeout = 30

    def setUp(self):
        self.ports = []
        self.clients = []

    @inlineCallbacks
    def tearDown(self):
        for client in self.clients:
            if client.transport is not None and not client.closed:
                client.transport.abortConnection()
        for factory in getattr(self, "factories", []):
            for route in factory.routes:
                route.backends.closeIdle()
        for port in self.ports:
            yield port.stopListening()
        yield deferLater(reactor, 0.01, lambda: None)

    def listen(self, factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        return port.getHost().port

    def proxy(self, servers: list[tuple[str, int]], listener=None, **options) -> HTTPProxyFactory:
        pool = Pool(
            "web",
            [Server(name, f"tcp:host=127.0.0.1:port={port}") for name, port in servers],
            SmoothWeightedRoundRobin(),
            PoolConfig(name="web", servers=(), **options),
        )
        listener = listener or HTTPListenerConfig(name="web", bind="tcp:0", pool="web", mode="http")
        factory = HTTPProxyFactory(listener, {"web": pool}, reactor)
        factory.accessLog = RecordingLog()
        self.factories = getattr(self, "factories", []) + [factory]
        self.proxyPort = self.listen(factory)
        self.pool = pool
        return factory

    @inlineCallbacks
    def send(self, data: bytes, methods: list[bytes], count=None, upgrade=False) -> RawClient:
        client = RawClient(methods, count, upgrade)
        self.clients.append(client)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxyPort)
        yield connectProtocol(endpoint, client)
        client.transport.write(data)
        yield client.done
        return client

    @inlineCallbacks
    def test_backendConnectionReused(self):
        """
        With reuse mode always, three client connections in turn, five
        requests each, use one backend connection.
        """
        site, factory = yield self.fiveRequestsEachFromThreeClients(reuseMode="always")
        self.assertEqual(site.accepted, 1)
        self.assertEqual(len(factory.accessLog.records), 15)
        self.assertTrue(all(r.status == 200 for r in factory.accessLog.records))
        self.assertEqual(self.pool.servers[0].active, 0)

    @inlineCallbacks
    def test_firstRequestsGetTheirOwnConnection(self):
        """
        With the default reuse mode (safe), each client connection's first
        request opens a backend connection; its later ones reuse one.
        """
        site, factory = yield self.fiveRequestsEachFromThreeClients()
        self.assertEqual(site.accepted, 3)
        self.assertEqual(len(factory.accessLog.records), 15)
        self.assertTrue(all(r.status == 200 for r in factory.accessLog.records))

    @inlineCallbacks
    def fiveRequestsEachFromThreeClients(self, **options):
        site = CountingSite("b1")
        factory = self.proxy([("b1", self.listen(site))], **options)
        for _ in range(3):
            request = b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n"
            client = RawClient([b"GET"], 1)
            self.clients.append(client)
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxyPort), client)
            for _ in range(5):
                done = client.done = Deferred()
                client.count = len(client.responses.items) + 1
                client.parser.expectResponse(b"GET")
                client.transport.write(request)
                yield done
            client.transport.loseConnection()
        return site, factory

    @inlineCallbacks
    def test_pipelinedResponsesInOrder(self):
        self.proxy([("b1", self.listen(CountingSite("b1")))])
        requests = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % n for n in range(10))
        client = yield self.send(requests, [b"GET"] * 10)
        self.assertEqual(
            client.bodies(), [b"b1 /%d xff=127.0.0.1" % n for n in range(10)]
        )

    @inlineCallbacks
    def test_roundRobinAndForwardedFor(self):
        self.proxy([("b1", self.listen(CountingSite("b1"))), ("b2", self.listen(CountingSite("b2")))])
        request = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
        client = yield self.send(request * 4, [b"GET"] * 4)
        self.assertEqual(
            sorted(client.bodies()),
            [b"b1 /x xff=127.0.0.1"] * 2 + [b"b2 /x xff=127.0.0.1"] * 2,
        )

    @inlineCallbacks
    def test_largeDownloadToSlowClientBounded(self):
        """
        A client that stops reading pauses the backend: the proxy's send
        buffer toward the client stays bounded, and every byte arrives.
        """
        factory = self.proxy([("b1", self.listen(CountingSite("b1")))])
        size = 16 * 1024 * 1024
        client = RawClient([b"GET"])
        self.clients.append(client)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxyPort), client)
        client.transport.pauseProducing()
        client.transport.write(b"GET /big?n=%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
        session = None
        for _ in range(1000):
            yield deferLater(reactor, 0.01, lambda: None)
            if factory.listener.sessions:
                (session,) = factory.listener.sessions
                exchange = session.exchange
                if exchange is not None and exchange.backend is not None:
                    if exchange.backend.readingPaused:
                        break
        self.assertTrue(session.exchange.backend.readingPaused)
        yield deferLater(reactor, 0.1, lambda: None)
        transport = session.transport
        buffered = transport._tempDataLen + len(transport.dataBuffer) - transport.offset
        self.assertLess(buffered, 1024 * 1024)
        client.transport.resumeProducing()
        yield client.done
        (body,) = client.bodies()
        self.assertEqual(len(body), size)
        self.assertEqual(factory.accessLog.records[-1].status, 200)

    @inlineCallbacks
    def test_largeUploads(self):
        self.proxy([("b1", self.listen(CountingSite("b1")))])
        body = bytes(range(256)) * (4 * 4096)
        digest = hashlib.sha256(body).hexdigest().encode()
        request = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
        client = yield self.send(request + body, [b"POST"])
        self.assertEqual(client.bodies(), [b"%d %s" % (len(body), digest)])
        pieces = [body[i : i + 100000] for i in range(0, len(body), 100000)]
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        request = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        client = yield self.send(request + chunked, [b"POST"])
        self.assertEqual(client.bodies(), [b"%d %s" % (len(body), digest)])

    @inlineCallbacks
    def test_keepAliveRaceRetried(self):
        """
        Against a backend that drops each reused connection as the next
        request arrives, every idempotent request still succeeds.
        """
        backendFactory = Factory.forProtocol(OneRequestPerConnection)
        backendFactory.accepted = 0
        factory = self.proxy([("b1", self.listen(backendFactory))])
        client = RawClient([b"GET"], 1)
        self.clients.append(client)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxyPort), client)
        for n in range(6):
            done = client.done = Deferred()
            client.count = n + 1
            if n:
                client.parser.expectResponse(b"GET")
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
            yield done
        self.assertEqual(client.bodies(), [b"fine"] * 6)
        self.assertEqual(factory.staleRetries, 5)
        self.assertEqual(backendFactory.accepted, 6)
        self.assertEqual([r.status for r in factory.accessLog.records], [200] * 6)

    @inlineCallbacks
    def test_serverKilledDuringLoad(self):
        """
        Killing one of two servers while clients keep sending GETs on
        keep-alive connections costs no client an error.
        """
        sites = [CountingSite("b1", delay=0.002), CountingSite("b2")]
        ports = [reactor.listenTCP(0, site, interface="127.0.0.1") for site in sites]
        self.ports.append(ports[1])
        factory = self.proxy([(name, port.getHost().port) for name, port in zip(("b1", "b2"), ports)])
        statuses = []

        @inlineCallbacks
        def load(count):
            client = RawClient([b"GET"], 1)
            self.clients.append(client)
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxyPort), client)
            for n in range(count):
                done = client.done = Deferred()
                client.count = n + 1
                if n:
                    client.parser.expectResponse(b"GET")
                client.transport.write(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
                yield done
                statuses.append(client.responses.items[-1][0].status)

        @inlineCallbacks
        def kill():
            while len(statuses) < 60:
                yield deferLater(reactor, 0.001, lambda: None)
            yield ports[0].stopListening()
            sites[0].kill()

        yield gatherResults([load(60) for _ in range(4)] + [kill()])
        self.assertEqual(statuses, [200] * 240)
        self.assertEqual([r.status for r in factory.accessLog.records], [200] * 240)
        servers = [r.server for r in factory.accessLog.records]
        self.assertIn("b1", servers[:60])
        self.assertEqual(set(servers[-60:]), {"b2"})
        self.assertGreater(factory.redispatched + factory.staleRetries, 0)

    @inlineCallbacks
    def test_websocketTunnel(self):
        backendFactory = Factory.forProtocol(WebSocketEcho)
        backendFactory.heads = []
        factory = self.proxy([("b1", self.listen(backendFactory))])
        client = RawClient([b"GET"], 1, upgrade=True)
        self.clients.append(client)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxyPort), client)
        client.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        yield client.done
        (head, _), = client.responses.items
        self.assertEqual(head.status, 101)
        client.parser = None
        client.transport.write(b"hello tunnel")
        for _ in range(100):
            if client.raw == b"HELLO TUNNEL":
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(client.raw, b"HELLO TUNNEL")
        self.assertIn(b"Upgrade: websocket", backendFactory.heads[0])
        client.transport.loseConnection()
        for _ in range(100):
            if factory.accessLog.records:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(factory.accessLog.records[-1].status, 101)

    @inlineCallbacks
    def test_retryAfterConnectFailure(self):
        dead = freePort()
        factory = self.proxy([("dead", dead), ("b1", self.listen(CountingSite("b1")))])
        client = yield self.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [b"GET"])
        self.assertEqual(client.bodies(), [b"b1 / xff=127.0.0.1"])
        self.assertEqual(factory.accessLog.records[-1].server, "b1")

    @inlineCallbacks
    def test_noServer503(self):
        factory = self.proxy([("b1", self.listen(CountingSite("b1")))])
        self.pool.servers[0].setState(ServerState.DOWN)
        client = yield self.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [b"GET"])
        ((head, _),) = client.responses.items
        self.assertEqual(head.status, 503)
        self.assertTrue(client.closed)
        self.assertEqual(factory.accessLog.records[-1].termination, "SC")
