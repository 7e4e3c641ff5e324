"""
Health checks driven in memory: a MemoryReactorClock records the connection
attempt, the test plays the server over a StringTransport.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lbproxy.config import HealthConfig, parse
from lbproxy.errors import ConfigError
from lbproxy.health import checks
from lbproxy.health.checks import (
    MAX_BANNER_BYTES,
    MAX_STATUS_BYTES,
    BannerCheck,
    HealthCheckFailed,
    HTTPCheck,
    TCPCheck,
)
from lbproxy.health.kinds import buildCheck
from lbproxy.core.endpoints import hostHeader
from lbproxy.interfaces import IHealthCheck
from lbproxy.core.pool import Server

from memoryconnections import refuseAttempt


ADDRESS = "tcp:host=127.0.0.1:port=8080"


def server(address: str = ADDRESS) -> Server:
    return Server("s1", address)


class CheckTestMixin:
    """
    Start a check on a MemoryReactorClock and play the server side.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def start(self, check, address: str = ADDRESS):
        return check.check(server(address))

    def accept(self):
        """
        Complete the pending connection attempt; return the client-side
        protocol and its transport.
        """
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def refuse(self) -> None:
        refuseAttempt(self.reactor)

    def reason(self, result) -> str:
        return str(self.failureResultOf(result, HealthCheckFailed).value)

    def assertNoTimers(self) -> None:
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class InterfaceTests(SynchronousTestCase):
    def test_verifyObject(self) -> None:
        reactor = MemoryReactorClock()
        for check in (
            TCPCheck(reactor, HealthConfig()),
            HTTPCheck(reactor, HealthConfig(type="http")),
            BannerCheck(reactor, HealthConfig(type="banner", expect=b"+OK")),
        ):
            self.assertTrue(verifyObject(IHealthCheck, check))

    def test_buildCheckByType(self) -> None:
        reactor = MemoryReactorClock()
        self.assertIsInstance(buildCheck(reactor, HealthConfig(type="tcp")), TCPCheck)
        self.assertIsInstance(buildCheck(reactor, HealthConfig(type="http")), HTTPCheck)
        self.assertIsInstance(
            buildCheck(reactor, HealthConfig(type="banner", expect=b"* OK")), BannerCheck
        )


class TCPCheckTests(CheckTestMixin, SynchronousTestCase):
    def test_connectsToServerEndpoint(self) -> None:
        self.start(TCPCheck(self.reactor, HealthConfig()))
        host, port = self.reactor.tcpClients[-1][:2]
        self.assertEqual((host, port), ("127.0.0.1", 8080))

    def test_healthyWhenConnected(self) -> None:
        result = self.start(TCPCheck(self.reactor, HealthConfig()))
        self.assertNoResult(result)
        _, transport = self.accept()
        self.assertIsNone(self.successResultOf(result))
        self.assertTrue(transport.disconnecting)
        self.assertNoTimers()

    def test_connectionRefused(self) -> None:
        result = self.start(TCPCheck(self.reactor, HealthConfig()))
        self.refuse()
        self.assertEqual(self.reason(result), "connection refused")
        self.assertNoTimers()

    def test_connectTimeout(self) -> None:
        result = self.start(TCPCheck(self.reactor, HealthConfig(timeout=1.0)))
        self.reactor.advance(0.9)
        self.assertNoResult(result)
        self.reactor.advance(0.1)
        self.assertEqual(self.reason(result), "connect timeout after 1s")
        self.assertTrue(self.reactor.connectors[-1].stoppedConnecting)

    def test_fractionalTimeoutInReason(self) -> None:
        result = self.start(TCPCheck(self.reactor, HealthConfig(timeout=0.25)))
        self.reactor.advance(0.25)
        self.assertEqual(self.reason(result), "connect timeout after 0.25s")

    def test_cancelWhileConnecting(self) -> None:
        result = self.start(TCPCheck(self.reactor, HealthConfig()))
        result.cancel()
        self.failureResultOf(result)
        self.assertTrue(self.reactor.connectors[-1].stoppedConnecting)
        self.assertNoTimers()

    def test_endpointRaisingOnConnect(self) -> None:
        class Broken:
            def connect(self, factory):
                raise OSError("no sockets left")

        check = TCPCheck(self.reactor, HealthConfig())
        self.patch(checks, "clientFromString", lambda reactor, address: Broken())
        result = self.start(check)
        self.assertEqual(self.reason(result), "connect failed: no sockets left")
        self.assertNoTimers()

    def test_badAddress(self) -> None:
        result = self.start(TCPCheck(self.reactor, HealthConfig()), "nosuchtype:x")
        self.assertTrue(self.reason(result).startswith("bad address: "))


