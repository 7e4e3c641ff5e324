"""
Hashing selectors keyed on what an HTTP request carries (URI, URL
parameter, header, cookie), through the HTTP front: one key always reaches
the same server, from any client connection.
"""

from twisted.internet.address import IPv4Address

from lbproxy.core.pool import Server
from lbproxy.selectors import findSelector
from test_http_front import OK, ProxyTestCase, makePool


class KeyedSelectorTests(ProxyTestCase):
    def serverFor(self, request: bytes, clientPort: int) -> str:
        """
        Send C{request} on a new client connection; the name of the server
        that answered.
        """
        for backend in self.backends:
            backend.clear()
        client = self.connectClient(IPv4Address("TCP", "192.0.2.7", clientPort))
        client.send(request)
        if self.pendingAttempts():
            self.connectBackend().send(OK)
        else:
            # A kept-alive connection to the chosen server got the request.
            [backend] = [b for b in self.backends if b.received()]
            backend.send(OK)
        server = self.log.records[-1].server
        client.close()
        return server

    def check(self, selector: str, key: str, requestFor) -> None:
        servers = [Server(f"s{i}", f"tcp:host=127.0.0.1:port={8001 + i}") for i in range(5)]
        selectorObject = findSelector(selector).build({"key": key})
        self.makeFactory(pools={"web": makePool(servers=servers, selector=selectorObject)})
        port = 41000
        placed = {}
        for value in [b"alice", b"bob", b"carol", b"dave", b"erin", b"frank", b"grace", b"heidi"]:
            seen = set()
            for _ in range(3):
                port += 1
                seen.add(self.serverFor(requestFor(value), port))
            self.assertEqual(len(seen), 1, (key, value, seen))
            placed[value] = seen.pop()
        self.assertGreater(len(set(placed.values())), 1, placed)

    def test_maglevByUrlParameter(self):
        self.check(
            "maglev",
            "url_param:user",
            lambda v: b"GET /mail?x=1&user=" + v + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        )

    def test_hashByHeader(self):
        self.check(
            "hash",
            "header:X-User",
            lambda v: b"GET / HTTP/1.1\r\nHost: a\r\nX-User: " + v + b"\r\n\r\n",
        )

    def test_maglevByCookie(self):
        self.check(
            "maglev",
            "cookie:sid",
            lambda v: b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; sid=" + v + b"\r\n\r\n",
        )

    def test_hashByUri(self):
        self.check(
            "hash",
            "uri",
            lambda v: b"GET /files/" + v + b"?v=2 HTTP/1.1\r\nHost: a\r\n\r\n",
        )
