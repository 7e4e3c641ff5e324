"""
Health checks against real servers on 127.0.0.1, with the real reactor.

Each fake server records what it received and fires a Deferred when its
connection closes, so the tests also see that the checks close theirs.
"""

from __future__ import annotations

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from lbproxy.config import HealthConfig, PoolConfig, ServerConfig
from lbproxy.health.checks import BannerCheck, HealthCheckFailed, HTTPCheck, TCPCheck
from lbproxy.health.monitor import HealthMonitor
from lbproxy.core.pool import Server, ServerState
from lbproxy.core.model import buildPool
from support import freePort

pytestmark = pytest.mark.integration


class ScriptedServer(Protocol):
    """
    Sends C{factory.greeting} on connect, answers C{factory.response} once
    a request head arrived, records what it received, and leaves closing to
    the client.
    """

    def connectionMade(self) -> None:
        self.received = b""
        self.answered = False
        self.factory.connections.append(self)
        self.closed = Deferred()
        if self.factory.greeting:
            self.transport.write(self.factory.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.factory.response and not self.answered and b"\r\n\r\n" in self.received:
            self.answered = True
            self.transport.write(self.factory.response)

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)


class ScriptedFactory(Factory):
    protocol = ScriptedServer
    noisy = False

    def __init__(self, greeting: bytes = b"", response: bytes = b"") -> None:
        self.greeting = greeting
        self.response = response
        self.connections: list[ScriptedServer] = []

    def allClosed(self) -> Deferred:
        return DeferredList([c.closed for c in self.connections])


class LoopbackTestCase(TestCase):
    def listen(self, factory: Factory) -> str:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"tcp:host=127.0.0.1:port={port.getHost().port}"

    async def failureReason(self, result: Deferred) -> str:
        with self.assertRaises(HealthCheckFailed) as raised:
            await result
        return str(raised.exception)


class TCPCheckLoopbackTests(LoopbackTestCase):
    async def test_listeningPort(self) -> None:
        factory = ScriptedFactory()
        address = self.listen(factory)
        check = TCPCheck(reactor, HealthConfig(timeout=5.0))
        self.assertIsNone(await check.check(Server("a", address)))
        await factory.allClosed()
        self.assertEqual(len(factory.connections), 1)

    async def test_closedPort(self) -> None:
        address = f"tcp:host=127.0.0.1:port={freePort()}"
        check = TCPCheck(reactor, HealthConfig(timeout=5.0))
        reason = await self.failureReason(check.check(Server("a", address)))
        self.assertEqual(reason, "connection refused")


class HTTPCheckLoopbackTests(LoopbackTestCase):
    def check(self, **kwargs) -> HTTPCheck:
        return HTTPCheck(reactor, HealthConfig(type="http", timeout=5.0, **kwargs))

    async def test_status200(self) -> None:
        factory = ScriptedFactory(
            response=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        address = self.listen(factory)
        self.assertIsNone(await self.check(path="/health").check(Server("a", address)))
        await factory.allClosed()
        port = address.rsplit("=", 1)[1]
        self.assertEqual(
            factory.connections[0].received,
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode()
            + b"\r\nConnection: close\r\nUser-Agent: lbproxy-health\r\n\r\n",
        )

    async def test_status503(self) -> None:
        factory = ScriptedFactory(
            response=b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
        )
        address = self.listen(factory)
        reason = await self.failureReason(self.check().check(Server("a", address)))
        self.assertEqual(reason, "status 503")
        await factory.allClosed()

    async def test_silentServerTimesOut(self) -> None:
        factory = ScriptedFactory()
        address = self.listen(factory)
        check = HTTPCheck(reactor, HealthConfig(type="http", timeout=0.2))
        reason = await self.failureReason(check.check(Server("a", address)))
        self.assertEqual(reason, "timeout after 0.2s")
        await factory.allClosed()

    async def test_notHTTP(self) -> None:
        factory = ScriptedFactory(greeting=b"SSH-2.0-OpenSSH_9.6\r\n")
        address = self.listen(factory)
        reason = await self.failureReason(self.check().check(Server("a", address)))
        self.assertEqual(reason, "malformed status line 'SSH-2.0-OpenSSH_9.6'")
        await factory.allClosed()


class BannerCheckLoopbackTests(LoopbackTestCase):
    def check(self) -> BannerCheck:
        return BannerCheck(
            reactor,
            HealthConfig(type="banner", timeout=5.0, expect=b"* OK", send=b"a1 LOGOUT\r\n"),
        )

    async def test_imapGreeting(self) -> None:
        factory = ScriptedFactory(greeting=b"* OK ready\r\n")
        address = self.listen(factory)
        self.assertIsNone(await self.check().check(Server("a", address)))
        await factory.allClosed()
        self.assertEqual(factory.connections[0].received, b"a1 LOGOUT\r\n")

    async def test_garbage(self) -> None:
        factory = ScriptedFactory(greeting=b"\x00\x01garbage\r\n")
        address = self.listen(factory)
        reason = await self.failureReason(self.check().check(Server("a", address)))
        self.assertEqual(reason, "unexpected banner '\\x00\\x01garbage'")
        await factory.allClosed()
        self.assertEqual(factory.connections[0].received, b"")


class MonitorLoopbackTests(LoopbackTestCase):
    async def test_deadServerGoesDownLiveStaysUp(self) -> None:
        live = self.listen(ScriptedFactory())
        dead = f"tcp:host=127.0.0.1:port={freePort()}"
        pool = buildPool(
            PoolConfig(
                name="web",
                servers=(ServerConfig("live", live), ServerConfig("dead", dead)),
                health=HealthConfig(interval=0.05, timeout=0.05, fall=2, rise=1),
            )
        )
        down = Deferred()
        pool.addObserver(lambda server, old, new, reason: down.callback((server.name, new, reason)))
        monitor = HealthMonitor(pool, reactor=reactor)
        monitor.startService()
        self.addCleanup(monitor.stopService)
        self.assertEqual(
            await down,
            ("dead", ServerState.DOWN, "2 checks failed, last: connection refused"),
        )
        self.assertIs(pool.server("live").state, ServerState.UP)