class HTTPCheckTests(CheckTestMixin, SynchronousTestCase):
    def check(self, **kwargs) -> HTTPCheck:
        return HTTPCheck(self.reactor, HealthConfig(type="http", **kwargs))

    def test_request(self) -> None:
        self.start(self.check(path="/health"))
        _, transport = self.accept()
        self.assertEqual(
            transport.value(),
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
            b"Connection: close\r\nUser-Agent: lbproxy-health\r\n\r\n",
        )

    def test_configuredHostAndMethod(self) -> None:
        self.start(self.check(method="HEAD", host="www.example.test"))
        _, transport = self.accept()
        self.assertTrue(transport.value().startswith(b"HEAD / HTTP/1.1\r\nHost: www.example.test\r\n"))

    def test_invalidHostRefused(self) -> None:
        self.assertRaises(ValueError, self.check, host="a\r\nX-Evil: 1")

    def test_healthyStatus(self) -> None:
        result = self.start(self.check())
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertIsNone(self.successResultOf(result))
        self.assertTrue(transport.disconnecting)
        self.assertNoTimers()

    def test_unhealthyStatus(self) -> None:
        result = self.start(self.check())
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
        self.assertEqual(self.reason(result), "status 503")
        self.assertTrue(transport.disconnecting)

    def test_expectStatusRanges(self) -> None:
        check = self.check(expectStatus=((200, 200), (404, 404)))
        for status, healthy in ((200, True), (404, True), (204, False), (301, False)):
            result = self.start(check)
            protocol, _ = self.accept()
            protocol.dataReceived(b"HTTP/1.1 %d X\r\n" % status)
            if healthy:
                self.successResultOf(result)
            else:
                self.assertEqual(self.reason(result), f"status {status}")

    def test_statusLineInPieces(self) -> None:
        result = self.start(self.check())
        protocol, _ = self.accept()
        for piece in (b"HT", b"TP/1.0 20", b"4", b"\r", b"\n"):
            self.assertNoResult(result)
            protocol.dataReceived(piece)
        self.successResultOf(result)

    def test_bareNewlineAndNoReasonPhrase(self) -> None:
        result = self.start(self.check())
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200\n")
        self.successResultOf(result)

    def test_interimResponsesSkipped(self) -> None:
        result = self.start(self.check())
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        protocol.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
        self.assertNoResult(result)
        protocol.dataReceived(b"HTTP/1.1 500 Oops\r\n\r\n")
        self.assertEqual(self.reason(result), "status 500")

    def test_malformedStatusLine(self) -> None:
        for line in (
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"HTTP/2 200\r\n",
            b"HTTP/1.1 20 OK\r\n",
            b"HTTP/1.1 200OK\r\n",
            b"http/1.1 200 OK\r\n",
        ):
            result = self.start(self.check())
            protocol, transport = self.accept()
            protocol.dataReceived(line)
            self.assertTrue(
                self.reason(result).startswith("malformed status line "), line
            )
            self.assertTrue(transport.disconnected)

    def test_malformedReasonQuotesLine(self) -> None:
        result = self.start(self.check())
        protocol, _ = self.accept()
        protocol.dataReceived(b"SSH-2.0\r\n")
        self.assertEqual(self.reason(result), "malformed status line 'SSH-2.0'")

    def test_statusLineSizeCapped(self) -> None:
        result = self.start(self.check())
        protocol, transport = self.accept()
        protocol.dataReceived(b"H" * (MAX_STATUS_BYTES + 1))
        self.assertEqual(
            self.reason(result), f"no status line in the first {MAX_STATUS_BYTES} bytes"
        )
        self.assertTrue(transport.disconnected)

    def test_interimHeadersCountTowardsCap(self) -> None:
        result = self.start(self.check())
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n")
        header = b"X: " + b"y" * 95 + b"\r\n"
        for _ in range(MAX_STATUS_BYTES // len(header)):
            protocol.dataReceived(header)
        self.assertNoResult(result)
        protocol.dataReceived(header)
        self.assertEqual(
            self.reason(result), f"no status line in the first {MAX_STATUS_BYTES} bytes"
        )

    def test_closedBeforeStatusLine(self) -> None:
        result = self.start(self.check())
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 2")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.reason(result), "connection closed before status line")
        self.assertNoTimers()

    def test_lostBeforeStatusLine(self) -> None:
        result = self.start(self.check())
        protocol, _ = self.accept()
        protocol.connectionLost(Failure(ConnectionLost("reset by peer")))
        self.assertTrue(
            self.reason(result).startswith("connection lost before status line: ")
        )

    def test_responseTimeout(self) -> None:
        result = self.start(self.check(timeout=1.0))
        protocol, transport = self.accept()
        self.reactor.advance(1.0)
        self.assertEqual(self.reason(result), "timeout after 1s")
        self.assertTrue(transport.disconnected)
        # Whatever arrives afterwards is ignored.
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_cancelWhileConnectedAborts(self) -> None:
        result = self.start(self.check())
        _, transport = self.accept()
        result.cancel()
        self.failureResultOf(result)
        self.assertTrue(transport.disconnected)
        self.assertNoTimers()

    def test_connectionRefused(self) -> None:
        result = self.start(self.check())
        self.refuse()
        self.assertEqual(self.reason(result), "connection refused")


class HostHeaderTests(SynchronousTestCase):
    def test_hosts(self) -> None:
        cases = {
            "tcp:host=127.0.0.1:port=80": "127.0.0.1",
            "tcp:host=127.0.0.1:port=8080": "127.0.0.1:8080",
            "tcp:127.0.0.1:8080": "127.0.0.1:8080",
            "tcp:8080:host=localhost": "localhost:8080",
            "tcp6:host=\\:\\:1:port=8080": "[::1]:8080",
            "tls:localhost:443": "localhost",
            "ssl:host=app.example.test:port=8443": "app.example.test:8443",
            "unix:/run/app.sock": "localhost",
            "unix:path=/run/app.sock": "localhost",
        }
        for address, expected in cases.items():
            self.assertEqual(hostHeader(address), expected, address)

    def test_configRejectsBadHost(self) -> None:
        data = {
            "pools": {
                "web": {
                    "servers": [{"name": "a", "address": "127.0.0.1:8080"}],
                    "health": {"type": "http", "host": "a b"},
                }
            },
            "listeners": {"front": {"bind": "tcp:8000", "pool": "web"}},
        }
        with self.assertRaises(ConfigError) as raised:
            parse(data, "lb.toml")
        self.assertIn("pools.web.health.host: expected a host name", str(raised.exception))


class BannerCheckTests(CheckTestMixin, SynchronousTestCase):
    def check(self, expect: bytes = b"* OK", send: bytes = b"a1 LOGOUT\r\n") -> BannerCheck:
        return BannerCheck(self.reactor, HealthConfig(type="banner", expect=expect, send=send))

    def test_expectedBanner(self) -> None:
        result = self.start(self.check())
        protocol, transport = self.accept()
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        self.successResultOf(result)
        self.assertEqual(transport.value(), b"a1 LOGOUT\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertNoTimers()

    def test_nothingSentWithoutSend(self) -> None:
        result = self.start(self.check(expect=b"+OK", send=b""))
        protocol, transport = self.accept()
        protocol.dataReceived(b"+OK POP3 ready\r\n")
        self.successResultOf(result)
        self.assertEqual(transport.value(), b"")

    def test_bannerInPieces(self) -> None:
        result = self.start(self.check())
        protocol, _ = self.accept()
        for piece in (b"*", b" O", b"K hi", b"\r\n"):
            self.assertNoResult(result)
            protocol.dataReceived(piece)
        self.successResultOf(result)

    def test_unexpectedBanner(self) -> None:
        result = self.start(self.check())
        protocol, transport = self.accept()
        protocol.dataReceived(b"* BYE too busy\r\n")
        self.assertEqual(self.reason(result), "unexpected banner '* BYE too busy'")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnected)

    def test_mismatchDetectedBeforeEndOfLine(self) -> None:
        result = self.start(self.check())
        protocol, _ = self.accept()
        protocol.dataReceived(b"SSH-2.0-")
        self.assertEqual(self.reason(result), "unexpected banner 'SSH-2.0-'")

    def test_longBannerReasonTruncated(self) -> None:
        result = self.start(self.check())
        protocol, _ = self.accept()
        protocol.dataReceived(b"x" * 100 + b"\r\n")
        self.assertEqual(self.reason(result), "unexpected banner '" + "x" * 40 + "'...")

    def test_bannerSizeCapped(self) -> None:
        result = self.start(self.check())
        protocol, transport = self.accept()
        protocol.dataReceived(b"* OK " + b"x" * MAX_BANNER_BYTES)
        self.assertEqual(self.reason(result), f"banner longer than {MAX_BANNER_BYTES} bytes")
        self.assertTrue(transport.disconnected)

    def test_closedBeforeBanner(self) -> None:
        result = self.start(self.check())
        protocol, _ = self.accept()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.reason(result), "connection closed before banner")

    def test_bannerTimeout(self) -> None:
        result = self.start(self.check())
        protocol, transport = self.accept()
        protocol.dataReceived(b"* O")
        self.reactor.advance(1.0)
        self.assertEqual(self.reason(result), "timeout after 1s")
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")
