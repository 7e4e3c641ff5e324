"""
Tests for lbproxy.http.front, the HTTP reverse proxy front, in memory:
request and response forwarding, backend connection reuse, pipelining,
bodies and framing, backpressure, header rewriting, upgrades, every error
status and timeout, the keep-alive race, retries, persistence, routing and
the access log.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lbproxy.config import (
    CookieConfig,
    PoolConfig,
)
from lbproxy.http.config import HTTPLimits, HTTPListenerConfig, RouteConfig
from lbproxy.http.backend import BackendHTTPConnection
from lbproxy.http.interfaces import IBackendUser
from lbproxy.service import wrapFront
from lbproxy.http.factory import HTTPProxyFactory
from lbproxy.http.front import STOPPING_IDLE, HTTPProxyProtocol
from lbproxy.http.interfaces import IHTTPMessageReceiver
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.selectors.leastconn import WeightedLeastConnections
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin

from memoryconnections import refuseAttempt
from test_relay import FakeTCPTransport

DONE = Failure(ConnectionDone())
RESET = Failure(ConnectionLost("Connection reset by peer"))
PEER = IPv4Address("TCP", "192.0.2.7", 40000)
HOST = IPv4Address("TCP", "198.51.100.1", 8080)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def makeListener(**kwargs) -> HTTPListenerConfig:
    kwargs.setdefault("name", "web")
    kwargs.setdefault("bind", "tcp:8080")
    kwargs.setdefault("pool", "web")
    kwargs.setdefault("mode", "http")
    return HTTPListenerConfig(**kwargs)


def makePool(name="web", count=2, basePort=8001, selector=None, servers=None, **options) -> Pool:
    if servers is None:
        servers = [
            Server(f"s{i}", f"tcp:host=127.0.0.1:port={basePort + i}") for i in range(count)
        ]
    options.setdefault("retries", 2)
    config = PoolConfig(name=name, servers=(), **options)
    return Pool(name, servers, selector or SmoothWeightedRoundRobin(), config)


class RecordingLog:
    """
    Stands in for the access log: keeps the records.
    """

    def __init__(self):
        self.records = []
        self.closed = False

    def log(self, record):
        self.records.append(record)

    def close(self):
        self.closed = True


class Backend:
    """
    One backend connection the proxy made, driven by the test.
    """

    def __init__(self, wrapper, transport, address):
        self.wrapper = wrapper
        self.transport = transport
        self.address = address

    @property
    def protocol(self) -> BackendHTTPConnection:
        return self.wrapper._wrappedProtocol

    def received(self) -> bytes:
        return self.transport.value()

    def clear(self) -> None:
        self.transport.clear()

    def send(self, data: bytes) -> None:
        self.wrapper.dataReceived(data)

    def close(self, reason=DONE) -> None:
        self.wrapper.connectionLost(reason)

    def finClose(self) -> None:
        self.wrapper.readConnectionLost()


class Client:
    """
    One client connection to the proxy, driven by the test.
    """

    def __init__(self, protocol: HTTPProxyProtocol, transport: FakeTCPTransport):
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        return self.transport.value()

    def clear(self) -> None:
        self.transport.clear()

    def close(self, reason=DONE) -> None:
        self.protocol.connectionLost(reason)

    @property
    def closing(self) -> bool:
        return self.transport.disconnecting


class ProxyTestCase(SynchronousTestCase):
    """
    A proxy on a L{MemoryReactorClock}: clients are fed by hand, backend
    connection attempts show up in C{reactor.tcpClients} and are answered
    with L{connectBackend} or L{refuseBackend}.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_800_000_000)
        self.backends: list[Backend] = []
        self.answered = 0

    def makeFactory(self, listener=None, pools=None, **poolOptions) -> HTTPProxyFactory:
        listener = listener or makeListener()
        if pools is None:
            pools = {"web": makePool(**poolOptions)}
        self.pools = pools
        self.pool = pools[listener.pool]
        self.factory = HTTPProxyFactory(listener, pools, self.reactor)
        self.log = self.factory.accessLog = RecordingLog()
        return self.factory

    def connectClient(self, peer=PEER) -> Client:
        transport = FakeTCPTransport()
        transport.peerAddr = peer
        transport.hostAddr = HOST
        protocol = self.factory.buildProtocol(peer)
        protocol.makeConnection(transport)
        return Client(protocol, transport)

    def pendingAttempts(self) -> int:
        return len(self.reactor.tcpClients) - self.answered

    def attemptPort(self, index=None) -> int:
        index = self.answered if index is None else index
        return self.reactor.tcpClients[index][1]

    def connectBackend(self) -> Backend:
        """
        Let the oldest unanswered connection attempt succeed.
        """
        host, port, factory, timeout, bind = self.reactor.tcpClients[self.answered]
        self.answered += 1
        address = IPv4Address("TCP", host, port)
        transport = FakeTCPTransport()
        transport.peerAddr = address
        wrapper = factory.buildProtocol(address)
        wrapper.makeConnection(transport)
        backend = Backend(wrapper, transport, address)
        self.backends.append(backend)
        return backend

    def refuseBackend(self) -> None:
        refuseAttempt(self.reactor, self.answered)
        self.answered += 1

    def exchange(self, client: Client, request: bytes, response: bytes = OK) -> Backend:
        """
        Send C{request}, connect a backend if the proxy asks for one, and
        answer with C{response}.
        """
        client.send(request)
        if self.pendingAttempts():
            backend = self.connectBackend()
        else:
            backend = self.backends[-1]
        backend.send(response)
        return backend

    def assertLastRecord(self, **fields):
        record = self.log.records[-1]
        for name, value in fields.items():
            self.assertEqual(getattr(record, name), value, name)
        return record


GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"


