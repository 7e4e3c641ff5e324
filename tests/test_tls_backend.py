"""
TLS to servers (L{lbproxy.tls.client}), in memory: loading the pool's
files, verification (chain and name), SNI, client certificates, minimum
version, and connections reported only after the handshake, through the
connector and the health checks.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from OpenSSL import SSL
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import ConnectionCompleter
from twisted.trial.unittest import SynchronousTestCase
from twisted.logger import Logger
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.config import HealthConfig, PoolConfig, ServerConfig, loadBytes
from lbproxy.config.tls import BackendTLSConfig
from lbproxy.core.connect import BackendConnector
from lbproxy.core.context import FlowContext
from lbproxy.errors import ConfigError, ConnectFailed, TLSHandshakeFailed
from lbproxy.health.checks import HealthCheckFailed, TCPCheck
from lbproxy.health.kinds import buildCheck
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.core.model import Balancer, buildPool
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin
from lbproxy.tls.client import (
    BackendTLS,
    HandshakeEndpoint,
    UnverifiedClientCreator,
    _HandshakeGate,
    endpointHost,
)
from twisted.internet.address import IPv4Address

from certs import CertificateAuthority

PORT = 8443


@implementer(IOpenSSLServerConnectionCreator)
class RecordingServerCreator:
    """
    A TLS server presenting one certificate; records the SNI name each
    client sent and the client certificates it verified.
    """

    def __init__(self, issued, clientCA=None, maxVersion=None) -> None:
        self.names: list = []
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate_chain_file(str(issued.chain))
        context.use_privatekey_file(str(issued.key))
        if maxVersion is not None:
            context.set_max_proto_version(maxVersion)
        if clientCA is not None:
            context.load_verify_locations(str(clientCA))
            context.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: bool(a[-1])
            )
        context.set_tlsext_servername_callback(
            lambda connection: self.names.append(connection.get_servername())
        )
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.context, None)


class Echo(Protocol):
    def dataReceived(self, data):
        self.factory.received.append(data)
        self.transport.write(data)


class Client(Protocol):
    def __init__(self):
        self.made = False
        self.received = b""
        self.lost = None

    def connectionMade(self):
        self.made = True
        self.transport.write(b"ping")

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


class TLSWorld:
    """
    One memory reactor with a TLS server listening on PORT.
    """

    def __init__(self, issued, **serverOptions) -> None:
        self.reactor = MemoryReactorClock()
        self.server = RecordingServerCreator(issued, **serverOptions)
        echo = Factory.forProtocol(Echo)
        echo.received = []
        self.echo = echo
        self.reactor.listenTCP(
            PORT, TLSMemoryBIOFactory(self.server, False, echo, clock=self.reactor)
        )

    def complete(self):
        pump = ConnectionCompleter(self.reactor).succeedOnce()
        if pump is not None:
            self.pump = pump
            self.flush()
        return pump

    def flush(self):
        for _ in range(4):
            self.pump.flush()


def results(deferred) -> list:
    found = []
    deferred.addBoth(found.append)
    return found


class CertificatesMixin:
    def setUp(self):
        directory = tempfile.mkdtemp(prefix="lbproxy-backendtls-")
        self.addCleanup(shutil.rmtree, directory, True)
        self._directory = directory
        self._made = 0
        self.ca = CertificateAuthority(os.path.join(directory, "ca"))
        self.other = CertificateAuthority(os.path.join(directory, "other"), name="other CA")
        self.good = self.ca.issue("web1.test", "127.0.0.1")
        self.source = "lb.toml"

    def mktemp(self) -> str:
        self._made += 1
        return os.path.join(self._directory, f"file{self._made}")

    def backendTLS(self, servers=(), **kwargs) -> BackendTLS:
        kwargs.setdefault("ca", str(self.ca.cert))
        tls = BackendTLS("web", BackendTLSConfig(**kwargs), self.source)
        tls.load(servers)
        return tls

    def connect(self, world, tls, server, factory=None):
        endpoint = tls.wrapEndpoint(
            TCP4ClientEndpoint(world.reactor, "127.0.0.1", PORT), server, world.reactor
        )
        found = results(endpoint.connect(factory or Factory.forProtocol(Client)))
        world.complete()
        return found


class LoadTests(CertificatesMixin, SynchronousTestCase):
    """
    Files are read once, with errors naming the pool's keys.
    """

    def assertConfigError(self, expected: str, **kwargs) -> ConfigError:
        servers = kwargs.pop("servers", ())
        error = self.assertRaises(ConfigError, self.backendTLS, servers, **kwargs)
        self.assertIn(expected, str(error))
        self.assertTrue(str(error).startswith("lb.toml: pools.web.tls."), str(error))
        return error

    def test_missingCA(self):
        missing = os.path.join(self.mktemp(), "nope.pem")
        self.assertConfigError(
            f"pools.web.tls.ca: cannot read {missing}: No such file or directory", ca=missing
        )

    def test_caWithoutCertificates(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("just text\n")
        self.assertConfigError("pools.web.tls.ca: expected PEM certificates", ca=path)

    def test_caGarbledPEM(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        self.assertConfigError("pools.web.tls.ca: expected PEM certificates", ca=path)

    def test_caBundleOfSeveral(self):
        bundle = self.mktemp()
        with open(bundle, "wb") as f:
            f.write(self.other.cert.read_bytes() + self.ca.cert.read_bytes())
        tls = self.backendTLS(ca=bundle)
        world = TLSWorld(self.good)
        found = self.connect(world, tls, Server("web1", "tcp:host=web1.test:port=8443"))
        self.assertIsInstance(found[0], Client)

    def test_clientKeyMismatch(self):
        client = self.ca.issue(client=True, commonName="lb")
        otherKey = self.ca.issue(client=True, commonName="other")
        self.assertConfigError(
            "pools.web.tls.key: the key in", cert=str(client.cert), key=str(otherKey.key)
        )

    def test_clientKeyNotPEM(self):
        client = self.ca.issue(client=True, commonName="lb")
        self.assertConfigError(
            "pools.web.tls.key: expected an unencrypted PEM private key",
            cert=str(client.cert),
            key=str(client.cert),
        )

    def test_expiredClientCertificate(self):
        client = self.ca.issue(client=True, commonName="lb", expired=True)
        self.assertConfigError(
            "pools.web.tls.cert: the certificate in", cert=str(client.cert), key=str(client.key)
        )

    def test_unixServerNeedsServerName(self):
        self.assertConfigError(
            "pools.web.tls.server_name: expected a server name: server s1",
            servers=[Server("s1", "unix:path=/run/app.sock")],
        )
        tls = self.backendTLS(
            [Server("s1", "unix:path=/run/app.sock")], serverName="app.internal"
        )
        self.assertEqual(tls.serverName(Server("s1", "unix:path=/run/app.sock")), "app.internal")

    def test_tlsEndpointRefused(self):
        error = self.assertRaises(
            ConfigError,
            self.backendTLS,
            [Server("s1", "tcp:web1.test:80"), Server("s2", "ssl:web2.test:443")],
        )
        self.assertEqual(error.key, "pools.web.servers[1].address")

    def test_endpointHost(self):
        self.assertEqual(endpointHost("tcp:host=web1.test:port=80"), "web1.test")
        self.assertEqual(endpointHost("tcp:web1.test:80"), "web1.test")
        self.assertEqual(endpointHost(r"tcp6:host=\:\:1:port=80"), "::1")
        self.assertIsNone(endpointHost("unix:path=/run/app.sock"))
        self.assertIsNone(endpointHost("unix:/run/app.sock"))

    def test_creatorsBuiltOncePerName(self):
        one = Server("web1", "tcp:web1.test:8443")
        two = Server("web2", "tcp:web1.test:9443")
        tls = self.backendTLS([one, two])
        self.assertIs(tls.creatorFor(one), tls.creatorFor(two))
        self.assertIs(tls.creatorFor(one), tls.creatorFor(one))

    def test_notLoaded(self):
        tls = BackendTLS("web", BackendTLSConfig(), self.source)
        self.assertRaises(RuntimeError, tls.creatorFor, Server("web1", "tcp:web1.test:80"))

    def test_reloadKeepsPreviousOnError(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(self.ca.cert.read_bytes())
        server = Server("web1", "tcp:web1.test:8443")
        tls = self.backendTLS([server], ca=path)
        before = tls.creatorFor(server)
        os.remove(path)
        self.assertRaises(ConfigError, tls.reload)
        self.assertIs(tls.creatorFor(server), before)
        with open(path, "wb") as f:
            f.write(self.ca.cert.read_bytes())
        tls.reload()
        self.assertIsNot(tls.creatorFor(server), before)

    def test_interfaces(self):
        server = Server("web1", "tcp:web1.test:8443")
        verified = self.backendTLS([server])
        unverified = BackendTLS("web", BackendTLSConfig(verify=False), self.source)
        unverified.load([server])
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, verified.creatorFor(server)))
        creator = unverified.creatorFor(server)
        self.assertIsInstance(creator, UnverifiedClientCreator)
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, creator))
        endpoint = verified.wrapEndpoint(
            TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", PORT), server, MemoryReactorClock()
        )
        self.assertIsInstance(endpoint, HandshakeEndpoint)
        self.assertTrue(verifyObject(IStreamClientEndpoint, endpoint))
        gate = _HandshakeGate(endpoint, Factory.forProtocol(Client), None, None)
        self.assertTrue(verifyObject(IHandshakeListener, gate))


class HandshakeTests(CertificatesMixin, SynchronousTestCase):
    """
    Connections through L{HandshakeEndpoint}: verified, named, reported
    after the handshake.
    """

    def test_verifiedAndNamed(self):
        world = TLSWorld(self.good)
        tls = self.backendTLS()
        found = self.connect(world, tls, Server("web1", "tcp:host=web1.test:port=8443"))
        client = found[0]
        self.assertIsInstance(client, Client)
        self.assertTrue(client.made)
        self.assertEqual(client.received, b"ping")
        self.assertEqual(world.server.names, [b"web1.test"])

    def test_serverNameOverridesHost(self):
        world = TLSWorld(self.ca.issue("app.internal"))
        tls = self.backendTLS(serverName="app.internal")
        found = self.connect(world, tls, Server("web1", "tcp:host=10.1.2.3:port=8443"))
        self.assertIsInstance(found[0], Client)
        self.assertEqual(world.server.names, [b"app.internal"])

    def test_ipAddressCheckedWithoutSNI(self):
        world = TLSWorld(self.good)
        tls = self.backendTLS()
        found = self.connect(world, tls, Server("web1", "tcp:host=127.0.0.1:port=8443"))
        self.assertIsInstance(found[0], Client)
        self.assertEqual(world.server.names, [None])

    def test_ipAddressNotInCertificate(self):
        world = TLSWorld(self.ca.issue("web1.test"))
        tls = self.backendTLS()
        found = self.connect(world, tls, Server("web1", "tcp:host=127.0.0.1:port=8443"))
        found[0].trap(TLSHandshakeFailed)
        self.assertEqual(
            str(found[0].value), "TLS: certificate verify failed (certificate is not valid for 127.0.0.1)"
        )

    def test_otherCA(self):
        world = TLSWorld(self.other.issue("web1.test"))
        tls = self.backendTLS()
        client = Client()
        found = self.connect(world, tls, Server("web1", "tcp:web1.test:8443"), Factory.forProtocol(lambda: client))
        found[0].trap(TLSHandshakeFailed)
        self.assertEqual(
            str(found[0].value),
            "TLS: certificate verify failed (unable to get local issuer certificate)",
        )
        self.assertFalse(client.made)
        self.assertEqual(world.echo.received, [])

    def test_wrongName(self):
        world = TLSWorld(self.ca.issue("other.test"))
        tls = self.backendTLS()
        found = self.connect(world, tls, Server("web1", "tcp:web1.test:8443"))
        found[0].trap(TLSHandshakeFailed)
        self.assertEqual(
            str(found[0].value), "TLS: certificate verify failed (certificate is not valid for web1.test)"
        )

    def test_expiredServerCertificate(self):
        world = TLSWorld(self.ca.issue("web1.test", expired=True))
        found = self.connect(world, self.backendTLS(), Server("web1", "tcp:web1.test:8443"))
        found[0].trap(TLSHandshakeFailed)
        self.assertEqual(str(found[0].value), "TLS: certificate verify failed (certificate has expired)")

    def test_verifyOff(self):
        world = TLSWorld(self.other.issue("elsewhere.test"))
        tls = BackendTLS("web", BackendTLSConfig(verify=False), self.source)
        tls.load()
        found = self.connect(world, tls, Server("web1", "tcp:web1.test:8443"))
        self.assertIsInstance(found[0], Client)
        self.assertEqual(found[0].received, b"ping")
        self.assertEqual(world.server.names, [b"web1.test"])

    def test_intermediateChain(self):
        ca = CertificateAuthority(os.path.join(self.mktemp(), "int"), intermediate=True)
        world = TLSWorld(ca.issue("web1.test"))
        tls = self.backendTLS(ca=str(ca.cert))
        found = self.connect(world, tls, Server("web1", "tcp:web1.test:8443"))
        self.assertIsInstance(found[0], Client)

    def test_clientCertificate(self):
        client = self.ca.issue(client=True, commonName="lbproxy")
        world = TLSWorld(self.good, clientCA=self.ca.cert)
        tls = self.backendTLS(cert=str(client.chain), key=str(client.key))
        found = self.connect(world, tls, Server("web1", "tcp:web1.test:8443"))
        self.assertIsInstance(found[0], Client)
        self.assertEqual(found[0].received, b"ping")

    def test_clientCertificateMissing(self):
        world = TLSWorld(self.good, clientCA=self.ca.cert, maxVersion=SSL.TLS1_2_VERSION)
        found = self.connect(world, self.backendTLS(), Server("web1", "tcp:web1.test:8443"))
        found[0].trap(TLSHandshakeFailed)
        self.assertTrue(str(found[0].value).startswith("TLS: "), str(found[0].value))

    def test_minimumVersion(self):
        world = TLSWorld(self.good, maxVersion=SSL.TLS1_2_VERSION)
        tls = self.backendTLS(minVersion="1.3")
        found = self.connect(world, tls, Server("web1", "tcp:web1.test:8443"))
        found[0].trap(TLSHandshakeFailed)
        self.assertIn("version", str(found[0].value))
        world = TLSWorld(self.good, maxVersion=SSL.TLS1_2_VERSION)
        found = self.connect(world, self.backendTLS(), Server("web1", "tcp:web1.test:8443"))
        self.assertIsInstance(found[0], Client)

    def test_cancelBeforeConnected(self):
        world = TLSWorld(self.good)
        endpoint = self.backendTLS().wrapEndpoint(
            TCP4ClientEndpoint(world.reactor, "127.0.0.1", PORT),
            Server("web1", "tcp:web1.test:8443"),
            world.reactor,
        )
        attempt = endpoint.connect(Factory.forProtocol(Client))
        found = results(attempt)
        attempt.cancel()
        # As the plain TCP endpoint reports it.
        found[0].trap(ConnectingCancelledError)

    def test_cancelDuringHandshake(self):
        world = TLSWorld(self.good)
        endpoint = self.backendTLS().wrapEndpoint(
            TCP4ClientEndpoint(world.reactor, "127.0.0.1", PORT),
            Server("web1", "tcp:web1.test:8443"),
            world.reactor,
        )
        client = Client()
        attempt = endpoint.connect(Factory.forProtocol(lambda: client))
        found = results(attempt)
        pump = ConnectionCompleter(world.reactor).succeedOnce(greet=False)
        attempt.cancel()
        found[0].trap(CancelledError)
        pump.flush()
        self.assertFalse(client.made)

    def test_noHalfCloseUnderTLS(self):
        """
        The TCP half-close the TLS wrapper would pass through is replaced by
        a TLS close, which flushes what was written first.
        """
        world = TLSWorld(self.good)
        found = self.connect(world, self.backendTLS(), Server("web1", "tcp:web1.test:8443"))
        transport = found[0].transport
        self.assertEqual(transport.loseWriteConnection, transport.loseConnection)
        transport.write(b"last")
        transport.loseWriteConnection()
        world.flush()
        self.assertEqual(world.echo.received, [b"ping", b"last"])
        self.assertIsNotNone(found[0].lost)

    def test_closeWithProducerRegistered(self):
        """
        As on TCP, loseConnection closes a connection whose protocol is its
        transport's producer (as an HTTP backend connection is).
        """
        world = TLSWorld(self.good)
        found = self.connect(world, self.backendTLS(), Server("web1", "tcp:web1.test:8443"))
        client = found[0]
        client.stopProducing = client.pauseProducing = client.resumeProducing = lambda: None
        client.transport.registerProducer(client, True)
        client.transport.loseConnection()
        world.flush()
        self.assertIsNotNone(client.lost)


class ConnectorTests(CertificatesMixin, SynchronousTestCase):
    """
    The connector of a pool with TLS: a failed handshake is a failed
    attempt (retried, counted on the server), never a connection.
    """

    def pool(self, issued, retries=1, passiveFall=2) -> Pool:
        server = Server("web1", "tcp:host=web1.test:port=8443")
        server.passiveFall = passiveFall
        pool = Pool(
            "web",
            [server],
            SmoothWeightedRoundRobin(),
            PoolConfig(name="web", servers=(), retries=retries),
        )
        pool.tls = self.backendTLS(pool.servers)
        return pool

    def context(self):
        return FlowContext(IPv4Address("TCP", "10.0.0.1", 5000), IPv4Address("TCP", "10.0.0.2", 80))

    def test_connectsAfterHandshake(self):
        world = TLSWorld(self.good)
        pool = self.pool(self.good)
        connector = BackendConnector(pool, world.reactor)
        self.assertIs(connector.tls, pool.tls)
        found = results(connector.connect(self.context(), Factory.forProtocol(Client)))
        world.complete()
        connection = found[0]
        self.assertEqual(connection.server.name, "web1")
        self.assertTrue(connection.protocol.made)
        self.assertEqual(pool.servers[0].connectFailures, 0)

    def test_failedHandshakeIsFailedAttempt(self):
        bad = self.other.issue("web1.test")
        world = TLSWorld(bad)
        pool = self.pool(bad, retries=1, passiveFall=2)
        connector = BackendConnector(pool, world.reactor)
        messages = []
        self.patch(BackendConnector, "log", Logger(observer=messages.append))
        found = results(connector.connect(self.context(), Factory.forProtocol(Client)))
        world.complete()
        world.complete()
        found[0].trap(ConnectFailed)
        reason = "TLS: certificate verify failed (unable to get local issuer certificate)"
        self.assertEqual(found[0].value.reason, reason)
        self.assertEqual(found[0].value.attempts, 2)
        server = pool.servers[0]
        self.assertEqual(server.active, 0)
        self.assertEqual(server.connectFailures, 2)
        self.assertIs(server.state, ServerState.DOWN)
        self.assertEqual([e["reason"] for e in messages], [reason, reason])

    def connectRaw(self, pool):
        """
        Connect through C{pool}'s connector on a memory reactor and return
        the bytes the server would receive first.
        """
        reactor = MemoryReactorClock()
        connector = BackendConnector(pool, reactor)
        connector.connect(self.context(), Factory.forProtocol(Client))
        factory = reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return transport.value()

    def test_proxyHeaderBeforeHandshake(self):
        """
        A pool with TLS and send_proxy writes the PROXY header in the clear,
        then the TLS ClientHello: servers read the header before TLS.
        """
        pool = self.pool(self.good)
        pool.options = PoolConfig(name="web", servers=(), sendProxy="v1")
        sent = self.connectRaw(pool)
        header = b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 80\r\n"
        self.assertEqual(sent[: len(header)], header)
        # A TLS handshake record follows.
        self.assertEqual(sent[len(header) : len(header) + 1], b"\x16")

    def test_noProxyHeaderByDefault(self):
        sent = self.connectRaw(self.pool(self.good))
        self.assertEqual(sent[:1], b"\x16")

    def test_starttlsPoolsConnectPlain(self):
        pool = self.pool(self.good)
        pool.tls = self.backendTLS(pool.servers, starttls=True)
        connector = BackendConnector(pool, MemoryReactorClock())
        self.assertIsNone(connector.tls)
        self.assertNotIsInstance(connector.endpointFor(pool.servers[0]), HandshakeEndpoint)


class HealthCheckTests(CertificatesMixin, SynchronousTestCase):
    """
    Health checks over the pool's TLS: a failed handshake fails the probe
    with its reason.
    """

    def server(self, tls) -> Server:
        server = Server("web1", "tcp:host=web1.test:port=8443")
        pool = Pool("web", [server], SmoothWeightedRoundRobin(), None)
        pool.tls = tls
        return server

    def probe(self, issued, check):
        world = TLSWorld(issued)
        server = self.server(self.backendTLS())
        check._reactor = world.reactor
        found = results(check.check(server))
        world.complete()
        return found

    def test_tcpCheckVerifies(self):
        found = self.probe(self.good, TCPCheck(None, HealthConfig(tls=True)))
        self.assertEqual(found, [None])

    def test_tcpCheckFailsOnBadCertificate(self):
        found = self.probe(self.other.issue("web1.test"), TCPCheck(None, HealthConfig(tls=True)))
        found[0].trap(HealthCheckFailed)
        self.assertEqual(
            str(found[0].value), "TLS: certificate verify failed (unable to get local issuer certificate)"
        )

    def test_tlsOffChecksPlain(self):
        check = TCPCheck(None, HealthConfig(tls=False))
        self.assertIsNone(check.tlsFor(self.server(self.backendTLS())))
        check = TCPCheck(None, HealthConfig(tls=True))
        self.assertIsNone(check.tlsFor(self.server(self.backendTLS(starttls=True))))

    def test_httpHostOverTLS(self):
        """
        Over TLS the default Host is the pool's server_name (else the
        address's host), with the port unless it is 443.
        """
        check = buildCheck(None, HealthConfig(type="http", tls=True))
        named = self.server(self.backendTLS(serverName="app.internal"))
        self.assertIn(b"\r\nHost: app.internal:8443\r\n", check.request(named))
        named.address = "tcp:host=10.0.0.1:port=443"
        self.assertIn(b"\r\nHost: app.internal\r\n", check.request(named))
        plain = self.server(self.backendTLS())
        self.assertIn(b"\r\nHost: web1.test:8443\r\n", check.request(plain))
        check = buildCheck(None, HealthConfig(type="http", tls=False))
        plain.address = "tcp:host=web1.test:port=80"
        self.assertIn(b"\r\nHost: web1.test\r\n", check.request(plain))

    def test_explicitTLS(self):
        tls = self.backendTLS()
        check = buildCheck(None, HealthConfig(type="http"), tls)
        self.assertIs(check.tlsFor(Server("web1", "tcp:web1.test:443")), tls)

    def test_httpCheckOverTLS(self):
        world = TLSWorld(self.good)

        class Answer(Protocol):
            def dataReceived(self, data):
                self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")

        world.reactor.tcpServers.clear()
        world.reactor.listenTCP(
            PORT, TLSMemoryBIOFactory(world.server, False, Factory.forProtocol(Answer), clock=world.reactor)
        )
        check = buildCheck(world.reactor, HealthConfig(type="http", tls=True))
        found = results(check.check(self.server(self.backendTLS())))
        world.complete()
        self.assertEqual(found, [None])


class WiringTests(CertificatesMixin, SynchronousTestCase):
    """
    The runtime builds one loaded BackendTLS per pool with [tls].
    """

    def config(self, tlsTable: str) -> bytes:
        return (
            "[listeners.web]\nbind = \"tcp:8080:interface=127.0.0.1\"\npool = \"web\"\n"
            "[pools.web]\nservers = [{name = \"web1\", address = \"tcp:web1.test:8443\"}]\n"
            f"{tlsTable}"
        ).encode()

    def test_poolTLSLoaded(self):
        config = loadBytes(self.config(f'[pools.web.tls]\nca = "{self.ca.cert}"\n'), "lb.toml")
        pool = Balancer(config).pools["web"]
        self.assertIsInstance(pool.tls, BackendTLS)
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, pool.tls.creatorFor(pool.servers[0])))

    def test_plainPool(self):
        pool = buildPool(PoolConfig(name="web", servers=(ServerConfig("web1", "tcp:web1.test:80"),)))
        self.assertIsNone(pool.tls)

    def test_startupErrorNamesKey(self):
        config = loadBytes(self.config('[pools.web.tls]\nca = "/nonexistent/ca.pem"\n'), "lb.toml")
        error = self.assertRaises(ConfigError, Balancer, config)
        self.assertEqual(
            str(error), "lb.toml: pools.web.tls.ca: cannot read /nonexistent/ca.pem: No such file or directory"
        )
