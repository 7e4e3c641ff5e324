"""
L{lbproxy.tls.server.ServerTLS}: versions, ALPN, client certificates,
reloads, and connections through the listener transport in memory.
"""

from __future__ import annotations

import shutil

import pytest
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from zope.interface.verify import verifyObject

from certs import CertificateAuthority
from lbproxy.errors import ConfigError
from lbproxy.tls.server import ServerTLS, ServerTLSFactory, clientSubject, describeTLS, wrapFactory
from tlsmemory import clientContext, handshake, listenerTLS, subjectOf

SOURCE = "test.toml"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory)
    other = CertificateAuthority(directory / "other", name="other CA")
    clients = CertificateAuthority(directory / "clients", name="client CA", intermediate=True)
    flat = CertificateAuthority(directory / "flat", name="flat CA")
    return {
        "ca": ca,
        "flatCA": flat,
        "flatClient": flat.issue(client=True, commonName="alice"),
        "default": ca.issue("default.example.test"),
        "www": ca.issue("www.example.test"),
        "clientCA": clients,
        "client": clients.issue(client=True, commonName="alice"),
        "stranger": other.issue(client=True, commonName="mallory"),
    }


def serverTLS(*issued, **kwargs) -> ServerTLS:
    server = ServerTLS("web", listenerTLS(*issued, **kwargs), SOURCE)
    server.load()
    return server


def test_interface(pki):
    server = serverTLS(pki["default"])
    assert verifyObject(IOpenSSLServerConnectionCreator, server.creator)


class TestVersions:
    def test_tls12And13ByDefault(self, pki):
        server = serverTLS(pki["default"])
        for version, name in ((SSL.TLS1_2_VERSION, "TLSv1.2"), (SSL.TLS1_3_VERSION, "TLSv1.3")):
            result = handshake(server, clientContext(pki["ca"].cert, maxVersion=version))
            assert result.ok, result.error
            assert result.server.get_protocol_version_name() == name

    @pytest.mark.parametrize("version", [SSL.TLS1_VERSION, SSL.TLS1_1_VERSION])
    def test_oldVersionsRefused(self, pki, version):
        server = serverTLS(pki["default"])
        result = handshake(server, clientContext(pki["ca"].cert, maxVersion=version))
        assert not result.ok

    def test_minimumTLS13(self, pki):
        server = serverTLS(pki["default"], minVersion="1.3")
        assert not handshake(server, clientContext(pki["ca"].cert, maxVersion=SSL.TLS1_2_VERSION)).ok
        assert handshake(server, clientContext(pki["ca"].cert)).ok

    def test_ciphersFromTheConfig(self, pki):
        server = serverTLS(pki["default"], ciphers="ECDHE-ECDSA-CHACHA20-POLY1305")
        result = handshake(server, clientContext(pki["ca"].cert, maxVersion=SSL.TLS1_2_VERSION))
        assert result.ok, result.error
        assert result.server.get_cipher_name() == "ECDHE-ECDSA-CHACHA20-POLY1305"

    def test_noCompressionNoRenegotiation(self, pki):
        server = serverTLS(pki["default"])
        options = server.certificates.default.set_options(0)
        assert options & SSL.OP_NO_COMPRESSION
        assert options & SSL.OP_NO_RENEGOTIATION

    def test_idleConnectionsReleaseTheirBuffers(self, pki):
        """
        OpenSSL frees a connection's read and write buffers while they are
        empty, so an idle TLS client does not hold about 34 KiB of them.
        """
        server = serverTLS(pki["default"], pki["www"])
        for context in (server.certificates.default, server.certificates.contextFor(b"www.example.test")):
            assert context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS

    def test_renegotiationRefused(self, pki):
        server = serverTLS(pki["default"])
        result = handshake(server, clientContext(pki["ca"].cert, maxVersion=SSL.TLS1_2_VERSION))
        assert result.ok
        assert result.client.renegotiate() is False or _renegotiationFails(result)


def _renegotiationFails(result) -> bool:
    from tlsmemory import _pump

    try:
        result.client.do_handshake()
    except SSL.WantReadError:
        pass
    _pump(result.client, result.server)
    try:
        result.server.recv(10)
    except SSL.WantReadError:
        pass
    except SSL.Error:
        return True
    _pump(result.server, result.client)
    try:
        result.client.recv(10)
    except SSL.Error:
        return True
    return not result.client.renegotiate_pending()