def requestHead(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """
    The request line and fields of the first head in C{data}.
    """
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    fields = [tuple(line.split(b": ", 1)) for line in lines[1:]]
    return lines[0], fields


class InterfaceTests(ProxyTestCase):
    def test_interfaces(self):
        self.makeFactory()
        client = self.connectClient()
        for interface in (IHTTPMessageReceiver, IPushProducer, IHalfCloseableProtocol, IBackendUser):
            verifyObject(interface, client.protocol)
        client.send(GET)
        backend = self.connectBackend()
        for interface in (IHTTPMessageReceiver, IPushProducer, IHalfCloseableProtocol):
            verifyObject(interface, backend.protocol)

    def test_registersAsProducers(self):
        """
        Each side's protocol is the streaming producer of its own
        transport, and Nagle is off on both legs.
        """
        self.makeFactory()
        client = self.connectClient()
        self.assertIs(client.transport.producer, client.protocol)
        self.assertTrue(client.transport.streaming)
        client.send(GET)
        backend = self.connectBackend()
        self.assertIs(backend.transport.producer, backend.protocol)
        self.assertTrue(client.transport.noDelay and backend.transport.noDelay)


class ForwardingTests(ProxyTestCase):
    def test_simpleGet(self):
        """
        The request is re-serialised for the backend with the forwarding
        fields; the response goes back with the persistence-free head.
        """
        self.makeFactory()
        client = self.connectClient()
        client.send(GET)
        self.assertEqual(self.attemptPort(), 8001)
        backend = self.connectBackend()
        self.assertEqual(
            backend.received(),
            b"GET /x HTTP/1.1\r\nHost: example.com\r\n"
            b"X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n"
            b"X-Forwarded-Port: 8080\r\nX-Forwarded-Host: example.com\r\n\r\n",
        )
        self.assertEqual(self.pool.servers[0].active, 1)
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: b\r\n\r\nhello")
        self.assertEqual(
            client.received(),
            b"HTTP/1.1 200 OK\r\nServer: b\r\nContent-Length: 5\r\n\r\nhello",
        )
        self.assertEqual(self.pool.servers[0].active, 0)
        self.assertFalse(client.closing)
        self.assertLastRecord(
            status=200,
            server="s0",
            pool="web",
            termination="--",
            xff=b"192.0.2.7",
            method=b"GET",
            target=b"/x",
            version=(1, 1),
            bytesOut=len(client.received()),
            cookie="--",
            client=("192.0.2.7", 40000),
            listener="web",
        )

    def test_logRequestsErrors(self):
        """
        With log_requests = "errors", a normal exchange gets no access log
        line (however the server answered below 500); one ending in a 502
        does.
        """
        self.makeFactory(listener=makeListener(logRequests="errors"), retries=0)
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(client.received().startswith(b"HTTP/1.1 404"))
        self.assertEqual(self.log.records, [])
        backend.close()
        client.send(GET)
        self.refuseBackend()
        self.assertIn(b"HTTP/1.1 502", client.received())
        (record,) = self.log.records
        self.assertEqual(record.status, 502)

    def test_absoluteFormSentAsOriginForm(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(b"GET http://example.com/a?b=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        backend = self.connectBackend()
        line, fields = requestHead(backend.received())
        self.assertEqual(line, b"GET /a?b=1 HTTP/1.1")

    def test_http10WithoutHostGetsOne(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        backend = self.connectBackend()
        line, fields = requestHead(backend.received())
        self.assertEqual(line, b"GET / HTTP/1.1")
        self.assertIn((b"Host", b"198.51.100.1:8080"), fields)
        self.assertNotIn(b"X-Forwarded-Host", dict(fields))

    def test_hopByHopRemoved(self):
        """
        Connection, the fields it names, Keep-Alive, TE, Trailer,
        Proxy-Connection and Upgrade are not forwarded, either way.
        """
        self.makeFactory()
        client = self.connectClient()
        client.send(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\n"
            b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X\r\n"
            b"Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n"
        )
        backend = self.connectBackend()
        line, fields = requestHead(backend.received())
        names = [name.lower() for name, _ in fields]
        for gone in (b"connection", b"x-secret", b"keep-alive", b"te", b"trailer", b"proxy-connection"):
            self.assertNotIn(gone, names)
        self.assertIn((b"X-Kept", b"yes"), fields)
        backend.send(
            b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: 1\r\n"
            b"Keep-Alive: timeout=9\r\nX-Public: 1\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(
            client.received(),
            b"HTTP/1.1 200 OK\r\nX-Public: 1\r\nContent-Length: 0\r\n\r\n",
        )

    def test_untrustedForwardedForReplaced(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.9.9.9\r\n"
            b"X-Forwarded-Proto: https\r\nForwarded: for=10.9.9.9\r\n\r\n"
        )
        backend = self.connectBackend()
        fields = requestHead(backend.received())[1]
        self.assertEqual(
            [value for name, value in fields if name.lower() == b"x-forwarded-for"],
            [b"192.0.2.7"],
        )
        self.assertEqual(dict(fields)[b"X-Forwarded-Proto"], b"http")
        self.assertNotIn(b"Forwarded", dict(fields))
        backend.send(OK)
        self.assertLastRecord(xff=b"192.0.2.7")

    def test_trustedForwardedForAppended(self):
        import ipaddress

        self.makeFactory(
            makeListener(trustedProxies=(ipaddress.ip_network("192.0.2.0/24"),), forwarded=True)
        )
        client = self.connectClient()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.5\r\n\r\n")
        backend = self.connectBackend()
        fields = dict(requestHead(backend.received())[1])
        self.assertEqual(fields[b"X-Forwarded-For"], b"203.0.113.5, 192.0.2.7")
        self.assertEqual(fields[b"Forwarded"], b'for="192.0.2.7:40000";proto=http;host=a')
        backend.send(OK)
        self.assertLastRecord(xff=b"203.0.113.5, 192.0.2.7")

    def test_h2cUpgradeStripped(self):
        """
        An h2c upgrade is not forwarded; the backend's ordinary response
        ends it and the connection goes on with HTTP/1.1.
        """
        self.makeFactory(count=1)
        client = self.connectClient()
        client.send(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        backend = self.connectBackend()
        names = [n.lower() for n, _ in requestHead(backend.received())[1]]
        for gone in (b"upgrade", b"connection", b"http2-settings"):
            self.assertNotIn(gone, names)
        backend.send(OK)
        self.assertTrue(client.received().endswith(b"ok"))
        backend.clear()
        client.send(GET)
        self.assertTrue(backend.received().startswith(b"GET /x HTTP/1.1"))

    def test_reuseMaxIdleZeroAsksBackendToClose(self):
        self.makeFactory(reuseMaxIdle=0)
        client = self.connectClient()
        backend = self.exchange(client, GET)
        fields = requestHead(backend.received())[1]
        self.assertIn((b"Connection", b"close"), fields)
        self.assertTrue(backend.transport.disconnecting)


class ReuseTests(ProxyTestCase):
    def test_keepAliveReusesBackendConnection(self):
        """
        Consecutive requests, from one client connection or several, use
        one backend connection when it stays reusable (reuse mode
        C{always}).
        """
        self.makeFactory(count=1, reuseMode="always")
        client = self.connectClient()
        first = self.exchange(client, GET)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        first.clear()
        client.send(GET)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(first.received().startswith(b"GET /x"))
        first.send(OK)
        other = self.connectClient(IPv4Address("TCP", "192.0.2.8", 40001))
        first.clear()
        other.send(GET)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        first.send(OK)
        self.assertTrue(other.received().endswith(b"ok"))
        self.assertEqual(first.protocol.requests, 3)
        self.assertEqual([r.tc for r in self.log.records], [0, 0, 0])

    def test_closeResponseNotReused(self):
        self.makeFactory(count=1)
        client = self.connectClient()
        backend = self.exchange(
            client, GET, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertTrue(backend.transport.disconnecting)
        self.assertFalse(client.closing)
        client.send(GET)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_extraBytesNotReused(self):
        """
        A backend that sent more than the response cannot be trusted with
        another request.
        """
        self.makeFactory(count=1)
        client = self.connectClient()
        backend = self.exchange(client, GET, OK + b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(backend.transport.disconnecting or backend.protocol.closing)
        self.assertTrue(client.received().endswith(b"ok"))

    def test_idleConnectionsLimitedAndExpire(self):
        """
        At most reuseMaxIdle connections per server stay idle, and each is
        closed after reuseIdleTimeout.
        """
        self.makeFactory(count=1, reuseMaxIdle=1, reuseIdleTimeout=5.0)
        clients = [self.connectClient(IPv4Address("TCP", "192.0.2.7", 40000 + i)) for i in range(2)]
        for client in clients:
            client.send(GET)
        first, second = self.connectBackend(), self.connectBackend()
        first.send(OK)
        self.reactor.advance(1)
        second.send(OK)
        self.assertTrue(first.transport.disconnecting)
        self.assertFalse(second.transport.disconnecting)
        self.reactor.advance(4.5)
        self.assertFalse(second.transport.disconnecting)
        self.reactor.advance(0.5)
        self.assertTrue(second.transport.disconnecting)

    def test_backendClosingIdleConnectionForgotten(self):
        self.makeFactory(count=1)
        client = self.connectClient()
        backend = self.exchange(client, GET)
        backend.close()
        route = self.factory.routeFor(self.pool)
        self.assertEqual(route.backends.idleCount(), 0)
        client.send(GET)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_activeCountsRequestsInFlight(self):
        """
        A server's active count is the number of requests in flight on it,
        whether on new or reused connections.
        """
        self.makeFactory(count=1, selector=WeightedLeastConnections())
        server = self.pool.servers[0]
        client = self.connectClient()
        backend = self.exchange(client, GET)
        self.assertEqual(server.active, 0)
        client.send(GET)
        self.assertEqual(server.active, 1)
        backend.send(OK)
        self.assertEqual(server.active, 0)


class PipelineTests(ProxyTestCase):
    def test_pipelinedInOrder(self):
        """
        Pipelined requests wait in the parser (the client transport paused)
        until the previous response is sent; responses keep request order.
        """
        self.makeFactory(count=1)
        client = self.connectClient()
        client.send(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual(client.transport.producerState, "paused")
        backend = self.connectBackend()
        self.assertEqual(backend.received().count(b"GET "), 1)
        for n in (1, 2, 3):
            self.assertIn(b"GET /%d " % n, backend.received())
            backend.clear()
            body = b"r%d" % n
            backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + body)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        bodies = [part[-2:] for part in client.received().split(b"HTTP/1.1 200 OK")[1:]]
        self.assertEqual(bodies, [b"r1", b"r2", b"r3"])
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual([r.target for r in self.log.records], [b"/1", b"/2", b"/3"])

    def test_connectionCloseEndsPipeline(self):
        self.makeFactory(count=1)
        client = self.connectClient()
        client.send(
            b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        backend = self.connectBackend()
        backend.send(OK)
        self.assertIn(b"Connection: close", client.received())
        self.assertTrue(client.closing)
        self.assertEqual(len(self.log.records), 1)

    def test_halfClosedClientGetsAllResponses(self):
        """
        A client that pipelines and then shuts its sending side down still
        gets every response, then the connection closes.
        """
        self.makeFactory(count=1)
        client = self.connectClient()
        client.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        client.protocol.readConnectionLost()
        backend = self.connectBackend()
        backend.send(OK)
        self.assertFalse(client.closing)
        backend.send(OK)
        self.assertEqual(client.received().count(b"200 OK"), 2)
        self.assertTrue(client.closing)


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


class BodyTests(ProxyTestCase):
    def feedOddly(self, send, data: bytes) -> None:
        sizes = [1, 3, 7, 2, 11, 5]
        position = 0
        index = 0
        while position < len(data):
            size = sizes[index % len(sizes)]
            send(data[position : position + size])
            position += size
            index += 1

    def test_contentLengthRequestBody(self):
        self.makeFactory()
        client = self.connectClient()
        body = b"0123456789" * 7
        request = b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 70\r\n\r\n" + body
        self.feedOddly(client.send, request)
        backend = self.connectBackend()
        data = backend.received()
        self.assertIn(b"Content-Length: 70\r\n", data)
        self.assertTrue(data.endswith(b"\r\n\r\n" + body))
        backend.send(OK)
        self.assertLastRecord(bytesIn=70, status=200)

    def test_chunkedRequestBodyRechunked(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        backend = self.connectBackend()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", backend.received())
        backend.clear()
        self.feedOddly(client.send, chunked(b"hello ", b"world") )
        data = backend.received()
        self.assertTrue(data.endswith(b"\r\n0\r\n\r\n"))
        self.assertEqual(_dechunk(data), b"hello world")
        backend.send(OK)
        self.assertLastRecord(bytesIn=11)

    def test_chunkedResponseRechunked(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"abc", b"defgh")
        self.feedOddly(backend.send, response)
        data = client.received()
        head, body = data.split(b"\r\n\r\n", 1)
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertEqual(_dechunk(body), b"abcdefgh")
        self.assertTrue(body.endswith(b"0\r\n\r\n"))
        self.assertFalse(client.closing)

    def test_contentLengthResponseSplit(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        body = bytes(range(256)) * 3
        self.feedOddly(
            backend.send, b"HTTP/1.1 200 OK\r\nContent-Length: 768\r\n\r\n" + body
        )
        self.assertTrue(client.received().endswith(b"\r\n\r\n" + body))
        self.assertEqual(self.factory.routeFor(self.pool).backends.idleCount(), 1)

    def test_untilCloseResponseChunkedFor11(self):
        """
        A response delimited by the server's close reaches an HTTP/1.1
        client chunked, so the client connection can persist.
        """
        self.makeFactory()
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 200 OK\r\n\r\nsome")
        backend.send(b" data")
        backend.finClose()
        head, body = client.received().split(b"\r\n\r\n", 1)
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertEqual(_dechunk(body), b"some data")
        self.assertFalse(client.closing)
        self.assertLastRecord(termination="--", status=200)

    def test_unknownLengthCloseDelimitedFor10(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"abc"))
        head, body = client.received().split(b"\r\n\r\n", 1)
        self.assertNotIn(b"Transfer-Encoding", head)
        self.assertIn(b"Connection: close", head)
        self.assertEqual(body, b"abc")
        self.assertTrue(client.closing)

    def test_http10KeepAlive(self):
        self.makeFactory()
        client = self.connectClient()
        self.exchange(client, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        self.assertIn(b"Connection: keep-alive", client.received())
        self.assertFalse(client.closing)
        client.clear()
        self.exchange(client, b"GET / HTTP/1.0\r\n\r\n")
        self.assertIn(b"Connection: close", client.received())
        self.assertTrue(client.closing)

    def test_headResponse(self):
        self.makeFactory()
        client = self.connectClient()
        backend = self.exchange(
            client,
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        )
        self.assertEqual(client.received(), b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        self.assertEqual(self.factory.routeFor(self.pool).backends.idleCount(), 1)
        self.assertEqual(backend.protocol.requests, 1)

    def test_noBodyStatuses(self):
        self.makeFactory(count=1)
        client = self.connectClient()
        self.exchange(client, GET, b"HTTP/1.1 204 No Content\r\n\r\n")
        self.exchange(client, GET, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(
            client.received(),
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        )
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_continueRelayed(self):
        """
        Expect: 100-continue is forwarded, the backend's 100 goes back to
        the client, then the body flows.
        """
        self.makeFactory()
        client = self.connectClient()
        client.send(
            b"PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        backend = self.connectBackend()
        self.assertIn(b"Expect: 100-continue\r\n", backend.received())
        backend.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(client.received(), b"HTTP/1.1 100 Continue\r\n\r\n")
        client.send(b"data")
        self.assertTrue(backend.received().endswith(b"\r\n\r\ndata"))
        backend.send(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(client.received().endswith(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
        self.assertLastRecord(status=201, bytesIn=4)

    def test_earlyResponseClosesBoth(self):
        """
        A response that ends before the request body does: the client
        connection is told to close and the backend connection is not
        reused.
        """
        self.makeFactory()
        client = self.connectClient()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertIn(b"Connection: close", client.received())
        self.assertTrue(client.closing)
        self.assertTrue(backend.protocol.closing)


def _dechunk(body: bytes) -> bytes:
    out = []
    while True:
        line, body = body.split(b"\r\n", 1)
        size = int(line, 16)
        if not size:
            return b"".join(out)
        out.append(body[:size])
        body = body[size + 2 :]


class BackpressureTests(ProxyTestCase):
    def test_slowClientPausesBackend(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n")
        backend.send(b"x" * 70000)
        self.assertEqual(backend.transport.producerState, "paused")
        client.transport.drain()
        self.assertEqual(backend.transport.producerState, "producing")

    def test_slowBackendPausesClient(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n")
        backend = self.connectBackend()
        self.assertEqual(client.transport.producerState, "producing")
        client.send(b"y" * 70000)
        self.assertEqual(client.transport.producerState, "paused")
        backend.transport.drain()
        self.assertEqual(client.transport.producerState, "producing")

    def test_bodyWaitsForBackend(self):
        """
        Body bytes that arrive with the head wait in the parser, with the
        client paused, until the backend connection is up.
        """
        self.makeFactory()
        client = self.connectClient()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab")
        self.assertEqual(client.transport.producerState, "paused")
        backend = self.connectBackend()
        self.assertTrue(backend.received().endswith(b"\r\n\r\nab"))
        self.assertEqual(client.transport.producerState, "producing")
        client.send(b"c")
        self.assertTrue(backend.received().endswith(b"abc"))

    def test_newBackendPausedWhileClientBlocked(self):
        self.makeFactory(count=1)
        client = self.connectClient()
        client.protocol.pauseProducing()
        client.send(GET)
        backend = self.connectBackend()
        self.assertEqual(backend.transport.producerState, "paused")
        client.protocol.resumeProducing()
        self.assertEqual(backend.transport.producerState, "producing")


class UpgradeTests(ProxyTestCase):
    UPGRADE = (
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    SWITCH = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )

    def test_websocketTunnel(self):
        self.makeFactory(listener=makeListener(tunnelTimeout=30.0))
        client = self.connectClient()
        client.send(self.UPGRADE + b"early")
        backend = self.connectBackend()
        fields = dict(requestHead(backend.received())[1])
        self.assertEqual(fields[b"Upgrade"], b"websocket")
        self.assertEqual(fields[b"Connection"], b"Upgrade")
        backend.clear()
        backend.send(self.SWITCH + b"hello")
        self.assertTrue(client.received().startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"Upgrade: websocket\r\n", client.received())
        self.assertTrue(client.received().endswith(b"\r\n\r\nhello"))
        self.assertEqual(backend.received(), b"early")
        client.send(b"ping")
        self.assertEqual(backend.received(), b"earlyping")
        backend.send(b"pong")
        self.assertTrue(client.received().endswith(b"hellopong"))
        self.assertIs(client.transport.producer, backend.transport)
        self.assertEqual(self.pool.servers[0].active, 1)
        self.assertEqual(self.log.records, [])
        client.close()
        backend.close()
        self.assertEqual(self.pool.servers[0].active, 0)
        self.assertLastRecord(status=101, termination="--", bytesIn=9)

    def test_tunnelIdleTimeout(self):
        self.makeFactory(listener=makeListener(tunnelTimeout=30.0))
        client = self.connectClient()
        client.send(self.UPGRADE)
        backend = self.connectBackend()
        backend.send(self.SWITCH)
        self.reactor.advance(31)
        self.assertTrue(client.transport.disconnected)
        client.close(RESET)
        backend.close(RESET)
        self.assertLastRecord(termination="cT", status=101)

    def test_upgradeRefused(self):
        """
        A non-101 answer to an upgrade request is a normal response, and
        the connection goes on with HTTP.
        """
        self.makeFactory()
        client = self.connectClient()
        backend = self.exchange(client, self.UPGRADE, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(client.received().startswith(b"HTTP/1.1 400 Bad Request"))
        self.assertFalse(client.closing)
        client.clear()
        backend.clear()
        self.exchange(client, GET)
        self.assertTrue(client.received().endswith(b"ok"))

    def test_unrequested101Refused(self):
        self.makeFactory()
        client = self.connectClient()
        self.exchange(client, GET, self.SWITCH)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 Bad Gateway"))
        self.assertLastRecord(status=502, termination="PH")


class ClientErrorTests(ProxyTestCase):
    def assertRefused(self, request: bytes, status: int, termination: str = "PR", listener=None):
        self.makeFactory(listener)
        client = self.connectClient()
        client.send(request)
        self.assertTrue(
            client.received().startswith(b"HTTP/1.1 %d " % status), client.received()
        )
        self.assertIn(b"Connection: close", client.received())
        self.assertTrue(client.closing)
        self.assertEqual(len(self.reactor.tcpClients), 0)
        self.assertLastRecord(status=status, termination=termination)
        client.close()
        self.assertEqual(len(self.log.records), 1)

    def test_badRequest(self):
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400)

    def test_smuggling(self):
        self.assertRefused(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        )

    def test_missingHost(self):
        self.assertRefused(b"GET / HTTP/1.1\r\n\r\n", 400)

    def test_uriTooLong(self):
        self.assertRefused(
            b"GET /" + b"a" * 400 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
            414,
            listener=makeListener(limits=HTTPLimits(requestLine=300)),
        )

    def test_headerTooLarge(self):
        self.assertRefused(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 2000 + b"\r\n\r\n",
            431,
            listener=makeListener(limits=HTTPLimits(headerSize=1024)),
        )

    def test_tooManyHeaders(self):
        self.assertRefused(
            b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 20 + b"\r\n",
            431,
            listener=makeListener(limits=HTTPLimits(headerCount=10)),
        )

    def test_bodyTooLarge(self):
        self.assertRefused(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n",
            413,
            listener=makeListener(limits=HTTPLimits(bodySize=1000)),
        )

    def test_unknownMethod(self):
        self.assertRefused(b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 501)

    def test_connectRefused(self):
        self.assertRefused(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501)

    def test_chunkedBodyTooLargeMidStream(self):
        """
        A chunked body crossing the limit after it was partly forwarded:
        413 to the client, the backend connection dropped.
        """
        self.makeFactory(makeListener(limits=HTTPLimits(bodySize=10)))
        client = self.connectClient()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n")
        backend = self.connectBackend()
        client.send(b"8\r\n")
        self.assertTrue(client.received().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(backend.transport.disconnected)
        self.assertLastRecord(status=413, termination="PD")

    def test_badChunkMidStream(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        backend = self.connectBackend()
        client.send(b"zz\r\n")
        self.assertTrue(client.received().startswith(b"HTTP/1.1 400 "))
        self.assertTrue(backend.transport.disconnected)
        self.assertLastRecord(status=400, termination="PD")

    def test_headErrorHasNoBody(self):
        self.makeFactory()
        self.pool.servers[0].setState(ServerState.DOWN)
        self.pool.servers[1].setState(ServerState.DOWN)
        client = self.connectClient()
        client.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(client.received().endswith(b"\r\n\r\n"))
        self.assertIn(b"Content-Length: 24\r\n", client.received())


class TimeoutTests(ProxyTestCase):
    def test_slowlorisGets408(self):
        self.makeFactory(makeListener(requestTimeout=10.0))
        client = self.connectClient()
        for byte in b"GET / HTTP/1.1\r\nHo"[:9]:
            client.send(bytes([byte]))
            self.reactor.advance(1)
        self.assertFalse(client.closing)
        self.reactor.advance(1)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertTrue(client.closing)
        self.assertLastRecord(status=408, termination="cR", method=b"")
        client.close()
        self.assertEqual(len(self.log.records), 1)

    def test_connectionsShareOneReactorTimer(self):
        """
        The deadlines of a listener's connections wait on its timer wheel:
        however many connections and requests, one reactor timer, gone
        once the last connection is.
        """
        self.makeFactory(makeListener(requestTimeout=5.0, keepaliveTimeout=20.0))
        before = set(self.reactor.getDelayedCalls())
        clients = [self.connectClient() for _ in range(5)]
        for client in clients[:3]:
            self.exchange(client, GET)
        # (Besides the idle server connections' expiry.)
        timers = [call.func for call in self.reactor.getDelayedCalls() if call not in before]
        self.assertEqual([func for func in timers if func.__name__ != "_expire"], [self.factory.timers._tick])
        self.assertEqual(len(self.factory.timers), 5)
        for client in clients:
            client.close()
        self.assertEqual(len(self.factory.timers), 0)
        self.assertNotIn(self.factory.timers._tick, [call.func for call in self.reactor.getDelayedCalls()])

    def test_silentConnectionGets408(self):
        self.makeFactory(makeListener(requestTimeout=5.0))
        client = self.connectClient()
        self.reactor.advance(5)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 408 "))

    def test_keepAliveIdleClosesQuietly(self):
        self.makeFactory(makeListener(requestTimeout=5.0, keepaliveTimeout=20.0))
        client = self.connectClient()
        self.exchange(client, GET)
        client.clear()
        self.reactor.advance(19)
        self.assertFalse(client.closing)
        self.reactor.advance(1)
        self.assertTrue(client.closing)
        self.assertEqual(client.received(), b"")
        client.close()
        self.assertEqual(len(self.log.records), 1)

    def test_requestTimeoutAfterFirstByteOfNextRequest(self):
        self.makeFactory(makeListener(requestTimeout=5.0, keepaliveTimeout=60.0))
        client = self.connectClient()
        self.exchange(client, GET)
        client.clear()
        self.reactor.advance(30)
        client.send(b"GET / HT")
        self.reactor.advance(5)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 408 "))

    def test_clientIdleMidBody(self):
        self.makeFactory(makeListener(idleTimeout=15.0))
        client = self.connectClient()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        backend = self.connectBackend()
        self.reactor.advance(10)
        client.send(b"d")
        self.reactor.advance(14)
        self.assertFalse(client.closing)
        self.reactor.advance(1)
        self.assertTrue(client.closing)
        self.assertEqual(client.received(), b"")
        self.assertTrue(backend.transport.disconnected)
        self.assertLastRecord(termination="cD", status=-1, bytesIn=4)

    def test_responseTimeout504(self):
        self.makeFactory(responseTimeout=7.0)
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        self.reactor.advance(6.9)
        self.assertEqual(client.received(), b"")
        self.reactor.advance(0.1)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"))
        self.assertTrue(backend.transport.disconnected)
        self.assertLastRecord(status=504, termination="sH")
        self.assertEqual(self.pool.servers[0].active, 0)

    def test_serverSilentMidBody(self):
        self.makeFactory(serverTimeout=20.0)
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.reactor.advance(19)
        backend.send(b"d")
        self.reactor.advance(19)
        self.assertFalse(client.closing)
        self.reactor.advance(1)
        self.assertTrue(client.closing)
        self.assertTrue(client.received().endswith(b"abcd"))
        self.assertNotIn(b"504", client.received())
        self.assertTrue(backend.transport.disconnected)
        self.assertLastRecord(termination="sD", status=200)

    def test_slowReaderIsNotAServerTimeout(self):
        """
        While the client does not read, the backend is paused and its
        silence is the client's doing: the client's idle timeout applies.
        """
        self.makeFactory(makeListener(idleTimeout=100.0), serverTimeout=20.0)
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70000)
        self.assertEqual(backend.transport.producerState, "paused")
        self.reactor.advance(50)
        self.assertFalse(client.closing)
        self.reactor.advance(50)
        self.assertTrue(client.closing)
        self.assertLastRecord(termination="cD")

    def test_connectTimeout(self):
        self.makeFactory(count=1, retries=0, connectTimeout=3.0)
        client = self.connectClient()
        client.send(GET)
        self.reactor.advance(3)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertLastRecord(status=502, termination="sC")


class ServerErrorTests(ProxyTestCase):
    def test_noServer503(self):
        self.makeFactory()
        for server in self.pool.servers:
            server.setState(ServerState.DOWN)
        client = self.connectClient()
        client.send(GET)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertTrue(client.closing)
        self.assertLastRecord(status=503, termination="SC", server="<NOSRV>", pool="web")

    def test_connectFailed502AfterRetries(self):
        self.makeFactory(retries=2)
        client = self.connectClient()
        client.send(GET)
        for _ in range(3):
            self.refuseBackend()
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertLastRecord(status=502, termination="SC")

    def test_redispatchAfterConnectFailure(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(GET)
        self.assertEqual(self.attemptPort(), 8001)
        self.refuseBackend()
        self.assertEqual(self.attemptPort(), 8002)
        backend = self.connectBackend()
        backend.send(OK)
        self.assertTrue(client.received().endswith(b"ok"))
        self.assertLastRecord(server="s1", status=200)
        self.assertEqual(self.pool.servers[0].connectFailures, 1)

    def test_closedBeforeResponse502(self):
        self.makeFactory(retries=0)
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        backend.close()
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertLastRecord(status=502, termination="SH")
        self.assertEqual(self.pool.servers[0].active, 0)

    def test_garbledResponse502(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertTrue(backend.transport.disconnected)
        self.assertLastRecord(status=502, termination="PH")

    def test_halfResponseClosesClient(self):
        """
        A response cut short is never completed toward the client: no last
        chunk, the connection closed.
        """
        self.makeFactory()
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        backend.close(RESET)
        self.assertTrue(client.closing)
        self.assertFalse(client.received().endswith(b"0\r\n\r\n"))
        self.assertLastRecord(status=200, termination="SD")

    def test_halfResponseToHttp10Aborted(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        backend.close(RESET)
        self.assertTrue(client.transport.disconnected)

    def test_clientLeavesDuringResponse(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        client.close(RESET)
        self.assertTrue(backend.transport.disconnected)
        self.assertLastRecord(termination="CD", status=200)
        self.assertEqual(self.pool.servers[0].active, 0)

    def test_clientLeavesWhileConnecting(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(GET)
        client.close(RESET)
        self.assertLastRecord(termination="CC", status=-1)
        self.assertEqual(self.pool.servers[0].active, 0)

    def test_clientLeavesWaitingForResponse(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        client.close(RESET)
        self.assertTrue(backend.transport.disconnected)
        self.assertLastRecord(termination="CH")

    def test_clientLeavesMidHead(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(b"GET / HTTP/1.1\r\nHo")
        client.close()
        self.assertLastRecord(termination="CR", status=-1, method=b"")


class KeepAliveRaceTests(ProxyTestCase):
    def reusedBackend(self, client):
        backend = self.exchange(client, GET)
        backend.clear()
        return backend

    def test_staleConnectionRetried(self):
        """
        A reused connection closed by the backend before any byte of the
        response: the request goes out again on a fresh connection, and
        the client never sees an error.
        """
        self.makeFactory(count=1)
        client = self.connectClient()
        stale = self.reusedBackend(client)
        client.clear()
        client.send(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIn(b"GET /again", stale.received())
        stale.close(RESET)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        fresh = self.connectBackend()
        self.assertTrue(fresh.received().startswith(b"GET /again HTTP/1.1\r\n"))
        fresh.send(OK)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(self.factory.staleRetries, 1)
        self.assertLastRecord(status=200, termination="--")
        self.assertEqual(self.pool.servers[0].active, 0)

    def test_staleConnectionFinRetried(self):
        self.makeFactory(count=1)
        client = self.connectClient()
        stale = self.reusedBackend(client)
        client.send(GET)
        stale.finClose()
        fresh = self.connectBackend()
        fresh.send(OK)
        self.assertEqual(client.received().count(b"200 OK"), 2)

    def test_chunkedEmptyBodyRetried(self):
        self.makeFactory(count=1)
        client = self.connectClient()
        stale = self.reusedBackend(client)
        client.send(b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        stale.close(RESET)
        fresh = self.connectBackend()
        self.assertTrue(fresh.received().endswith(b"\r\n\r\n0\r\n\r\n"))

    def test_postNotRetried(self):
        self.makeFactory(count=1)
        client = self.connectClient()
        stale = self.reusedBackend(client)
        client.clear()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        stale.close(RESET)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 "))
        self.assertLastRecord(termination="SH")

    def test_startedBodyNotRetried(self):
        self.makeFactory(count=1)
        client = self.connectClient()
        stale = self.reusedBackend(client)
        client.clear()
        client.send(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
        stale.close(RESET)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 "))

    def test_partialResponseNotRetried(self):
        self.makeFactory(count=1)
        client = self.connectClient()
        stale = self.reusedBackend(client)
        client.clear()
        client.send(GET)
        stale.send(b"HTTP/1.1 2")
        stale.close(RESET)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 "))

    def test_crashedServerRedispatched(self):
        """
        A fresh connection closed before any of the response (the server
        died): an idempotent request goes to another server.
        """
        self.makeFactory()
        client = self.connectClient()
        client.send(GET)
        dead = self.connectBackend()
        dead.close(RESET)
        self.assertEqual(self.attemptPort(), 8002)
        other = self.connectBackend()
        self.assertTrue(other.received().startswith(b"GET /x HTTP/1.1\r\n"))
        other.send(OK)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(self.factory.redispatched, 1)
        self.assertLastRecord(server="s1", status=200)
        self.assertEqual([s.active for s in self.pool.servers], [0, 0])

    def test_redispatchBoundedByRetries(self):
        self.makeFactory(retries=1)
        client = self.connectClient()
        client.send(GET)
        self.connectBackend().close(RESET)
        self.connectBackend().close(RESET)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 "))
        self.assertLastRecord(termination="SH")

    def test_redispatchSharesTheAttempts(self):
        """
        Connect failures and fresh connections dying under the request
        share the pool's 1 + retries attempts: a refused connect, then a
        connection that died, leave no attempt for a third.
        """
        self.makeFactory(retries=1)
        client = self.connectClient()
        client.send(GET)
        self.refuseBackend()
        self.connectBackend().close(RESET)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 "))
        self.assertEqual([s.active for s in self.pool.servers], [0, 0])

    def fullServer(self, **options):
        """
        One server with maxconn 1, busy with a first client's request.
        """
        server = Server("s0", "tcp:host=127.0.0.1:port=8001", maxconn=1)
        self.makeFactory(pools={"web": makePool(servers=[server], **options)})
        first = self.connectClient()
        first.send(GET)
        return first, self.connectBackend()

    def test_queuedForAFullServer(self):
        """
        A request finding its server full waits in the pool's queue; it
        gets the slot the first request frees, and the access log's Tw is
        the time it waited.
        """
        first, busy = self.fullServer()
        second = self.connectClient(IPv4Address("TCP", "192.0.2.8", 40001))
        second.send(GET)
        self.assertEqual(self.pendingAttempts(), 0)
        self.reactor.advance(1.25)
        busy.send(OK)
        self.assertTrue(first.received().startswith(b"HTTP/1.1 200 OK"))
        self.reactor.advance(0)
        backend = self.connectBackend()
        self.assertTrue(backend.received().startswith(b"GET /x HTTP/1.1\r\n"))
        backend.send(OK)
        self.assertTrue(second.received().startswith(b"HTTP/1.1 200 OK"))
        record = self.assertLastRecord(server="s0", status=200, tw=1250)
        self.assertEqual(record.termination, "--")

    def test_queueTimeout(self):
        """
        No slot within timeouts.queue: 503, termination sQ, Tw the wait.
        """
        self.fullServer(queueTimeout=2.0)
        second = self.connectClient(IPv4Address("TCP", "192.0.2.8", 40001))
        second.send(GET)
        self.reactor.advance(2.0)
        self.assertTrue(second.received().startswith(b"HTTP/1.1 503 "))
        self.assertLastRecord(server="<NOSRV>", status=503, termination="sQ", tw=2000)

    def test_noQueue(self):
        self.fullServer(queueTimeout=0.0)
        second = self.connectClient(IPv4Address("TCP", "192.0.2.8", 40001))
        second.send(GET)
        self.assertTrue(second.received().startswith(b"HTTP/1.1 503 "))
        self.assertLastRecord(server="<NOSRV>", status=503, termination="SC", tw=0)

    def test_clientLeavesTheQueue(self):
        """
        A client that leaves while its request waits is logged CQ, with
        the time it waited; the queue forgets it.
        """
        first, busy = self.fullServer()
        second = self.connectClient(IPv4Address("TCP", "192.0.2.8", 40001))
        second.send(GET)
        self.assertEqual(self.pool.queued, 1)
        self.reactor.advance(0.5)
        second.close()
        self.assertLastRecord(server="<NOSRV>", termination="CQ", tw=500)
        self.assertEqual(self.pool.queued, 0)
        busy.send(OK)
        self.reactor.advance(10)
        self.assertEqual(self.pendingAttempts(), 0)

    def test_crashDuringPostNotRedispatched(self):
        self.makeFactory()
        client = self.connectClient()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        self.connectBackend().close(RESET)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 "))


class PersistenceTests(ProxyTestCase):
    def makeCookieFactory(self, **cookie):
        cookie.setdefault("name", "SRV")
        self.makeFactory(cookie=CookieConfig(**cookie))

    def test_insertThenPinned(self):
        self.makeCookieFactory()
        client = self.connectClient()
        self.exchange(client, GET)
        self.assertIn(b"Set-Cookie: SRV=s0; Path=/; HttpOnly\r\n", client.received())
        self.assertIn(b"Cache-Control: private\r\n", client.received())
        self.assertLastRecord(cookie="NI", server="s0")
        other = self.connectClient(IPv4Address("TCP", "192.0.2.9", 40009))
        other.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SRV=s1\r\n\r\n")
        self.assertEqual(self.attemptPort(), 8002)
        backend = self.connectBackend()
        backend.send(OK)
        self.assertNotIn(b"Set-Cookie", other.received())
        self.assertLastRecord(cookie="VN", server="s1")

    def test_tlsListenerSetsSecureCookie(self):
        self.makeFactory(
            makeListener(bind="ssl:8443:privateKey=key.pem"), cookie=CookieConfig(name="SRV")
        )
        client = self.connectClient()
        backend = self.exchange(client, GET)
        self.assertIn(b"X-Forwarded-Proto: https\r\n", backend.received())
        self.assertIn(b"Set-Cookie: SRV=s0; Path=/; HttpOnly; Secure\r\n", client.received())

    def test_indirectCookieRemovedBeforeBackend(self):
        self.makeCookieFactory(indirect=True)
        client = self.connectClient()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; SRV=s0; b=2\r\n\r\n")
        backend = self.connectBackend()
        fields = requestHead(backend.received())[1]
        self.assertIn((b"Cookie", b"a=1; b=2"), fields)

    def test_downServerRedispatchedAndRewritten(self):
        self.makeCookieFactory()
        self.pool.servers[0].setState(ServerState.DOWN)
        client = self.connectClient()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SRV=s0\r\n\r\n")
        self.assertEqual(self.attemptPort(), 8002)
        backend = self.connectBackend()
        backend.send(OK)
        self.assertIn(b"Set-Cookie: SRV=s1;", client.received())
        self.assertLastRecord(cookie="DI", server="s1")

    def test_pinnedServerConnectFailureRedispatched(self):
        self.makeCookieFactory()
        client = self.connectClient()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SRV=s1\r\n\r\n")
        self.assertEqual(self.attemptPort(), 8002)
        self.refuseBackend()
        self.assertEqual(self.attemptPort(), 8001)
        backend = self.connectBackend()
        backend.send(OK)
        self.assertIn(b"Set-Cookie: SRV=s0;", client.received())
        self.assertLastRecord(server="s0", cookie="VI")

    def test_pinnedUsesIdleConnection(self):
        self.makeCookieFactory()
        client = self.connectClient()
        self.exchange(client, b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SRV=s1\r\n\r\n")
        self.exchange(client, b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SRV=s1\r\n\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.attemptPort(0), 8002)


class RoutingTests(ProxyTestCase):
    def test_routesToOtherPool(self):
        listener = makeListener(routes=(RouteConfig(pool="api", pathPrefix="/api/"),))
        pools = {"web": makePool("web"), "api": makePool("api", count=1, basePort=9001)}
        self.makeFactory(listener, pools)
        client = self.connectClient()
        client.send(b"GET /api/v1 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(self.attemptPort(), 9001)
        self.connectBackend().send(OK)
        self.assertLastRecord(pool="api", server="s0")
        client.send(b"GET /index HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(self.attemptPort(), 8001)
        self.connectBackend().send(OK)
        self.assertLastRecord(pool="web", server="s0")

    def test_singlePoolAccepted(self):
        pool = makePool()
        factory = HTTPProxyFactory(makeListener(), pool, self.reactor)
        self.assertIs(factory.router.default, pool)


class ListenerTests(ProxyTestCase):
    def test_maxconn(self):
        self.makeFactory(makeListener(maxconn=1))
        self.connectClient()
        second = self.connectClient(IPv4Address("TCP", "192.0.2.9", 40009))
        self.assertTrue(second.received().startswith(b"HTTP/1.1 503 "))
        self.assertTrue(second.closing)
        self.assertEqual(self.factory.listener.counters.refused, 1)
        self.assertLastRecord(termination="RR", status=503)

    def test_sessionsForgotten(self):
        self.makeFactory()
        client = self.connectClient()
        self.assertEqual(self.factory.listener.sessions, {client.protocol})
        self.exchange(client, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        client.close()
        self.assertEqual(self.factory.listener.sessions, set())

    def test_stopClosesIdleAndLog(self):
        self.makeFactory()
        client = self.connectClient()
        backend = self.exchange(client, GET)
        self.factory.doStart()
        self.factory.doStop()
        self.assertTrue(backend.transport.disconnecting)
        self.assertTrue(self.log.closed)


    def test_stopLetsANewClientSendItsRequest(self):
        """
        A client that connected before the stop but has not sent its
        request yet is not closed: it gets STOPPING_IDLE to send it, and is
        answered with Connection: close.
        """
        self.makeFactory()
        client = self.connectClient()
        self.factory.stopping = True
        client.protocol.listenerStopping()
        self.assertFalse(client.transport.disconnecting)
        self.exchange(client, GET)
        self.assertIn(b"Connection: close\r\n", client.received())
        self.assertTrue(client.transport.disconnecting)

    def test_stopClosesNewClientThatSendsNothing(self):
        """
        A new client that sends nothing is closed STOPPING_IDLE after the
        stop, without a response or an error.
        """
        self.makeFactory()
        client = self.connectClient()
        self.factory.stopping = True
        client.protocol.listenerStopping()
        self.reactor.advance(STOPPING_IDLE - 0.01)
        self.assertFalse(client.transport.disconnecting)
        self.reactor.advance(0.5)
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(client.received(), b"")

    def test_stopClosesIdleKeepAliveAtOnce(self):
        """
        A keep-alive client idle after a response is closed at once.
        """
        self.makeFactory()
        client = self.connectClient()
        self.exchange(client, GET)
        client.protocol.listenerStopping()
        self.assertTrue(client.transport.disconnecting)


class ProxyProtocolTests(ProxyTestCase):
    def test_acceptProxyFromTrustedPeer(self):
        """
        A trusted proxy's PROXY header comes first; its source is the
        client the backend hears of.
        """
        import ipaddress

        front = self.makeFactory(makeListener(acceptProxy=(ipaddress.ip_network("192.0.2.0/24"),)))
        self.factory = wrapFront(front.listener, front, self.reactor)
        client = self.connectClient()
        client.send(b"PROXY TCP4 203.0.113.9 198.51.100.1 5555 80\r\nGET / HT")
        client.send(b"TP/1.1\r\nHost: a\r\n\r\n")
        backend = self.connectBackend()
        fields = dict(requestHead(backend.received())[1])
        self.assertEqual(fields[b"X-Forwarded-For"], b"203.0.113.9")
        self.assertEqual(fields[b"X-Forwarded-Port"], b"80")
        backend.send(OK)
        self.assertLastRecord(client=("203.0.113.9", 5555), status=200)

    def test_badProxyHeader(self):
        """
        A trusted peer whose connection does not start with a PROXY header
        is closed by the shared reader: the front never sees it.
        """
        import ipaddress

        front = self.makeFactory(makeListener(acceptProxy=(ipaddress.ip_network("192.0.2.0/24"),)))
        self.factory = wrapFront(front.listener, front, self.reactor)
        client = self.connectClient()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(client.received(), b"")
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(len(self.reactor.tcpClients), 0)
        self.assertEqual(front.listener.counters.errors, 1)

    def test_untrustedPeerSendsNoProxyHeader(self):
        import ipaddress

        self.makeFactory(makeListener(acceptProxy=(ipaddress.ip_network("10.0.0.0/8"),)))
        client = self.connectClient()
        client.send(b"PROXY TCP4 203.0.113.9 198.51.100.1 5555 80\r\n")
        # To the HTTP parser it is a request line with an unknown method.
        self.assertTrue(client.received().startswith(b"HTTP/1.1 501 "))
        self.assertEqual(len(self.reactor.tcpClients), 0)

    def test_sendProxyOnEachConnection(self):
        self.makeFactory(count=1, sendProxy="v1", reuseMaxIdle=0)
        client = self.connectClient()
        first = self.exchange(client, GET)
        self.assertTrue(
            first.received().startswith(
                b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 8080\r\nGET /x HTTP/1.1\r\n"
            )
        )
        self.assertIn(b"Connection: close\r\n", first.received())
        self.assertTrue(first.transport.disconnecting)
        second = self.exchange(client, GET)
        self.assertIsNot(first, second)
        self.assertTrue(second.received().startswith(b"PROXY TCP4 192.0.2.7 "))


class AccessLogFileTests(ProxyTestCase):
    def test_lineWritten(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "access.log")
        listener = makeListener(accessLog=path)
        self.factory = HTTPProxyFactory(listener, {"web": makePool()}, self.reactor)
        self.pool = self.factory.pools["web"]
        client = self.connectClient()
        client.send(GET)
        self.reactor.advance(0.002)
        backend = self.connectBackend()
        self.reactor.advance(0.003)
        backend.send(OK)
        self.factory.accessLog.close()
        with open(path) as f:
            (line,) = f.read().splitlines()
        self.assertRegex(
            line,
            r'^192\.0\.2\.7:40000 \[\S+\] web web/s0 0/0/2/3/5 200 40 0 ---- '
            r'"192\.0\.2\.7" "GET /x HTTP/1\.1"$',
        )


class ServiceTests(SynchronousTestCase):
    def test_frontFactoryHttpBranch(self):
        """
        service.frontFactory builds the HTTP front for mode = "http" with
        every pool, so routes reach pools other than the listener's.
        """
        from lbproxy.config import loadBytes
        from lbproxy.core.model import Balancer
        from lbproxy.service import frontFactory

        config = loadBytes(
            b"""
[listeners.web]
bind = "tcp:8080"
pool = "web"
mode = "http"
routes = [ { pool = "api", path_prefix = "/api/" } ]

[pools.web]
servers = [ { name = "w1", address = "127.0.0.1:8001" } ]

[pools.api]
servers = [ { name = "a1", address = "127.0.0.1:9001" } ]
""",
            "test.toml",
        )
        reactor = MemoryReactorClock()
        pools = Balancer(config).pools
        factory = frontFactory(config.listeners["web"], pools, reactor)
        self.assertIsInstance(factory, HTTPProxyFactory)
        self.assertEqual(
            sorted(route.pool.name for route in factory.routes), ["api", "web"]
        )
        factory.doStart()
        factory.doStop()
        self.assertTrue(factory.stopping)
