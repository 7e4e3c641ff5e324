"""
A stick table on an HTTP pool, in memory: requests carrying the same
header value reach the same server from any client connection, a
persistence cookie still wins over the table, and a request served on an
idle backend connection is recorded as one on a new connection is.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address

from lbproxy.config import CookieConfig
from lbproxy.config.stick import StickConfig
from lbproxy.core.stick import StickTable
from lbproxy.http.context import HTTPFlowContext
from lbproxy.http.message import Headers, RequestHead

from test_http_front import ProxyTestCase, makePool

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def get(session: bytes, cookie: bytes = b"") -> bytes:
    extra = b"Cookie: SRV=%s\r\n" % cookie if cookie else b""
    return b"GET / HTTP/1.1\r\nHost: a\r\nX-Session: %s\r\n%s\r\n" % (session, extra)


def peer(n: int) -> IPv4Address:
    return IPv4Address("TCP", f"192.0.2.{n}", 40000 + n)


class StickTests(ProxyTestCase):
    def makeStickFactory(self, count: int = 2, **options):
        pool = makePool(count=count, stick=StickConfig("header:X-Session", 600.0, 1000, False), **options)
        pool.clock = self.reactor
        pool.stick = StickTable(pool.options.stick, pool, b"k" * 32)
        self.makeFactory(pools={"web": pool})
        return pool

    def pinned(self, pool, session: bytes):
        head = RequestHead(b"GET", b"/", b"HTTP/1.1", Headers([(b"Host", b"a"), (b"X-Session", session)]))
        server = pool.stick.lookup(HTTPFlowContext(peer(99), peer(98), head))
        return server.name if server is not None else None

    def test_sameSessionSameServer(self):
        """
        Round-robin would alternate; the table sends every request of a
        session, from whichever client connection, to its first server.
        """
        pool = self.makeStickFactory()
        first = self.connectClient(peer(1))
        self.exchange(first, get(b"abc"), OK)
        self.assertEqual(self.attemptPort(0), 8001)
        for n in range(2, 6):
            client = self.connectClient(peer(n))
            client.send(get(b"abc"))
            self.assertEqual(self.attemptPort(), 8001)
            self.connectBackend().send(OK)
        other = self.connectClient(peer(7))
        other.send(get(b"xyz"))
        self.assertEqual(self.attemptPort(), 8002)
        self.assertEqual(pool.stick.hits, 4)

    def test_cookieWins(self):
        """
        A valid persistence cookie names the server, whatever the table
        says; the table then follows the cookie's server.
        """
        pool = self.makeStickFactory(cookie=CookieConfig(name="SRV"))
        client = self.connectClient(peer(1))
        self.exchange(client, get(b"abc"), OK)
        self.assertEqual(self.pinned(pool, b"abc"), "s0")
        other = self.connectClient(peer(2))
        other.send(get(b"abc", cookie=b"s1"))
        self.assertEqual(self.attemptPort(), 8002)
        self.connectBackend().send(OK)
        self.assertLastRecord(cookie="VN", server="s1")
        self.assertEqual(self.pinned(pool, b"abc"), "s1")

    def test_idleConnectionReuseRecorded(self):
        """
        A later request taking an idle backend connection is pinned too.
        """
        pool = self.makeStickFactory(count=1)
        client = self.connectClient(peer(1))
        self.exchange(client, get(b"one"), OK)
        self.exchange(client, get(b"two"), OK)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual((self.pinned(pool, b"one"), self.pinned(pool, b"two")), ("s0", "s0"))
        self.assertEqual(len(pool.stick.entries), 2)
