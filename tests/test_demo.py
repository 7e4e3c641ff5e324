"""
Tests for L{lbproxy.demo}: the demo web servers report their name, the
client they saw and the X-Forwarded-For header they received.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from lbproxy.demo import SERVERS, URL, DemoResource, DemoService
from lbproxy.tap import demoConfig
from support import freePort


def render(resource: DemoResource, client, headers=()) -> tuple[bytes, DummyRequest]:
    request = DummyRequest([b""])
    request.client = client
    for name, value in headers:
        request.requestHeaders.addRawHeader(name, value)
    return resource.render(request), request


class DemoResourceTests(SynchronousTestCase):
    def test_report(self):
        body, request = render(DemoResource("web1"), IPv4Address("TCP", "127.0.0.1", 40312))
        self.assertEqual(
            body, b"server: web1\nclient: 127.0.0.1:40312\nx-forwarded-for: (none)\n"
        )
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"),
            [b"text/plain; charset=utf-8"],
        )

    def test_forwardedFor(self):
        """
        Every X-Forwarded-For header received is shown, in order.
        """
        body, _ = render(
            DemoResource("web2"),
            IPv6Address("TCP", "::1", 5000),
            [(b"X-Forwarded-For", b"192.0.2.1"), (b"X-Forwarded-For", b"10.0.0.1, ::1")],
        )
        self.assertEqual(
            body,
            b"server: web2\nclient: [::1]:5000\nx-forwarded-for: 192.0.2.1, 10.0.0.1, ::1\n",
        )

    def test_anyMethod(self):
        """
        The demo server answers any method, not only GET.
        """
        request = DummyRequest([b"some", b"path"])
        request.method = b"DELETE"
        request.client = IPv4Address("TCP", "127.0.0.1", 1)
        self.assertTrue(DemoResource("x").render(request).startswith(b"server: x\n"))

    def test_defaults(self):
        """
        The embedded demo serves web1 and web2 on loopback next to the
        listener the hint names.
        """
        self.assertEqual(
            SERVERS,
            (("web1", "tcp:8081:interface=127.0.0.1"), ("web2", "tcp:8082:interface=127.0.0.1")),
        )
        self.assertEqual(URL, "http://127.0.0.1:8080/")


class DemoConfigTests(SynchronousTestCase):
    """
    demo.toml: the tutorial's HTTP balancer in front of the demo servers.
    """

    def test_httpListener(self):
        """
        The demo listener speaks HTTP on the address the hint names and
        logs through the daemon's log.
        """
        config = demoConfig()
        [listener] = config.listeners.values()
        self.assertEqual(listener.mode, "http")
        self.assertEqual(listener.bind, "tcp:8080:interface=127.0.0.1")
        self.assertIsNone(listener.accessLog)
        self.assertEqual(listener.trustedProxies, ())

    def test_poolMatchesServers(self):
        """
        The pool balances round-robin over the demo servers, at the
        addresses they listen on, checked over HTTP.
        """
        pool = demoConfig().pools["demo"]
        self.assertEqual(pool.selector, "roundrobin")
        self.assertEqual(
            [(s.name, s.address) for s in pool.servers],
            [
                (name, "tcp:host=127.0.0.1:port=" + bind.split(":")[1])
                for name, bind in SERVERS
            ],
        )
        self.assertEqual(pool.health.type, "http")

    def test_cookiePersistence(self):
        """
        The pool pins clients with the LBSRV cookie, whose value is the
        server's name, kept away from the servers.
        """
        pool = demoConfig().pools["demo"]
        self.assertEqual(pool.cookie.name, "LBSRV")
        self.assertTrue(pool.cookie.indirect)
        self.assertTrue(pool.cookie.nocache)
        self.assertEqual([s.cookie for s in pool.servers], ["web1", "web2"])


class _WholeResponse(Protocol):
    """
    Sends one HTTP/1.0 request and collects the response until the server
    closes the connection.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason) -> None:
        self.done.callback(b"".join(self.received))


async def fetch(port: int, request: bytes) -> bytes:
    protocol = _WholeResponse(request)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    return await protocol.done


class DemoServiceTests(TestCase):
    """
    The demo servers on real loopback sockets.
    """

    def startDemo(self) -> tuple[DemoService, dict[str, int]]:
        ports = {"alpha": freePort(), "beta": freePort()}
        service = DemoService(
            reactor,
            [(name, f"tcp:{port}:interface=127.0.0.1") for name, port in ports.items()],
            url="http://127.0.0.1:1/",
        )
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return service, ports

    async def test_answers(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service, ports = self.startDemo()
        self.assertEqual(sorted(c.name for c in service), ["demo:alpha", "demo:beta"])
        for name, port in ports.items():
            response = await fetch(
                port,
                b"GET /anything HTTP/1.0\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n",
            )
            head, _, body = response.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.0 200 "), head)
            lines = body.decode().splitlines()
            self.assertEqual(lines[0], f"server: {name}")
            self.assertRegex(lines[1], r"^client: 127\.0\.0\.1:\d+$")
            self.assertEqual(lines[2], "x-forwarded-for: 198.51.100.7")
        hints = [e for e in events if e.get("url") == "http://127.0.0.1:1/"]
        self.assertEqual(len(hints), 1)
        self.assertEqual(hints[0]["log_level"], LogLevel.info)
        self.assertIn("try: curl {url}", hints[0]["log_format"])
        self.assertIn("curl -b jar -c jar {url}", hints[0]["log_format"])
        self.assertEqual(hints[0]["names"], "alpha, beta")