class TestALPN:
    def test_http11Chosen(self, pki):
        server = serverTLS(pki["default"], alpn=("http/1.1",))
        result = handshake(server, clientContext(pki["ca"].cert, alpn=[b"h2", b"http/1.1"]))
        assert result.ok
        assert result.client.get_alpn_proto_negotiated() == b"http/1.1"

    def test_onlyH2OfferedGetsNoProtocol(self, pki):
        server = serverTLS(pki["default"], alpn=("http/1.1",))
        result = handshake(server, clientContext(pki["ca"].cert, alpn=[b"h2"]))
        assert result.ok, result.error
        assert result.client.get_alpn_proto_negotiated() == b""

    def test_noALPNConfigured(self, pki):
        server = serverTLS(pki["default"])
        result = handshake(server, clientContext(pki["ca"].cert, alpn=[b"http/1.1"]))
        assert result.ok
        assert result.client.get_alpn_proto_negotiated() == b""

    def test_sameAfterSNISwitch(self, pki):
        server = serverTLS(pki["default"], pki["www"], alpn=("http/1.1",))
        result = handshake(server, clientContext(pki["ca"].cert, alpn=[b"http/1.1"]), b"www.example.test")
        assert result.serverCommonName == "www.example.test"
        assert result.client.get_alpn_proto_negotiated() == b"http/1.1"


class TestClientCertificates:
    def configured(self, pki, verify):
        return serverTLS(pki["default"], pki["www"], clientCA=str(pki["clientCA"].cert), clientVerify=verify)

    def client(self, pki, issued=None, **kwargs):
        if issued is None:
            return clientContext(pki["ca"].cert, **kwargs)
        return clientContext(pki["ca"].cert, cert=issued.chain, key=issued.key, **kwargs)

    @pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
    def test_requiredAndNoCertificate(self, pki, version):
        result = handshake(self.configured(pki, "required"), self.client(pki, maxVersion=version))
        assert not result.ok

    @pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
    def test_requiredAndAccepted(self, pki, version):
        result = handshake(self.configured(pki, "required"), self.client(pki, pki["client"], maxVersion=version))
        assert result.ok, result.error
        assert result.server.get_peer_certificate(as_cryptography=True).subject.rfc4514_string() == subjectOf(
            pki["client"]
        )

    @pytest.mark.parametrize("verify", ["required", "optional"])
    @pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
    def test_anotherCARejected(self, pki, verify, version):
        result = handshake(self.configured(pki, verify), self.client(pki, pki["stranger"], maxVersion=version))
        assert not result.ok

    def test_optionalWithout(self, pki):
        result = handshake(self.configured(pki, "optional"), self.client(pki))
        assert result.ok, result.error
        assert result.server.get_peer_certificate() is None

    def test_optionalWith(self, pki):
        result = handshake(self.configured(pki, "optional"), self.client(pki, pki["client"]))
        assert result.ok, result.error
        assert result.server.get_peer_certificate() is not None

    def test_requiredAfterSNISwitch(self, pki):
        result = handshake(self.configured(pki, "required"), self.client(pki), b"www.example.test")
        assert not result.ok
        result = handshake(self.configured(pki, "required"), self.client(pki, pki["client"]), b"www.example.test")
        assert result.ok, result.error
        assert result.serverCommonName == "www.example.test"

    def test_caNamesSent(self, pki):
        result = handshake(self.configured(pki, "optional"), self.client(pki))
        names = [n.CN for n in result.client.get_client_ca_list()]
        assert names == ["client CA intermediate"] or "client CA" in names


class TestReload:
    def files(self, pki, tmp_path):
        """
        A listener whose certificate files live in C{tmp_path}, so the test
        can replace them.
        """
        cert, key = tmp_path / "site.pem", tmp_path / "site.key"
        shutil.copy(pki["default"].chain, cert)
        shutil.copy(pki["default"].key, key)
        config = listenerTLS(pki["default"])
        config = config.__class__(certificates=(config.certificates[0].__class__(cert=str(cert), key=str(key)),))
        server = ServerTLS("web", config, SOURCE)
        server.load()
        return server, cert, key

    def commonName(self, server, pki):
        result = handshake(server, clientContext(pki["ca"].cert))
        assert result.ok, result.error
        return result.serverCommonName

    def test_goodFilesSwapped(self, pki, tmp_path):
        server, cert, key = self.files(pki, tmp_path)
        assert self.commonName(server, pki) == "default.example.test"
        fresh = pki["ca"].issue("fresh.example.test")
        shutil.copy(fresh.chain, cert)
        shutil.copy(fresh.key, key)
        before = server.certificates
        server.reload()
        assert server.certificates is not before
        assert self.commonName(server, pki) == "fresh.example.test"

    def test_establishedConnectionsKeepGoing(self, pki, tmp_path):
        server, cert, key = self.files(pki, tmp_path)
        result = handshake(server, clientContext(pki["ca"].cert))
        fresh = pki["ca"].issue("fresh.example.test")
        shutil.copy(fresh.chain, cert)
        shutil.copy(fresh.key, key)
        server.reload()
        from tlsmemory import _pump

        result.client.send(b"still here")
        _pump(result.client, result.server)
        assert result.server.recv(100) == b"still here"

    @pytest.mark.parametrize("damage", ["missing", "mismatched", "expired"])
    def test_badFilesKeepThePrevious(self, pki, tmp_path, damage):
        server, cert, key = self.files(pki, tmp_path)
        before = server.certificates
        if damage == "missing":
            cert.unlink()
            where, name = "cert", str(cert)
        elif damage == "mismatched":
            shutil.copy(pki["www"].key, key)
            where, name = "key", str(key)
        else:
            old = pki["ca"].issue("old.example.test", expired=True)
            shutil.copy(old.chain, cert)
            shutil.copy(old.key, key)
            where, name = "cert", str(cert)
        with pytest.raises(ConfigError) as raised:
            server.reload()
        assert raised.value.key == f"listeners.web.tls.certificates[0].{where}"
        assert name in str(raised.value)
        assert server.certificates is before
        assert self.commonName(server, pki) == "default.example.test"


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Collect(Protocol):
    def __init__(self):
        self.received = b""
        self.handshaken = False

    def dataReceived(self, data):
        self.received += data


