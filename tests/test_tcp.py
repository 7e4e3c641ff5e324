"""
Tests for lbproxy.tcp.front, the L4 TCP front, in memory: admission (maxconn),
PROXY header acceptance, placement on servers, sending PROXY headers, and
the one log line per session.
"""

import ipaddress

from OpenSSL import SSL

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from memoryconnections import acceptClient, completeAttempt, refuseAttempt
from lbproxy.config import PoolConfig
from lbproxy.core.format import SESSION_LINE
from lbproxy.tcp.config import TCPListenerConfig
from lbproxy.config.tls import CertificateConfig, ListenerTLSConfig
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.core.proxyprotocol import buildV1, buildV2
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin
from lbproxy.core.format import formatAddress, formatErrorCode, formatSeconds
from lbproxy.service import wrapFront
from lbproxy.tcp.front import TCPProxyFactory, TCPProxyProtocol

from test_relay import FakeTCPTransport

DONE = Failure(ConnectionDone())
PEER = IPv4Address("TCP", "192.0.2.7", 40000)
HOST = IPv4Address("TCP", "198.51.100.1", 8080)


def makeListener(**kwargs):
    kwargs.setdefault("name", "web")
    kwargs.setdefault("bind", "tcp:8080")
    kwargs.setdefault("pool", "web")
    return TCPListenerConfig(**kwargs)


def makePool(count=2, sendProxy="none", retries=2, maxconn=0, queueTimeout=5.0):
    servers = [
        Server(f"s{i}", f"tcp:host=127.0.0.1:port={8001 + i}", maxconn=maxconn)
        for i in range(count)
    ]
    options = PoolConfig(
        name="web",
        servers=(),
        retries=retries,
        connectTimeout=5.0,
        queueTimeout=queueTimeout,
        sendProxy=sendProxy,
    )
    return Pool("web", servers, SmoothWeightedRoundRobin(), options)


class TCPFrontTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.logs = []

    def makeFactory(self, listener=None, pool=None):
        self.pool = pool or makePool()
        self.factory = TCPProxyFactory(listener or makeListener(), self.pool, self.reactor)
        return self.factory

    def accept(self, peer=PEER):
        transport = FakeTCPTransport()
        return acceptClient(self.factory, transport, peer, HOST), transport

    def succeed(self, index=-1):
        return completeAttempt(self.reactor, FakeTCPTransport(), index)

    def refuse(self, index=-1):
        refuseAttempt(self.reactor, index)

    def sessionLines(self, events):
        return [
            formatEvent(e)
            for e in events
            if e.get("log_namespace") == "lbproxy.tcp.front.TCPProxyProtocol"
        ]

    def test_interfaces(self):
        self.makeFactory()
        protocol, transport = self.accept()
        self.assertIsInstance(protocol, TCPProxyProtocol)
        verifyObject(IHalfCloseableProtocol, protocol)

    def test_relaysThroughServer(self):
        """
        The client is paused until the backend is connected; then each
        transport is the other's producer and bytes flow both ways.
        """
        self.makeFactory()
        protocol, client = self.accept()
        self.assertEqual(client.producerState, "paused")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 8001))
        leg, backend = self.succeed()
        self.assertEqual(client.producerState, "producing")
        self.assertIs(client.producer, backend)
        self.assertTrue(client.streaming)
        self.assertIs(backend.producer, client)
        self.assertTrue(backend.streaming)
        self.assertTrue(client.noDelay and backend.noDelay)
        protocol.dataReceived(b"ping")
        leg.dataReceived(b"pong!")
        self.assertEqual(backend.value(), b"ping")
        self.assertEqual(client.value(), b"pong!")
        self.assertEqual(self.pool.servers[0].active, 1)

    def test_sessionLogLine(self):
        """
        One line per finished session with client, listener, server,
        bytes, connect time, duration and how it ended.
        """
        self.makeFactory()
        with capturedLogs() as events:
            protocol, client = self.accept()
            self.reactor.advance(0.0004)
            leg, backend = self.succeed()
            protocol.dataReceived(b"x" * 78)
            leg.dataReceived(b"y" * 612)
            self.reactor.advance(0.0116)
            protocol.readConnectionLost()
            leg.readConnectionLost()
            leg.writeConnectionLost()
            protocol.writeConnectionLost()
            self.assertEqual(self.sessionLines(events), [])
            protocol.connectionLost(DONE)
            leg.connectionLost(DONE)
        (line,) = self.sessionLines(events)
        self.assertEqual(
            line,
            "tcp 192.0.2.7:40000 web -> web/s0 in=78 out=612 connect=0.4ms "
            "duration=12.0ms end=client-closed",
        )
        (event,) = [e for e in events if e.get("end")]
        # The line is written by the front; its fields are in the event.
        self.assertEqual(event["log_format"], SESSION_LINE)
        self.assertEqual(event["line"], line)
        self.assertEqual(event["clientHost"], "192.0.2.7")
        self.assertEqual(event["clientPort"], 40000)
        self.assertEqual(event["listener"], "web")
        self.assertEqual(event["pool"], "web")
        self.assertEqual(event["bytesIn"], 78)
        self.assertEqual(event["bytesOut"], 612)
        self.assertAlmostEqual(event["connectSeconds"], 0.0004)
        self.assertEqual(self.pool.servers[0].active, 0)
        self.assertEqual(self.factory.listener.sessions, set())

    def test_halfCloseThroughFront(self):
        self.makeFactory()
        protocol, client = self.accept()
        leg, backend = self.succeed()
        protocol.readConnectionLost()
        self.assertTrue(backend.writeDisconnecting)
        leg.dataReceived(b"reply")
        self.assertEqual(client.value(), b"reply")
        leg.readConnectionLost()
        self.assertTrue(client.writeDisconnecting)

    def test_retryOnAnotherServer(self):
        self.makeFactory()
        with capturedLogs() as events:
            protocol, client = self.accept()
            self.refuse()
            self.assertEqual(self.reactor.tcpClients[1][1], 8002)
            leg, backend = self.succeed()
            protocol.connectionLost(DONE)
            leg.connectionLost(DONE)
        (line,) = self.sessionLines(events)
        self.assertIn("-> web/s1 ", line)
        self.assertIn("connect to web/s0 failed", "\n".join(
            formatEvent(e) for e in events
        ))
        self.assertEqual(self.pool.servers[0].connectFailures, 1)

    def test_noServer(self):
        """
        With no server available the client is closed cleanly and the
        session logged as no-server.
        """
        self.makeFactory()
        for server in self.pool.servers:
            server.setState(ServerState.DOWN)
        with capturedLogs() as events:
            protocol, client = self.accept()
            self.assertTrue(client.disconnecting)
            self.assertFalse(client.disconnected)
            protocol.connectionLost(DONE)
        (line,) = self.sessionLines(events)
        self.assertIn("web -> web/- in=0 out=0 connect=- ", line)
        self.assertIn("end=no-server", line)
        self.assertEqual(self.factory.listener.sessions, set())

    def test_connectFailed(self):
        self.makeFactory(pool=makePool(count=1, retries=1))
        with capturedLogs() as events:
            protocol, client = self.accept()
            self.refuse(0)
            self.refuse(1)
            self.assertTrue(client.disconnecting)
            protocol.connectionLost(DONE)
        (line,) = self.sessionLines(events)
        self.assertIn("end=connect-failed (2 connection attempts", line)
        self.assertEqual(self.pool.servers[0].active, 0)

    def test_clientLeavesWhileConnecting(self):
        """
        The connection attempt is cancelled and the server released.
        """
        self.makeFactory()
        with capturedLogs() as events:
            protocol, client = self.accept()
            self.assertEqual(self.pool.servers[0].active, 1)
            protocol.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.pool.servers[0].active, 0)
        self.assertEqual(self.pool.servers[0].connectFailures, 0)
        (line,) = self.sessionLines(events)
        self.assertIn("-> web/- ", line)
        self.assertIn("end=client-reset", line)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_listenerMaxconn(self):
        """
        Connections over the listener's maxconn are closed at once and
        logged; a finished session makes room.
        """
        self.makeFactory(listener=makeListener(maxconn=2))
        with capturedLogs() as events:
            first, firstTransport = self.accept()
            second, _ = self.accept()
            third, thirdTransport = self.accept()
            self.assertTrue(thirdTransport.disconnecting)
            third.connectionLost(DONE)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.factory.listener.counters.refused, 1)
        (line,) = self.sessionLines(events)
        self.assertIn("end=maxconn (listener at its maxconn of 2)", line)
        first.connectionLost(DONE)
        fourth, fourthTransport = self.accept()
        self.assertFalse(fourthTransport.disconnecting)
        self.assertEqual(len(self.reactor.tcpClients), 3)

    def test_serverMaxconn(self):
        """
        A server at its maxconn takes no more flows; with every server
        full and no queue there is no server for the flow.
        """
        self.makeFactory(pool=makePool(count=1, maxconn=1, queueTimeout=0))
        with capturedLogs() as events:
            first, _ = self.accept()
            self.succeed()
            second, secondTransport = self.accept()
            self.assertTrue(secondTransport.disconnecting)
            second.connectionLost(DONE)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        (line,) = self.sessionLines(events)
        self.assertIn("end=no-server", line)

    def test_queuedForAFullServer(self):
        """
        With a queue, a connection finding its server full waits for the
        slot the first one frees; its line says how long it waited. One
        that waits past timeouts.queue ends queue-timeout.
        """
        self.makeFactory(pool=makePool(count=1, maxconn=1, queueTimeout=3.0))
        with capturedLogs() as events:
            first, _ = self.accept()
            firstLeg, firstBackend = self.succeed()
            second, secondTransport = self.accept()
            self.reactor.advance(2.0)
            self.assertFalse(secondTransport.disconnecting)
            self.assertEqual(len(self.reactor.tcpClients), 1)
            first.connectionLost(DONE)
            firstLeg.connectionLost(DONE)
            self.reactor.advance(0)
            self.assertEqual(len(self.reactor.tcpClients), 2)
            secondLeg, _ = self.succeed()
            third, thirdTransport = self.accept()
            self.reactor.advance(3.0)
            self.assertTrue(thirdTransport.disconnecting)
            third.connectionLost(DONE)
            second.connectionLost(DONE)
            secondLeg.connectionLost(DONE)
        firstLine, timedOut, waited = self.sessionLines(events)
        self.assertNotIn("queue=", firstLine)
        self.assertIn("web -> web/s0 ", waited)
        self.assertIn(" queue=2.000s duration=", waited)
        self.assertIn("web -> web/- ", timedOut)
        self.assertIn(" queue=3.000s duration=", timedOut)
        self.assertIn("end=queue-timeout (every server of pool web stayed at its maxconn for 3s", timedOut)

    def test_idleTimeout(self):
        self.makeFactory(listener=makeListener(idleTimeout=30.0))
        with capturedLogs() as events:
            protocol, client = self.accept()
            leg, backend = self.succeed()
            self.reactor.advance(30)
            self.assertTrue(client.disconnected)
            self.assertTrue(backend.disconnected)
            protocol.connectionLost(Failure(ConnectionLost()))
            leg.connectionLost(Failure(ConnectionLost()))
        (line,) = self.sessionLines(events)
        self.assertIn("end=idle-timeout", line)

    def tlsListener(self):
        tls = ListenerTLSConfig(certificates=(CertificateConfig(cert="a.pem", key="a.key"),))
        return makeListener(tls=tls)

    def test_tlsPlacedAfterHandshake(self):
        """
        Behind TLS termination no server is connected until the client's
        handshake succeeds, and the TLS layer is not paused before: it
        must read the handshake.
        """
        self.makeFactory(listener=self.tlsListener())
        protocol, client = self.accept()
        verifyObject(IHandshakeListener, protocol)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(client.producerState, "producing")
        protocol.handshakeCompleted()
        self.assertEqual(client.producerState, "paused")
        leg, backend = self.succeed()
        protocol.dataReceived(b"ping")
        self.assertEqual(backend.value(), b"ping")

    def test_tlsHandshakeFailed(self):
        """
        A client whose handshake fails costs no server connection and gets
        one log line saying so.
        """
        self.makeFactory(listener=self.tlsListener())
        with capturedLogs() as events:
            protocol, client = self.accept()
            protocol.connectionLost(Failure(SSL.Error([("SSL routines", "", "no shared cipher")])))
        self.assertEqual(self.reactor.tcpClients, [])
        (line,) = self.sessionLines(events)
        self.assertIn("end=tls-handshake-failed (no shared cipher)", line)
        self.assertEqual(self.factory.listener.sessions, set())

    def test_sendProxyV1(self):
        self.makeFactory(pool=makePool(sendProxy="v1"))
        protocol, client = self.accept()
        protocol.dataReceived(b"held")
        leg, backend = self.succeed()
        self.assertEqual(
            backend.value(),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 8080\r\nheld",
        )

    def test_sendProxyV2(self):
        self.makeFactory(pool=makePool(sendProxy="v2"))
        protocol, client = self.accept()
        leg, backend = self.succeed()
        self.assertEqual(backend.value(), buildV2(PEER, HOST))

    def trustedListener(self, **kwargs):
        return makeListener(acceptProxy=(ipaddress.ip_network("192.0.2.0/24"),), **kwargs)

    def makeTrusted(self, pool=None):
        """
        A listener trusting PROXY headers from PEER, served as the service
        serves it: the shared header reader in front of the TCP front.
        """
        factory = self.makeFactory(listener=self.trustedListener(), pool=pool)
        self.factory = wrapFront(factory.listener, factory, self.reactor)
        return factory

    def test_acceptProxyV1FromTrusted(self):
        """
        A trusted peer's PROXY header gives the flow's client and local
        addresses; bytes after it are relayed, the header is not.
        """
        self.makeTrusted(pool=makePool(sendProxy="v1"))
        with capturedLogs() as events:
            reader, client = self.accept()
            self.assertEqual(client.producerState, "producing")
            self.assertEqual(self.reactor.tcpClients, [])
            reader.dataReceived(b"PROXY TCP4 203.0.113.5 198.51.100.9 5555 ")
            self.assertEqual(self.reactor.tcpClients, [])
            reader.dataReceived(b"443\r\nGET /")
            protocol = reader.wrapped
            self.assertEqual(client.producerState, "paused")
            self.assertEqual(protocol.client, IPv4Address("TCP", "203.0.113.5", 5555))
            self.assertEqual(protocol.local, IPv4Address("TCP", "198.51.100.9", 443))
            leg, backend = self.succeed()
            self.assertEqual(
                backend.value(),
                b"PROXY TCP4 203.0.113.5 198.51.100.9 5555 443\r\nGET /",
            )
            reader.connectionLost(DONE)
            leg.connectionLost(DONE)
        (line,) = self.sessionLines(events)
        self.assertTrue(line.startswith("tcp 203.0.113.5:5555 web -> web/s0 in=5 "))
        (event,) = [e for e in events if e.get("end")]
        self.assertEqual(event["peer"], "192.0.2.7:40000")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_acceptProxyV2FromTrusted(self):
        self.makeTrusted()
        reader, client = self.accept()
        source = IPv4Address("TCP", "203.0.113.5", 5555)
        reader.dataReceived(buildV2(source, HOST) + b"data")
        self.assertEqual(reader.wrapped.client, source)
        leg, backend = self.succeed()
        self.assertEqual(backend.value(), b"data")

    def test_acceptProxyLocalKeepsRealAddresses(self):
        self.makeTrusted()
        reader, client = self.accept()
        reader.dataReceived(b"PROXY UNKNOWN\r\n")
        self.assertEqual(reader.wrapped.client, PEER)
        self.assertEqual(reader.wrapped.local, HOST)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_untrustedHeaderPassesThrough(self):
        """
        A peer outside accept_proxy is not parsed: its PROXY header is just
        bytes for the backend.
        """
        factory = self.makeFactory(
            listener=makeListener(acceptProxy=(ipaddress.ip_network("10.0.0.0/8"),))
        )
        self.factory = wrapFront(factory.listener, factory, self.reactor)
        protocol, client = self.accept()
        self.assertIsInstance(protocol, TCPProxyProtocol)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        line = buildV1(IPv4Address("TCP", "1.2.3.4", 1), HOST)
        protocol.dataReceived(line)
        leg, backend = self.succeed()
        self.assertEqual(backend.value(), line)
        self.assertEqual(protocol.client, PEER)

    def test_malformedHeaderFromTrusted(self):
        """
        A bad header closes the connection with the reader's one line; the
        front never sees the connection, and the listener counts an error.
        """
        front = self.makeTrusted()
        with capturedLogs() as events:
            reader, client = self.accept()
            reader.dataReceived(b"GET / HTTP/1.1\r\n")
            self.assertTrue(client.disconnecting)
            reader.connectionLost(DONE)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.sessionLines(events), [])
        self.assertIn(
            "web: closed the connection of trusted proxy 192.0.2.7:40000: not a PROXY protocol header",
            [formatEvent(e) for e in events],
        )
        self.assertEqual(front.listener.sessions, set())
        self.assertEqual(front.listener.counters.errors, 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_missingHeaderTimesOut(self):
        self.makeTrusted()
        with capturedLogs() as events:
            reader, client = self.accept()
            reader.dataReceived(b"PROXY TCP4 ")
            self.reactor.advance(4.9)
            self.assertFalse(client.disconnecting)
            self.reactor.advance(0.1)
            self.assertTrue(client.disconnecting)
            reader.connectionLost(DONE)
        self.assertIn(
            "web: closed the connection of trusted proxy 192.0.2.7:40000: no complete PROXY header within 5s",
            [formatEvent(e) for e in events],
        )

    def test_closedBeforeHeader(self):
        """
        A trusted peer that connects and leaves without a byte (a TCP
        health check) is not logged: nothing was wrong.
        """
        front = self.makeTrusted()
        with capturedLogs() as events:
            reader, client = self.accept()
            reader.connectionLost(DONE)
        self.assertEqual([e for e in events if e.get("log_level").name in ("warn", "error")], [])
        self.assertEqual(front.listener.sessions, set())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_partialHeaderThenClose(self):
        self.makeTrusted()
        with capturedLogs() as events:
            reader, client = self.accept()
            reader.dataReceived(b"PROXY TCP4 1.2.3.4")
            reader.connectionLost(DONE)
        self.assertIn(
            "web: closed the connection of trusted proxy 192.0.2.7:40000: "
            "connection closed before a complete PROXY header",
            [formatEvent(e) for e in events],
        )

    def test_formatting(self):
        self.assertEqual(formatAddress(IPv4Address("TCP", "10.0.0.1", 80)), "10.0.0.1:80")
        from twisted.internet.address import IPv6Address, UNIXAddress

        self.assertEqual(formatAddress(IPv6Address("TCP", "::1", 80)), "[::1]:80")
        self.assertEqual(formatAddress(UNIXAddress("/run/a.sock")), "/run/a.sock")
        self.assertEqual(formatSeconds(None), "-")
        self.assertEqual(formatSeconds(0.0123), "12.3ms")
        self.assertEqual(formatSeconds(2.5), "2.500s")
        from h2.errors import ErrorCodes

        self.assertEqual(formatErrorCode(ErrorCodes.ENHANCE_YOUR_CALM), "ENHANCE_YOUR_CALM")
        self.assertEqual(formatErrorCode(11), "ENHANCE_YOUR_CALM")
        self.assertEqual(formatErrorCode(0x77), "0x77")
