"""
Tests for lbproxy.http.backend (backend connections and their idle lists),
lbproxy.http.rewrite (the backend's version of a request head) and the
connector's first-server option the HTTP front uses.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.config import PoolConfig
from lbproxy.http.config import HTTPListenerConfig
from lbproxy.core.connect import BackendConnector
from lbproxy.core.context import FlowContext
from lbproxy.http.backend import (
    BackendHTTPConnection,
    BackendPool,
    IdleConnections,
)
from lbproxy.http.interfaces import IBackendUser
from lbproxy.http.forwarded import ForwardingHeaders, TrustedNetworks
from lbproxy.http.interfaces import IHTTPMessageReceiver
from lbproxy.http.message import BodyKind, Headers, RequestHead
from lbproxy.http.parser import RequestParser
from lbproxy.http.rewrite import RequestRewriter, retryable
from lbproxy.core.pool import Pool, Server
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin

DONE = Failure(ConnectionDone())
CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)
LOCAL = IPv4Address("TCP", "198.51.100.1", 8080)


@implementer(IBackendUser)
class RecordingUser:
    def __init__(self):
        self.events = []

    def responseHeadReceived(self, head, body):
        self.events.append(("head", head.status))
        if body is not None:
            # The whole response came with its head.
            if body:
                self.responseBodyReceived(body)
            self.responseCompleted()

    def responseBodyReceived(self, data):
        self.events.append(("body", data))

    def responseCompleted(self):
        self.events.append(("complete",))

    def backendFailed(self, connection, error, closed):
        self.events.append(("failed", error.status, closed))

    def backendWriteBlocked(self):
        self.events.append(("blocked",))

    def backendWriteUnblocked(self):
        self.events.append(("unblocked",))


def connected() -> tuple[BackendHTTPConnection, StringTransport]:
    connection = BackendHTTPConnection()
    transport = StringTransport()
    connection.makeConnection(transport)
    return connection, transport


class BackendConnectionTests(SynchronousTestCase):
    def test_interfaces(self):
        connection, transport = connected()
        verifyObject(IHTTPMessageReceiver, connection)
        verifyObject(IPushProducer, connection)
        verifyObject(IHalfCloseableProtocol, connection)
        verifyObject(IBackendUser, RecordingUser())
        self.assertIs(transport.producer, connection)
        self.assertTrue(transport.streaming)

    def test_eventsGoToUser(self):
        connection, transport = connected()
        user = RecordingUser()
        connection.attach(user, b"GET", False)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab")
        connection.dataReceived(b"c")
        self.assertEqual(
            user.events, [("head", 200), ("body", b"ab"), ("body", b"c"), ("complete",)]
        )
        self.assertTrue(connection.reusable)
        self.assertEqual(connection.requests, 1)
        self.assertEqual(connection.bytesReceived, 41)

    def test_closeBeforeResponse(self):
        connection, transport = connected()
        user = RecordingUser()
        connection.attach(user, b"GET", False)
        connection.connectionLost(DONE)
        self.assertEqual(user.events, [("failed", 502, True)])
        self.assertIsNone(connection.user)

    def test_finEndsUntilCloseBody(self):
        connection, transport = connected()
        user = RecordingUser()
        connection.attach(user, b"GET", False)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nall")
        connection.readConnectionLost()
        self.assertEqual(user.events, [("head", 200), ("body", b"all"), ("complete",)])
        self.assertFalse(connection.reusable)
        self.assertTrue(transport.disconnecting)

    def test_garbageAborts(self):
        connection, transport = connected()
        user = RecordingUser()
        connection.attach(user, b"GET", False)
        connection.dataReceived(b"HTTP/1.1 abc\r\n\r\n")
        self.assertEqual(user.events, [("failed", 502, False)])
        self.assertTrue(transport.disconnected)

    def test_userGivingUpStopsEvents(self):
        """
        A user that gives the connection up on the head hears nothing of
        the rest of the same read (a chunked response: not in the simple
        form, whose head and body come to the user in one call).
        """
        connection, transport = connected()
        user = RecordingUser()
        user.responseHeadReceived = lambda head, body: (user.events.append("head"), connection.abort())
        connection.attach(user, b"GET", False)
        connection.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        self.assertEqual(user.events, ["head"])
        self.assertTrue(transport.disconnected)

    def test_writeBlockedReported(self):
        connection, transport = connected()
        user = RecordingUser()
        connection.attach(user, b"GET", False)
        connection.pauseProducing()
        self.assertTrue(connection.writeBlocked)
        connection.resumeProducing()
        self.assertEqual(user.events, [("blocked",), ("unblocked",)])

    def test_pauseReadingOnce(self):
        connection, transport = connected()
        connection.pauseReading()
        connection.pauseReading()
        self.assertEqual(transport.producerState, "paused")
        connection.resumeReading()
        self.assertEqual(transport.producerState, "producing")


class IdleConnectionsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = Server("s0", "tcp:host=127.0.0.1:port=8001")

    def idle(self, maxIdle=3, timeout=10.0):
        return IdleConnections(self.server, maxIdle, timeout, self.clock)

    def test_lastInFirstOut(self):
        idle = self.idle()
        a, _ = connected()
        b, _ = connected()
        idle.put(a)
        idle.put(b)
        self.assertIs(idle.take(), b)
        self.assertIs(idle.take(), a)
        self.assertIsNone(idle.take())

    def test_oldestClosedOverLimit(self):
        idle = self.idle(maxIdle=2)
        connections = [connected() for _ in range(3)]
        for connection, _ in connections:
            idle.put(connection)
        self.assertEqual(len(idle), 2)
        self.assertTrue(connections[0][1].disconnecting)
        self.assertFalse(connections[1][1].disconnecting)

    def test_expiry(self):
        """
        Each connection is closed reuseIdleTimeout after it became idle,
        by one timer per list.
        """
        idle = self.idle(timeout=10.0)
        a, ta = connected()
        b, tb = connected()
        idle.put(a)
        self.clock.advance(4)
        idle.put(b)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(6)
        self.assertTrue(ta.disconnecting)
        self.assertFalse(tb.disconnecting)
        self.clock.advance(4)
        self.assertTrue(tb.disconnecting)
        self.assertEqual(len(idle), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_backendCloseRemoves(self):
        idle = self.idle()
        a, _ = connected()
        idle.put(a)
        a.connectionLost(DONE)
        self.assertEqual(len(idle), 0)
        self.assertIsNone(idle.take())

    def test_finRemoves(self):
        idle = self.idle()
        a, transport = connected()
        idle.put(a)
        a.readConnectionLost()
        self.assertEqual(len(idle), 0)
        self.assertTrue(transport.disconnecting)

    def test_unsolicitedDataCloses(self):
        idle = self.idle()
        a, transport = connected()
        idle.put(a)
        a.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(len(idle), 0)
        self.assertTrue(transport.disconnected)

    def test_noReuse(self):
        idle = self.idle(maxIdle=0)
        a, _ = connected()
        self.assertFalse(idle.put(a))

    def test_closeAll(self):
        idle = self.idle()
        a, ta = connected()
        idle.put(a)
        idle.closeAll()
        self.assertTrue(ta.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_putResumesReading(self):
        idle = self.idle()
        a, transport = connected()
        a.pauseReading()
        idle.put(a)
        self.assertEqual(transport.producerState, "producing")


class BackendPoolTests(SynchronousTestCase):
    def test_releaseKeepsOrCloses(self):
        server = Server("s0", "tcp:host=127.0.0.1:port=8001")
        pool = Pool("web", [server], SmoothWeightedRoundRobin(), PoolConfig(name="web", servers=()))
        backends = BackendPool(pool, Clock())
        good, _ = connected()
        good.server = server
        user = RecordingUser()
        good.attach(user, b"GET", False)
        good.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertTrue(backends.release(good, user))
        self.assertIs(backends.takeIdle(server, user, False), good)
        bad, transport = connected()
        bad.server = server
        bad.attach(user, b"GET", False)
        bad.dataReceived(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        self.assertFalse(backends.release(bad, user))
        self.assertTrue(transport.disconnecting)


class ConnectToServerTests(SynchronousTestCase):
    def test_firstAttemptToGivenServer(self):
        """
        connect(server=...) tries that server first; a retry is picked by
        the selector among the others.
        """
        reactor = MemoryReactorClock()
        servers = [Server(f"s{i}", f"tcp:host=127.0.0.1:port={8001 + i}") for i in range(3)]
        pool = Pool(
            "web", servers, SmoothWeightedRoundRobin(), PoolConfig(name="web", servers=(), retries=1)
        )
        connector = BackendConnector(pool, reactor)
        d = connector.connect(FlowContext(CLIENT, LOCAL), Factory.forProtocol(Protocol), servers[2])
        self.assertEqual(reactor.tcpClients[0][1], 8003)
        self.assertEqual(servers[2].active, 1)
        reactor.tcpClients[0][2].clientConnectionFailed(
            reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        self.assertEqual(servers[2].active, 0)
        self.assertEqual(reactor.tcpClients[1][1], 8001)
        host, port, factory, _, _ = reactor.tcpClients[1]
        factory.buildProtocol(None).makeConnection(StringTransport())
        connection = self.successResultOf(d)
        self.assertIs(connection.server, servers[0])


def parse(data: bytes) -> RequestHead:
    heads = []

    class Receiver:
        def headersComplete(self, head):
            heads.append(head)

        def bodyData(self, data):
            pass

        def messageComplete(self):
            pass

    RequestParser(Receiver()).dataReceived(data)
    return heads[0]


class RewriteTests(SynchronousTestCase):
    def rewriter(self, **listener):
        config = HTTPListenerConfig(name="web", bind="tcp:8080", pool="web", mode="http", **listener)
        return RequestRewriter(config)

    def test_oneLineFastPathMatchesForwardingHeaders(self):
        """
        The one-pass rewrite of the common case yields the same fields as
        removeHopByHop plus ForwardingHeaders.apply, for many field mixes,
        and a checked head (written from its values without a second
        check) the same bytes as the same head unchecked, framing
        included.
        """
        rng = random.Random(7)
        pool = [
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"evil"),
            (b"X-Forwarded-Port", b"1"),
            (b"Forwarded", b"for=10.0.0.1"),
            (b"Connection", b"keep-alive, X-A"),
            (b"Keep-Alive", b"5"),
            (b"X-A", b"1"),
            (b"X-B", b"2"),
            (b"TE", b"trailers"),
            (b"Accept", b"*/*"),
            (b"Cookie", b"a=b"),
            (b"Proxy-Connection", b"close"),
        ]
        rewriter = self.rewriter()
        peer = rewriter.peer(CLIENT, LOCAL)
        framings = [b"", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n"]
        for _ in range(200):
            fields = rng.sample(pool, rng.randint(0, len(pool)))
            request = b"POST /p HTTP/1.1\r\nHost: h.example\r\n" + b"".join(
                b"%s: %s\r\n" % field for field in fields
            ) + rng.choice(framings) + b"\r\n"
            head = parse(request)
            self.assertTrue(head.checked)
            data, websocket, xff = rewriter.rewrite(head, peer)
            unchecked = dataclasses.replace(head, checked=False)
            self.assertEqual(rewriter.rewrite(unchecked, peer), (data, websocket, xff), request)
            expected = head.headers.copy()
            expected.removeHopByHop()
            ForwardingHeaders(TrustedNetworks()).apply(
                expected,
                clientHost="192.0.2.7",
                clientPort=40000,
                proto="http",
                host=b"h.example",
                port=8080,
            )
            expected.remove(b"content-length")
            expected.remove(b"transfer-encoding")
            got = data.split(b"\r\n")[1:-2]
            if head.bodyKind is BodyKind.LENGTH:
                self.assertEqual(got.pop(), b"Content-Length: 3")
            elif head.bodyKind is BodyKind.CHUNKED:
                self.assertEqual(got.pop(), b"Transfer-Encoding: chunked")
            self.assertEqual(
                sorted(got), sorted(b"%s: %s" % (n, v) for n, v in expected), request
            )
            self.assertEqual(xff, b"192.0.2.7")
            self.assertFalse(websocket)

    def test_repeatedCheckedHeads(self):
        """
        A connection's checked requests are each written as a fresh
        connection would write them, whether they repeat the previous
        request or differ from it in method, target, fields, framing or
        the backend's close.
        """
        requests = [
            b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n",
            b"HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n",
            b"HEAD /b HTTP/1.1\r\nHost: h2\r\n\r\n",
            b"HEAD /b HTTP/1.1\r\nHost: h2\r\nX-A: 1\r\n\r\n",
            b"HEAD /b HTTP/1.1\r\nHost: h2\r\nX-A: 2\r\n\r\n",
            b"HEAD /b HTTP/1.1\r\nHost: h2\r\nConnection: X-A\r\nX-A: 2\r\n\r\n",
            b"POST /b HTTP/1.1\r\nHost: h2\r\nContent-Length: 1\r\n\r\nx",
            b"POST /b HTTP/1.1\r\nHost: h2\r\nContent-Length: 2\r\n\r\nxy",
            b"POST /b HTTP/1.1\r\nHost: h2\r\nContent-Length: 2\r\n\r\nxy",
            b"POST /b HTTP/1.1\r\nHost: h2\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]
        rewriter = self.rewriter()
        peer = rewriter.peer(CLIENT, LOCAL)
        written = set()
        for request in requests:
            for closeBackend in (False, True, False):
                head = parse(request)
                self.assertTrue(head.checked)
                got = rewriter.rewrite(head, peer, closeBackend)
                other = self.rewriter()
                fresh = other.rewrite(head, other.peer(CLIENT, LOCAL), closeBackend)
                self.assertEqual(got, fresh, (request, closeBackend))
                written.add(got[0])
        # Two requests repeat the one before; the X-A that Connection names
        # is dropped, which writes that request as one before it.
        self.assertEqual(len(written), 2 * (len(requests) - 3))
        chunked = rewriter.rewrite(parse(requests[-1]), peer)[0]
        self.assertTrue(chunked.endswith(b"Transfer-Encoding: chunked\r\n\r\n"), chunked)

    def test_connectionsShareWhatIsTheSame(self):
        """
        Connections from one client address to one local address share the
        proxy's fields, those fields written, and the head written for the
        same checked request: the same bytes another rewriter writes, and
        none of another client's.
        """
        rewriter = self.rewriter()
        first = rewriter.peer(CLIENT, LOCAL)
        second = rewriter.peer(IPv4Address("TCP", "192.0.2.7", 40001), LOCAL)
        other = rewriter.peer(IPv4Address("TCP", "192.0.2.8", 40000), LOCAL)
        self.assertIs(first._added, second._added)
        request = b"GET /a HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"
        data = rewriter.rewrite(parse(request), first)
        self.assertIs(rewriter.rewrite(parse(request), second)[0], data[0])
        self.assertIs(first._addedBlock, second._addedBlock)
        self.assertIs(first._lastChecked, second._lastChecked)
        self.assertEqual(data, self.rewriter().rewrite(parse(request), self.rewriter().peer(CLIENT, LOCAL)))
        elsewhere = rewriter.rewrite(parse(request), other)
        self.assertIn(b"X-Forwarded-For: 192.0.2.8\r\n", elsewhere[0])
        self.assertNotIn(b"192.0.2.7", elsewhere[0])
        self.assertEqual(elsewhere[2], b"192.0.2.8")

    def test_sharedHeadsBounded(self):
        """
        The heads connections share are a bounded table, started afresh
        when full; what a connection wrote last stays its own.
        """
        from lbproxy.http.rewrite import _CHECKED_LIMIT

        rewriter = self.rewriter()
        peer = rewriter.peer(CLIENT, LOCAL)
        for number in range(_CHECKED_LIMIT + 5):
            rewriter.rewrite(parse(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % number), peer)
        self.assertLessEqual(len(rewriter._checked), _CHECKED_LIMIT)
        self.assertIn(b"GET /%d " % (_CHECKED_LIMIT + 4), peer._lastChecked[1])

    def test_subjectFieldsNotShared(self):
        """
        A connection with a verified client certificate writes its own
        fields, subject included; others keep theirs.
        """
        rewriter = self.rewriter()
        plain = rewriter.peer(CLIENT, LOCAL)
        verified = rewriter.peer(CLIENT, LOCAL)
        verified._subject = (b"x-client-subject", b"X-Client-Subject", b"CN=client")
        request = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
        withSubject = rewriter.rewrite(parse(request), verified)[0]
        without = rewriter.rewrite(parse(request), plain)[0]
        self.assertIn(b"X-Client-Subject: CN=client\r\n", withSubject)
        self.assertNotIn(b"X-Client-Subject", without)
        self.assertIsNot(plain._addedBlock, verified._addedBlock)

    def test_trustedProxyKeepsChain(self):
        rewriter = self.rewriter(trustedProxies=(ipaddress.ip_network("192.0.2.0/24"),))
        head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
        data, websocket, xff = rewriter.rewrite(head, rewriter.peer(CLIENT, LOCAL))
        self.assertEqual(xff, b"1.2.3.4, 192.0.2.7")

    def test_websocketKept(self):
        rewriter = self.rewriter()
        head = parse(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        data, websocket, xff = rewriter.rewrite(head, rewriter.peer(CLIENT, LOCAL), True)
        self.assertTrue(websocket)
        self.assertIn(b"Upgrade: websocket\r\n", data)
        self.assertIn(b"Connection: Upgrade\r\n", data)
        self.assertNotIn(b"Connection: close", data)

    def test_closeBackend(self):
        rewriter = self.rewriter()
        head = parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data, _, _ = rewriter.rewrite(head, rewriter.peer(CLIENT, LOCAL), True)
        self.assertIn(b"Connection: close\r\n", data)

    def test_unixClient(self):
        from twisted.internet.address import UNIXAddress

        rewriter = self.rewriter()
        head = parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data, _, xff = rewriter.rewrite(head, rewriter.peer(UNIXAddress(None), UNIXAddress(b"/s")))
        self.assertEqual(xff, b"unknown")

    def test_tlsListenerIsHttps(self):
        config = HTTPListenerConfig(
            name="web", bind="ssl:8443:privateKey=k.pem", pool="web", mode="http"
        )
        rewriter = RequestRewriter(config)
        self.assertEqual(rewriter.proto, "https")
        head = parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data, _, _ = rewriter.rewrite(head, rewriter.peer(CLIENT, LOCAL))
        self.assertIn(b"X-Forwarded-Proto: https\r\n", data)
        self.assertEqual(self.rewriter().proto, "http")

    def test_retryable(self):
        for method, expected in [(b"GET", True), (b"PUT", True), (b"POST", False), (b"PATCH", False)]:
            head = RequestHead(method=method, target=b"/", version=(1, 1), headers=Headers())
            self.assertEqual(retryable(head), expected)