class TestTwistedTransport:
    """
    The creator behind the listener TLS transport, over iosim's in-memory
    connections, and what L{describeTLS} reads from such a transport.
    """

    def connect(self, pki, serverName="www.example.test", clientCert=None, **kwargs):
        server = serverTLS(pki["default"], pki["www"], alpn=("http/1.1",), **kwargs)
        serverProtocols = []

        class Recording(Echo):
            def connectionMade(self):
                serverProtocols.append(self)

        clock = Clock()
        serverFactory = wrapFactory(server, Factory.forProtocol(Recording), clock)
        trust = Certificate.loadPEM(pki["ca"].cert.read_bytes())
        if clientCert is not None:
            from twisted.internet.ssl import PrivateCertificate

            client = PrivateCertificate.loadPEM(clientCert.chain.read_bytes() + clientCert.key.read_bytes())
        else:
            client = None
        options = optionsForClientTLS(serverName, trust, clientCertificate=client, acceptableProtocols=[b"http/1.1"])
        clientFactory = TLSMemoryBIOFactory(options, True, Factory.forProtocol(Collect), clock=clock)
        clientSide, serverSide, pump = connectedServerAndClient(
            lambda: serverFactory.buildProtocol(None), lambda: clientFactory.buildProtocol(None)
        )
        clientSide.write(b"hello")
        for _ in range(10):
            clock.advance(0)
            pump.flush()
        return serverProtocols[0], clientSide, pump

    def test_echo(self, pki):
        serverProtocol, clientSide, pump = self.connect(pki)
        assert clientSide.wrappedProtocol.received == b"hello"
        info = describeTLS(serverProtocol.transport)
        assert info["sni"] == "www.example.test"
        assert info["alpn"] == "http/1.1"
        assert info["version"] == "TLSv1.3"
        assert info["cipher"]
        assert info["subject"] is None

    def test_clientSubject(self, pki):
        serverProtocol, clientSide, pump = self.connect(
            # Twisted's client options present the leaf alone: a CA that
            # signs directly.
            pki, clientCert=pki["flatClient"], clientCA=str(pki["flatCA"].cert), clientVerify="required"
        )
        assert clientSide.wrappedProtocol.received == b"hello"
        assert clientSubject(serverProtocol.transport) == "CN=alice,O=lbproxy tests"
        assert describeTLS(serverProtocol.transport)["subject"] == "CN=alice,O=lbproxy tests"

    def test_silentClientDropped(self, pki):
        """
        A client that never completes the handshake is aborted at the
        deadline, also when the application wrote (an HTTP 408) and asked
        for a close, which TLS alone would hold until a handshake.
        """

        class Impatient(Protocol):
            def connectionMade(self):
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
                self.transport.loseConnection()

        for protocolClass in (Echo, Impatient):
            clock = Clock()
            factory = wrapFactory(serverTLS(pki["default"]), Factory.forProtocol(protocolClass), clock, 7)
            assert isinstance(factory, ServerTLSFactory)
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            clock.advance(6.9)
            assert not transport.disconnected
            clock.advance(0.1)
            assert transport.disconnected
            assert not clock.getDelayedCalls()

    def test_handshakeInTimeKeepsTheConnection(self, pki):
        serverProtocol, clientSide, pump = self.connect(pki)
        clock = serverProtocol.transport.factory.reactor
        clock.advance(3600)
        assert not clock.getDelayedCalls()
        clientSide.write(b"later")
        for _ in range(3):
            clock.advance(0)
            pump.flush()
        assert clientSide.wrappedProtocol.received == b"hellolater"

    def test_writeBatchWritesThroughTLS(self, pki):
        """
        The HTTP front's write batch hands data for a TLS transport to the
        transport's own write, which encrypts it.
        """
        from lbproxy._twisted.writebatch import WriteBatch

        serverProtocol, clientSide, pump = self.connect(pki)
        clock = serverProtocol.transport.factory.reactor
        batch = WriteBatch(clock)
        batch.write(serverProtocol.transport, b" and")
        batch.writeSequence(serverProtocol.transport, [b" more", b"!"])
        for _ in range(3):
            clock.advance(0)
            pump.flush()
        assert clientSide.wrappedProtocol.received == b"hello and more!"

    def test_plainTransport(self):
        from twisted.internet.testing import StringTransport

        assert describeTLS(StringTransport()) is None
        assert clientSubject(StringTransport()) is None
        assert clientSubject(None) is None
