"""
Which requests may take an idle backend connection: the pool's
C{reuse.mode} (HAProxy's C{http-reuse}), in memory.

  - C{safe} (the default): a client connection's first request always
    gets a new backend connection; its later requests may take any idle
    one. A server's stray response on an idle connection cannot answer a
    client that never used one;
  - C{never}: a backend connection serves only the client connection that
    opened it, for its later requests, and is closed when that client
    connection ends;
  - C{always}: any idle connection, for any request.

The keep-alive race (a reused connection closed by the server as the
request goes out) is retried in each mode; a first request on a new
connection is not a reused one.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.logger import capturedLogs

from test_http_front import GET, OK, RESET, ProxyTestCase
from test_http_response_faults import serverErrors

UNREQUESTED = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nunrequested"
OTHER = IPv4Address("TCP", "192.0.2.8", 40001)


def answer(path: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)


def get(path: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: example.com\r\n\r\n" % path


class SafeTests(ProxyTestCase):
    def test_unsolicitedResponseNeverAnswersAnotherClient(self):
        """
        The issue's case: the server answers client A, then writes a
        second, unrequested response on the same connection after client
        B's first request arrived. B's request went on a new connection:
        the stray response is logged as the server's error, its
        connection closed, and B gets its own answer.
        """
        self.makeFactory(count=1)
        a = self.connectClient()
        first = self.exchange(a, get(b"/a"), answer(b"/a"))
        first.clear()
        b = self.connectClient(OTHER)
        b.send(get(b"/b"))
        self.assertEqual(first.received(), b"")
        self.assertEqual(self.pendingAttempts(), 1)
        with capturedLogs() as events:
            first.send(UNREQUESTED)
        self.assertEqual(
            serverErrors(events),
            [
                f"server web/s0 sent {len(UNREQUESTED)} bytes on an idle connection, "
                "answering no request; connection closed"
            ],
        )
        self.assertTrue(first.transport.disconnected)
        second = self.connectBackend()
        self.assertTrue(second.received().startswith(b"GET /b HTTP/1.1\r\n"))
        second.send(answer(b"/b"))
        self.assertTrue(b.received().endswith(b"\r\n\r\n/b"))
        self.assertNotIn(b"unrequested", a.received() + b.received())
        self.assertEqual(self.pool.servers[0].responseErrors, 1)

    def test_laterRequestsTakeAnyIdleConnection(self):
        """
        After its first request, a client connection may take an idle
        connection another client used.
        """
        self.makeFactory(count=1)
        a = self.connectClient()
        first = self.exchange(a, GET)
        b = self.connectClient(OTHER)
        second = self.exchange(b, GET)
        self.assertIsNot(second, first)
        second.close()
        first.clear()
        b.send(get(b"/again"))
        self.assertEqual(self.pendingAttempts(), 0)
        self.assertTrue(first.received().startswith(b"GET /again HTTP/1.1\r\n"))

    def test_firstRequestOnNewConnectionIsNoKeepAliveRace(self):
        """
        A first request's new connection dying under it is a server
        failure (redispatched, within the retries), not the keep-alive
        race; a POST is not sent again.
        """
        self.makeFactory(count=1)
        a = self.connectClient()
        self.exchange(a, GET)
        b = self.connectClient(OTHER)
        b.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        self.connectBackend().close(RESET)
        self.assertTrue(b.received().startswith(b"HTTP/1.1 502 "))
        self.assertLastRecord(termination="SH")
        self.assertEqual((self.factory.staleRetries, self.factory.redispatched), (0, 0))
        c = self.connectClient(IPv4Address("TCP", "192.0.2.9", 40002))
        c.send(GET)
        self.connectBackend().close(RESET)
        self.assertEqual((self.factory.staleRetries, self.factory.redispatched), (0, 1))
        self.connectBackend().send(OK)
        self.assertTrue(c.received().endswith(b"ok"))

    def test_keepAliveRaceOnLaterRequestRetried(self):
        self.makeFactory(count=1)
        a = self.connectClient()
        stale = self.exchange(a, GET)
        a.send(GET)
        stale.close(RESET)
        self.connectBackend().send(OK)
        self.assertEqual(a.received().count(b"200 OK"), 2)
        self.assertEqual(self.factory.staleRetries, 1)


class AlwaysTests(ProxyTestCase):
    def test_firstRequestTakesAnIdleConnection(self):
        """
        Mode always shares idle connections with first requests too: the
        issue's stray response would reach client B. Only a server that
        never writes out of turn should be given it.
        """
        self.makeFactory(count=1, reuseMode="always")
        a = self.connectClient()
        first = self.exchange(a, GET)
        first.clear()
        b = self.connectClient(OTHER)
        b.send(get(b"/b"))
        self.assertEqual(self.pendingAttempts(), 0)
        self.assertTrue(first.received().startswith(b"GET /b HTTP/1.1\r\n"))


class NeverTests(ProxyTestCase):
    def test_connectionServesOnlyItsClient(self):
        """
        Each client connection keeps its own backend connection for its
        later requests; no other client gets it, even for a later request.
        """
        self.makeFactory(count=1, reuseMode="never")
        a = self.connectClient()
        b = self.connectClient(OTHER)
        mine = self.exchange(a, GET)
        theirs = self.exchange(b, GET)
        self.assertIsNot(mine, theirs)
        for client, backend in ((a, mine), (b, theirs), (b, theirs), (a, mine)):
            backend.clear()
            client.send(GET)
            self.assertEqual(self.pendingAttempts(), 0)
            self.assertTrue(backend.received().startswith(b"GET /x HTTP/1.1\r\n"))
            backend.send(OK)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual([mine.protocol.requests, theirs.protocol.requests], [3, 3])

    def test_closedWithItsClient(self):
        self.makeFactory(count=1, reuseMode="never")
        a = self.connectClient()
        b = self.connectClient(OTHER)
        mine = self.exchange(a, GET)
        theirs = self.exchange(b, GET)
        backends = self.factory.routeFor(self.pool).backends
        self.assertEqual(backends.idleCount(), 2)
        a.close()
        self.assertTrue(mine.transport.disconnecting)
        self.assertFalse(theirs.transport.disconnecting)
        self.assertEqual(backends.idleCount(), 1)
        b.close()
        self.assertTrue(theirs.transport.disconnecting)
        self.assertEqual(backends.idleCount(), 0)

    def test_countsTowardMaxIdle(self):
        """
        A client's own idle connection still counts toward the server's
        idle limit: beyond it, the oldest is closed, and its client's
        next request gets a new one.
        """
        self.makeFactory(count=1, reuseMode="never", reuseMaxIdle=1)
        a = self.connectClient()
        b = self.connectClient(OTHER)
        mine = self.exchange(a, GET)
        self.exchange(b, GET)
        self.assertTrue(mine.transport.disconnecting)
        a.send(GET)
        self.assertEqual(self.pendingAttempts(), 1)

    def test_expires(self):
        self.makeFactory(count=1, reuseMode="never", reuseIdleTimeout=5.0)
        a = self.connectClient()
        mine = self.exchange(a, GET)
        self.reactor.advance(5)
        self.assertTrue(mine.transport.disconnecting)
        a.send(GET)
        self.assertEqual(self.pendingAttempts(), 1)

    def test_keepAliveRaceRetried(self):
        self.makeFactory(count=1, reuseMode="never")
        a = self.connectClient()
        stale = self.exchange(a, GET)
        a.send(GET)
        stale.close(RESET)
        fresh = self.connectBackend()
        fresh.send(OK)
        self.assertEqual(a.received().count(b"200 OK"), 2)
        self.assertEqual(self.factory.staleRetries, 1)
        fresh.clear()
        a.send(GET)
        self.assertTrue(fresh.received().startswith(b"GET /x"))
