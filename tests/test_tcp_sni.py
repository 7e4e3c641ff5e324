"""
SNI passthrough on the TCP front, in memory: the pool chosen by the
server name of the client's ClientHello (exact, then wildcard, else the
listener's pool), the ClientHello relayed untouched, the fallback for
connections without a usable ClientHello, the hello timeout, and the
session log line's C{sni=}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from zope.interface.verify import verifyObject

from memoryconnections import acceptClient, completeAttempt
from lbproxy.config import PoolConfig
from lbproxy.tcp.config import SNIRouteConfig, TCPListenerConfig
from lbproxy.interfaces import ISelectionContext
from lbproxy.core.pool import Pool, Server
from lbproxy.core.proxyprotocol import buildV1
from lbproxy.selectors.keyhash import KeyHash
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin
from lbproxy.service import frontFactory, wrapFront
from lbproxy.tcp.front import TCPProxyFactory
from lbproxy.tcp.sni import SNIFlowContext, SNIRoutes

from test_clienthello import handshakeMessage, pyOpenSSLHello, pythonHello, records
from test_relay import FakeTCPTransport

DONE = Failure(ConnectionDone())
PEER = IPv4Address("TCP", "192.0.2.7", 40000)
HOST = IPv4Address("TCP", "198.51.100.1", 443)

PORTS = {"default": 8001, "api": 8101, "wild": 8201, "deep": 8301}


def makePool(name: str) -> Pool:
    server = Server(f"{name}1", f"tcp:host=127.0.0.1:port={PORTS[name]}")
    return Pool(name, [server], SmoothWeightedRoundRobin(), PoolConfig(name=name, servers=()))


def makeListener(**kwargs) -> TCPListenerConfig:
    kwargs.setdefault("name", "front")
    kwargs.setdefault("bind", "tcp:443")
    kwargs.setdefault("pool", "default")
    kwargs.setdefault(
        "routes",
        (
            SNIRouteConfig(pool="api", sni=("api.example.test", "api2.example.test")),
            SNIRouteConfig(pool="wild", sni=("*.example.test",)),
            SNIRouteConfig(pool="deep", sni=("*.eu.example.test",)),
            SNIRouteConfig(pool="default", sni=("api.example.test",)),
        ),
    )
    return TCPListenerConfig(**kwargs)


class SNIRoutesTests(SynchronousTestCase):
    def setUp(self):
        self.pools = {name: makePool(name) for name in PORTS}
        self.routes = SNIRoutes(makeListener().routes, self.pools)

    def poolName(self, name):
        pool = self.routes.poolFor(name)
        return None if pool is None else pool.name

    def test_exactFirst(self):
        self.assertEqual(self.poolName("api.example.test"), "api")
        self.assertEqual(self.poolName("api2.example.test"), "api")

    def test_wildcardAnyDepth(self):
        self.assertEqual(self.poolName("www.example.test"), "wild")
        self.assertEqual(self.poolName("a.b.example.test"), "wild")

    def test_mostSpecificWildcard(self):
        self.assertEqual(self.poolName("www.eu.example.test"), "deep")
        self.assertEqual(self.poolName("eu.example.test"), "wild")

    def test_noMatch(self):
        self.assertIsNone(self.poolName("example.test"))
        self.assertIsNone(self.poolName("other.test"))
        self.assertFalse(SNIRoutes((), self.pools))
        self.assertTrue(self.routes)


class SNIFrontTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.pools = {name: makePool(name) for name in PORTS}

    def makeFactory(self, **kwargs) -> TCPProxyFactory:
        listener = makeListener(**kwargs)
        self.factory = frontFactory(listener, self.pools, self.reactor)
        self.assertIsInstance(self.factory, TCPProxyFactory)
        return self.factory

    def accept(self, peer=PEER):
        transport = FakeTCPTransport()
        return acceptClient(self.factory, transport, peer, HOST), transport

    def connectedPort(self, index=-1) -> int:
        return self.reactor.tcpClients[index][1]

    def succeed(self, index=-1):
        return completeAttempt(self.reactor, FakeTCPTransport(), index)

    def sessionLines(self, events):
        return [
            formatEvent(e)
            for e in events
            if e.get("log_namespace") == "lbproxy.tcp.front.TCPProxyProtocol" and "end" in e
        ]

    def finish(self, protocol, leg):
        protocol.readConnectionLost()
        leg.readConnectionLost()
        leg.writeConnectionLost()
        protocol.writeConnectionLost()
        protocol.connectionLost(DONE)
        leg.connectionLost(DONE)

    def test_routedByServerName(self):
        """
        The ClientHello chooses the pool; the server receives it byte for
        byte, then everything after it.
        """
        self.makeFactory()
        hello = pyOpenSSLHello(b"api.example.test")
        with capturedLogs() as events:
            protocol, client = self.accept()
            self.assertEqual(client.producerState, "producing")
            self.assertEqual(self.reactor.tcpClients, [])
            protocol.dataReceived(hello)
            self.assertEqual(client.producerState, "paused")
            self.assertEqual(self.connectedPort(), PORTS["api"])
            leg, backend = self.succeed()
            self.assertEqual(backend.value(), hello)
            protocol.dataReceived(b"\x17\x03\x03\x00\x01z")
            leg.dataReceived(b"server hello")
            self.assertEqual(backend.value(), hello + b"\x17\x03\x03\x00\x01z")
            self.assertEqual(client.value(), b"server hello")
            self.finish(protocol, leg)
        (line,) = self.sessionLines(events)
        self.assertIn("front -> api/api1 sni=api.example.test in=", line)
        self.assertTrue(line.endswith("end=client-closed"), line)
        (event,) = [e for e in events if e.get("end")]
        self.assertEqual(event["sni"], "api.example.test")
        self.assertEqual(event["pool"], "api")
        self.assertEqual(event["bytesIn"], len(hello) + 6)

    def test_fragmentedHello(self):
        self.makeFactory()
        data = records(handshakeMessage(pythonHello("x.eu.example.test")), [10, 100])
        protocol, client = self.accept()
        for index in range(0, len(data), 7):
            protocol.dataReceived(data[index : index + 7])
        self.assertEqual(self.connectedPort(), PORTS["deep"])
        leg, backend = self.succeed()
        self.assertEqual(backend.value(), data)

    def test_unknownNameToListenerPool(self):
        self.makeFactory()
        with capturedLogs() as events:
            protocol, client = self.accept()
            protocol.dataReceived(pyOpenSSLHello(b"elsewhere.test"))
            self.assertEqual(self.connectedPort(), PORTS["default"])
            leg, backend = self.succeed()
            self.finish(protocol, leg)
        (line,) = self.sessionLines(events)
        self.assertIn("front -> default/default1 sni=elsewhere.test in=", line)

    def test_noServerNameDefault(self):
        self.makeFactory()
        hello = pyOpenSSLHello(None)
        with capturedLogs() as events:
            protocol, client = self.accept()
            protocol.dataReceived(hello)
            self.assertEqual(self.connectedPort(), PORTS["default"])
            leg, backend = self.succeed()
            self.assertEqual(backend.value(), hello)
            self.finish(protocol, leg)
        (line,) = self.sessionLines(events)
        self.assertIn("front -> default/default1 sni=- in=", line)

    def test_noServerNameRejected(self):
        self.makeFactory(sniFallback="reject")
        with capturedLogs() as events:
            protocol, client = self.accept()
            protocol.dataReceived(pyOpenSSLHello(None))
            self.assertTrue(client.disconnecting)
            self.assertEqual(self.reactor.tcpClients, [])
            protocol.connectionLost(DONE)
        (line,) = self.sessionLines(events)
        self.assertIn("front -> default/- sni=- in=0 out=0", line)
        self.assertTrue(line.endswith("end=no-sni (ClientHello without a server name)"), line)
        self.assertEqual(self.factory.listener.sessions, set())

    def test_notTLSDefault(self):
        """
        Another protocol goes to the listener's pool, its bytes untouched.
        """
        self.makeFactory()
        protocol, client = self.accept()
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertEqual(self.connectedPort(), PORTS["default"])
        protocol.dataReceived(b"Host: a\r\n\r\n")
        leg, backend = self.succeed()
        self.assertEqual(backend.value(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

    def test_notTLSRejected(self):
        self.makeFactory(sniFallback="reject")
        with capturedLogs() as events:
            protocol, client = self.accept()
            protocol.dataReceived(b"GET / HTTP/1.1\r\n")
            self.assertTrue(client.disconnecting)
            protocol.connectionLost(DONE)
        (line,) = self.sessionLines(events)
        self.assertTrue(
            line.endswith("end=bad-clienthello (not TLS: starts with 'GET / HT')"), line
        )

    def test_malformedRejected(self):
        self.makeFactory(sniFallback="reject")
        with capturedLogs() as events:
            protocol, client = self.accept()
            protocol.dataReceived(b"\x16\x03\x01\x00\x00")
            protocol.connectionLost(DONE)
        (line,) = self.sessionLines(events)
        self.assertIn("end=bad-clienthello (malformed record: empty handshake fragment)", line)

    def test_helloTimeoutDefault(self):
        """
        A client that sends nothing (a server-speaks-first protocol) is
        placed on the listener's pool after the hello timeout.
        """
        self.makeFactory(helloTimeout=3.0)
        protocol, client = self.accept()
        self.reactor.advance(2.9)
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.connectedPort(), PORTS["default"])
        leg, backend = self.succeed()
        leg.dataReceived(b"SSH-2.0-server\r\n")
        self.assertEqual(client.value(), b"SSH-2.0-server\r\n")

    def test_helloTimeoutRejected(self):
        self.makeFactory(helloTimeout=3.0, sniFallback="reject")
        hello = pyOpenSSLHello()
        with capturedLogs() as events:
            protocol, client = self.accept()
            protocol.dataReceived(hello[:20])
            self.reactor.advance(3.0)
            self.assertTrue(client.disconnecting)
            protocol.connectionLost(DONE)
        (line,) = self.sessionLines(events)
        self.assertTrue(
            line.endswith("end=bad-clienthello (no complete ClientHello within 3s (20 bytes received))"),
            line,
        )
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_clientLeavesDuringHello(self):
        self.makeFactory()
        with capturedLogs() as events:
            protocol, client = self.accept()
            protocol.readConnectionLost()
            protocol.connectionLost(DONE)
            protocol, client = self.accept()
            protocol.dataReceived(b"\x16\x03\x01")
            protocol.connectionLost(DONE)
        first, second = self.sessionLines(events)
        self.assertTrue(first.endswith("end=client-closed (before sending a ClientHello)"), first)
        self.assertTrue(
            second.endswith("end=bad-clienthello (connection lost before a complete ClientHello (3 bytes))"),
            second,
        )
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.reactor.tcpClients, [])

    def test_proxyHeaderThenHello(self):
        """
        A trusted proxy's PROXY header comes first; the ClientHello after
        it (in the same read) routes the flow.
        """
        import ipaddress

        front = self.makeFactory(acceptProxy=(ipaddress.ip_network("192.0.2.0/24"),))
        self.factory = wrapFront(front.listener, front, self.reactor)
        hello = pyOpenSSLHello(b"www.example.test")
        header = buildV1(IPv4Address("TCP", "203.0.113.9", 5555), HOST)
        protocol, client = self.accept()
        protocol.dataReceived(header + hello[:30])
        self.assertEqual(self.reactor.tcpClients, [])
        protocol.dataReceived(hello[30:])
        self.assertEqual(self.connectedPort(), PORTS["wild"])
        leg, backend = self.succeed()
        self.assertEqual(backend.value(), hello)
        self.assertEqual(protocol.wrapped.client.host, "203.0.113.9")

    def test_sendProxyOfRoutedPool(self):
        """
        The PROXY header sent to the server is the chosen pool's setting.
        """
        self.pools["api"] = Pool(
            "api",
            [Server("api1", f"tcp:host=127.0.0.1:port={PORTS['api']}")],
            SmoothWeightedRoundRobin(),
            PoolConfig(name="api", servers=(), sendProxy="v1"),
        )
        self.makeFactory()
        hello = pyOpenSSLHello(b"api.example.test")
        protocol, client = self.accept()
        protocol.dataReceived(hello)
        leg, backend = self.succeed()
        self.assertEqual(backend.value(), buildV1(PEER, HOST) + hello)

    def test_withoutRoutesNoHelloRead(self):
        """
        A listener without routes connects at once and logs no sni field.
        """
        self.makeFactory(routes=())
        with capturedLogs() as events:
            protocol, client = self.accept()
            self.assertEqual(self.connectedPort(), PORTS["default"])
            leg, backend = self.succeed()
            self.finish(protocol, leg)
        (line,) = self.sessionLines(events)
        self.assertNotIn("sni=", line)

    def test_hashOnServerName(self):
        """
        A pool hashing on key "sni" places every connection for one name on
        the same server.
        """
        servers = [Server(f"w{i}", f"tcp:host=127.0.0.1:port={8200 + i}") for i in range(4)]
        self.pools["wild"] = Pool(
            "wild", servers, KeyHash(key="sni"), PoolConfig(name="wild", servers=())
        )
        self.makeFactory()
        ports = {}
        for name in (b"a.example.test", b"b.example.test", b"c.example.test") * 3:
            protocol, client = self.accept()
            protocol.dataReceived(pyOpenSSLHello(name))
            ports.setdefault(name, set()).add(self.connectedPort())
        self.assertEqual([len(p) for p in ports.values()], [1, 1, 1])


class SNIFlowContextTests(SynchronousTestCase):
    def test_key(self):
        context = SNIFlowContext(PEER, HOST, "www.example.test")
        self.assertEqual(context.key("sni"), b"www.example.test")
        self.assertEqual(context.key("src"), bytes([192, 0, 2, 7]))
        self.assertIsNone(SNIFlowContext(PEER, HOST, None).key("sni"))
        self.assertTrue(verifyObject(ISelectionContext, context))
