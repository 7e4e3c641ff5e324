"""
TLS from lbproxy to the servers of a pool (C{[pools.NAME.tls]}).

A L{BackendTLS} reads the pool's files once (the CA bundle, the client
certificate and its key) and keeps one connection creator, with its
OpenSSL context, per server name. The creators verify the server's
certificate with Twisted's L{optionsForClientTLS} (chain against the CA,
name by C{service_identity}); an IP address is checked against the
certificate's IP entries and is not sent by SNI.

Three users share it:
  - L{lbproxy.core.connect} wraps a server's endpoint (L{BackendTLS.wrapEndpoint})
    for implicit TLS. The wrapped endpoint's connection is only reported
    once the handshake succeeded, so a server with a bad certificate is a
    failed connection attempt like a refused one: retried on another
    server, counted by passive health checks, and answered with a 502 by
    the HTTP front;
  - the health checks of a pool with TLS, the same way;
  - the mail fronts, which upgrade a plaintext connection with
    C{transport.startTLS(backendTLS.creatorFor(server))} after STARTTLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.config.tls import BackendTLSConfig
from lbproxy.core.endpoints import endpointArguments
from lbproxy.errors import ConfigError, TLSHandshakeFailed

_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}

#: Server endpoint types that carry a host lbproxy can name and connect
#: plainly; C{ssl:} and C{tls:} would be TLS inside TLS.
_PLAIN_TYPES = ("tcp", "tcp6", "unix")


def endpointHost(address: str) -> str | None:
    """
    The host of a client endpoint string, or None when it has none (a
    UNIX socket).
    """
    kind, args, kwargs = endpointArguments(address)
    host = kwargs.get("host")
    if host is None and args and kind != "unix":
        host = args[0]
    return host or None


def _isIPAddress(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def sslErrorText(error: SSL.Error) -> str:
    """
    The reasons OpenSSL gave, joined: C{"certificate verify failed"}.
    """
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else ():
        if isinstance(entry, tuple) and entry:
            text = str(entry[-1])
            if text and text not in reasons:
                reasons.append(text)
    return "; ".join(reasons) or str(error) or "handshake failed"


def tlsFailureText(reason: Failure | None) -> str | None:
    """
    C{"TLS: <OpenSSL's reasons>"} when C{reason} (why a connection was
    lost) is a TLS error, such as an alert from the peer; else None.
    """
    if reason is None or not isinstance(reason.value, SSL.Error):
        return None
    return f"TLS: {sslErrorText(reason.value)}"


def describeVerifyFailure(reason: Failure) -> str:
    """
    One line saying why a TLS connection to a server failed, for logs:
    C{"certificate verify failed (certificate is not valid for
    app.internal)"} for a name mismatch, else the reasons OpenSSL gave
    (C{"certificate verify failed"}; L{BackendTLS.diagnose} adds why, when
    the connection is at hand).
    """
    error = reason.value
    if isinstance(error, TLSHandshakeFailed):
        return str(error)
    if isinstance(error, VerificationError):
        mismatches = []
        for mismatch in getattr(error, "errors", ()):
            wanted = getattr(mismatch, "mismatched_id", None)
            name = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None)
            if isinstance(name, bytes):
                name = name.decode("ascii", "replace")
            mismatches.append(str(name) if name is not None else type(mismatch).__name__)
        names = ", ".join(mismatches) or "the server name"
        return f"certificate verify failed (certificate is not valid for {names})"
    if isinstance(error, SSL.Error):
        return sslErrorText(error)
    if isinstance(error, ConnectionDone):
        return "connection closed by server during the TLS handshake"
    if isinstance(error, ConnectionLost):
        return "connection lost during the TLS handshake"
    text = reason.getErrorMessage().strip() or type(error).__name__
    return text.splitlines()[0]


@dataclass(frozen=True)
class _Files:
    """
    What a L{BackendTLS} read from its files.
    """

    trustRoot: object | None
    caCertificates: tuple
    certificate: x509.Certificate | None
    privateKey: object | None
    chain: tuple


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedClientCreator:
    """
    Client connections for a pool with C{verify = false}: no check of the
    server's certificate, but the server name is still sent by SNI (so a
    server with several certificates presents the right one).
    """

    def __init__(self, options: CertificateOptions, serverName: str | None) -> None:
        self._options = options
        self._serverName = None
        if serverName is not None and not _isIPAddress(serverName):
            self._serverName = serverName.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._serverName is not None:
            connection.set_tlsext_host_name(self._serverName)
        return connection


class BackendTLS:
    """
    The TLS settings of one pool, with its files loaded.

    @ivar poolName: the pool, for error messages (C{pools.NAME.tls.ca}).
    @ivar config: the pool's L{BackendTLSConfig}.
    @ivar source: the config file, for error messages.
    """

    def __init__(self, poolName: str, tlsConfig: BackendTLSConfig, source: str = "") -> None:
        self.poolName = poolName
        self.config = tlsConfig
        self.source = source
        self._files: _Files | None = None
        self._servers: tuple = ()
        self._creators: dict[str | None, IOpenSSLClientConnectionCreator] = {}

    def __repr__(self) -> str:
        return f"<BackendTLS {self.poolName} verify={self.config.verify}>"

    def _key(self, name: str) -> str:
        return f"pools.{self.poolName}.tls.{name}"

    def _fail(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.source, self._key(name), message)

    # Loading.

    def load(self, servers=()) -> None:
        """
        Read the CA bundle and the client certificate, and prepare the
        connection creator of each of C{servers} (so a server whose name
        cannot be checked is a startup error). Each creator builds its
        OpenSSL context once, for its first connection, and reuses it.

        @raise ConfigError: naming the key whose file is unusable.
        """
        files = self._readFiles()
        creators = self._buildCreators(files, tuple(servers))
        self._files, self._servers, self._creators = files, tuple(servers), creators

    def reload(self) -> None:
        """
        Read the files again; on an error keep the settings in use and
        raise the L{ConfigError}.
        """
        self.load(self._servers)

    def _read(self, name: str, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise self._fail(name, f"cannot read {path}: {e.strerror}")

    def _certificates(self, name: str, path: str) -> list[x509.Certificate]:
        data = self._read(name, path)
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise self._fail(name, f"expected PEM certificates in {path}, found none")
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError as e:
            raise self._fail(name, f"expected PEM certificates in {path}, got unreadable data ({e})")

    def _readFiles(self) -> _Files:
        config = self.config
        trustRoot = None
        caCertificates: tuple = ()
        if config.verify:
            if config.ca is None:
                trustRoot = platformTrust()
            else:
                caCertificates = tuple(
                    crypto.X509.from_cryptography(c)
                    for c in self._certificates("ca", config.ca)
                )
                trustRoot = trustRootFromCertificates(
                    [Certificate(c) for c in caCertificates]
                )
        certificate = privateKey = None
        chain: tuple = ()
        if config.cert is not None:
            certificates = self._certificates("cert", config.cert)
            leaf = certificates[0]
            now = _utcNow()
            if leaf.not_valid_after_utc < now:
                raise self._fail("cert", f"the certificate in {config.cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}")
            if leaf.not_valid_before_utc > now:
                raise self._fail("cert", f"the certificate in {config.cert} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}")
            keyPath = config.key or config.cert
            keyData = self._read("key", keyPath)
            try:
                key = serialization.load_pem_private_key(keyData, password=None)
            except (ValueError, TypeError) as e:
                raise self._fail("key", f"expected an unencrypted PEM private key in {keyPath} ({_firstLine(e)})")
            if _publicBytes(key.public_key()) != _publicBytes(leaf.public_key()):
                raise self._fail("key", f"the key in {keyPath} does not match the certificate in {config.cert}")
            # cryptography objects: OpenSSL's context takes them directly
            # (pyOpenSSL's own X509 and PKey are deprecated there).
            certificate, privateKey, chain = leaf, key, tuple(certificates[1:])
        return _Files(trustRoot, caCertificates, certificate, privateKey, chain)

    # Creators.

    def serverName(self, server) -> str | None:
        """
        The name sent by SNI to C{server} and checked in its certificate:
        C{serverName} when configured, else the host of its address.
        """
        if self.config.serverName is not None:
            return self.config.serverName
        return endpointHost(server.address)

    def _buildCreators(self, files: _Files, servers: tuple) -> dict:
        creators: dict[str | None, IOpenSSLClientConnectionCreator] = {}
        for index, server in enumerate(servers):
            kind = endpointArguments(server.address)[0]
            if kind not in _PLAIN_TYPES:
                raise ConfigError(
                    self.source,
                    f"pools.{self.poolName}.servers[{index}].address",
                    f'expected a "tcp:" address in a pool with [tls] (the pool\'s TLS settings '
                    f"do the TLS), got {server.address!r}",
                )
            name = self.serverName(server)
            if name is None and self.config.verify:
                raise self._fail(
                    "server_name",
                    f"expected a server name: server {server.name} ({server.address}) has no host "
                    "to check its certificate against",
                )
            if name not in creators:
                creators[name] = self._creator(files, name)
        return creators

    def _creator(
        self, files: _Files, name: str | None, alpn: tuple[bytes, ...] = ()
    ) -> IOpenSSLClientConnectionCreator:
        options: dict = {"raiseMinimumTo": _VERSIONS[self.config.minVersion]}
        if files.certificate is not None:
            options.update(
                certificate=files.certificate,
                privateKey=files.privateKey,
                extraCertChain=list(files.chain),
            )
        protocols = list(alpn) if alpn else None
        if not self.config.verify:
            return UnverifiedClientCreator(
                CertificateOptions(verify=False, acceptableProtocols=protocols, **options), name
            )
        return optionsForClientTLS(
            name, trustRoot=files.trustRoot, extraCertificateOptions=options, acceptableProtocols=protocols
        )

    def creatorFor(self, server, alpn: tuple[bytes, ...] = ()) -> IOpenSSLClientConnectionCreator:
        """
        The connection creator for C{server}: pass it to
        L{TLSMemoryBIOFactory} (implicit TLS) or to C{transport.startTLS}
        (STARTTLS). Built once per server name (and ALPN offer) and reused.

        @param alpn: the protocols offered by ALPN (an HTTP/2 pool's
            C{(b"h2",)}); none by default, as for health checks.
        """
        if self._files is None:
            raise RuntimeError(f"{self!r} was not loaded")
        name = self.serverName(server)
        key = (name, alpn) if alpn else name
        creator = self._creators.get(key)
        if creator is None:
            if name is None and self.config.verify:
                raise ValueError(
                    f"server {server.name} ({server.address}) has no host name to verify"
                )
            creator = self._creators[key] = self._creator(self._files, name, alpn)
        return creator

    def wrapEndpoint(
        self, endpoint: IStreamClientEndpoint, server, reactor, alpn: tuple[bytes, ...] = ()
    ) -> IStreamClientEndpoint:
        """
        C{endpoint} with TLS to C{server} on top, whose connections are
        reported once the handshake succeeded (L{HandshakeEndpoint}),
        offering C{alpn} by ALPN.
        """
        return HandshakeEndpoint(self, endpoint, server, reactor, alpn)

    def diagnose(self, connection: SSL.Connection | None) -> str | None:
        """
        Why the certificate chain C{connection} received does not verify,
        as OpenSSL words it ("unable to get local issuer certificate"), by
        checking it again against the pool's trust anchors; None when that
        cannot be told.
        """
        if connection is None or self._files is None or not self.config.verify:
            return None
        try:
            chain = connection.get_peer_cert_chain()
        except SSL.Error:
            return None
        if not chain:
            return None
        store = crypto.X509Store()
        if self._files.caCertificates:
            for certificate in self._files.caCertificates:
                store.add_cert(certificate)
        else:
            paths = ssl.get_default_verify_paths()
            try:
                store.load_locations(paths.cafile, paths.capath)
            except crypto.Error:
                return None
        leaf = chain[0]
        try:
            crypto.X509StoreContext(store, leaf, list(chain[1:])).verify_certificate()
        except crypto.X509StoreContextError as e:
            return str(e.args[0]) if e.args else None
        return None


def _utcNow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _firstLine(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _publicBytes(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _closeLikeTCP(tls) -> None:
    """
    Make C{loseConnection} on the TLS transport C{tls} close the way it does
    on TCP, which the fronts were written for:

      - at once, even with a producer registered (the TLS wrapper would
        wait for it to be unregistered, which an HTTP backend connection,
        its own transport's producer, never does);
      - for C{loseWriteConnection} too: TLS has no half-close, and the TCP
        transport's, which the wrapper would otherwise pass through, would
        cut the TLS stream under records not yet written.
    """
    closeTLS = tls.loseConnection

    def loseConnection() -> None:
        tls.unregisterProducer()
        closeTLS()

    tls.loseConnection = loseConnection
    tls.loseWriteConnection = loseConnection


@implementer(IHandshakeListener)
class _HandshakeGate(Protocol):
    """
    Stands in for the caller's protocol while the TLS handshake runs, then
    connects the caller's protocol to the TLS transport and steps aside.

    The caller's protocol never sees a connection whose handshake failed:
    the failure goes to the connect L{Deferred} instead.
    """

    def __init__(self, endpoint: HandshakeEndpoint, factory: IProtocolFactory, result: Deferred, address) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._result = result
        self._address = address
        self.done = False

    def handshakeCompleted(self) -> None:
        tls = self.transport
        if self.done or tls.disconnecting:
            # A name mismatch found during the handshake aborts the
            # connection; its reason arrives with connectionLost.
            return
        self.done = True
        try:
            protocol = self._factory.buildProtocol(self._address)
        except Exception:
            tls.abortConnection()
            self._result.errback()
            return
        if protocol is None:
            tls.abortConnection()
            self._result.errback(TLSHandshakeFailed("the protocol factory refused the connection"))
            return
        tls.wrappedProtocol = protocol
        _closeLikeTCP(tls)
        protocol.makeConnection(tls)
        self._result.callback(protocol)

    def dataReceived(self, data: bytes) -> None:
        # Nothing reaches the gate: application data follows the handshake,
        # by which time the caller's protocol receives it.
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self.done:
            return
        self.done = True
        text = describeVerifyFailure(reason)
        if text.startswith("certificate verify failed") and "(" not in text:
            detail = self._endpoint.tls.diagnose(self.transport.getHandle())
            if detail:
                text = f"{text} ({detail})"
        self._result.errback(TLSHandshakeFailed(f"TLS: {text}"))


class _GateFactory(Factory):
    noisy = False

    def __init__(self, endpoint: HandshakeEndpoint, factory: IProtocolFactory, result: Deferred) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._result = result
        self.gate: _HandshakeGate | None = None

    def buildProtocol(self, addr) -> _HandshakeGate:
        self.gate = _HandshakeGate(self._endpoint, self._factory, self._result, addr)
        return self.gate


class _PreambleTLSProtocol(TLSMemoryBIOProtocol):
    """
    Client-side TLS that first writes its factory's C{preamble} in the
    clear: a PROXY protocol header precedes the TLS handshake, where
    servers read it (HAProxy's C{send-proxy} with C{ssl}, Dovecot's
    C{haproxy = yes}).
    """

    def makeConnection(self, transport) -> None:
        if self.factory.preamble:
            transport.write(self.factory.preamble)
        super().makeConnection(transport)


class _PreambleTLSFactory(TLSMemoryBIOFactory):
    protocol = _PreambleTLSProtocol

    def __init__(self, creator, wrappedFactory, preamble: bytes, clock) -> None:
        super().__init__(creator, True, wrappedFactory, clock=clock)
        self.preamble = preamble


@implementer(IStreamClientEndpoint)
class HandshakeEndpoint:
    """
    An endpoint with TLS to one server on top, whose C{connect} fires with
    the caller's protocol after a successful handshake, or fails with
    L{TLSHandshakeFailed} saying why.

    Cancelling the L{Deferred} abandons the connection attempt, or aborts
    the connection while its handshake runs.
    """

    def __init__(
        self, tls: BackendTLS, endpoint: IStreamClientEndpoint, server, reactor, alpn: tuple[bytes, ...] = ()
    ) -> None:
        self.tls = tls
        self._endpoint = endpoint
        self._server = server
        self._reactor = reactor
        self._alpn = alpn

    def __repr__(self) -> str:
        return f"<HandshakeEndpoint {self._server.name} via {self.tls!r}>"

    def connect(self, protocolFactory: IProtocolFactory, preamble: bytes = b"") -> Deferred:
        """
        Connect C{protocolFactory}'s protocol over TLS.

        @param preamble: bytes written in the clear before the handshake
            (a PROXY protocol header).
        """
        creator = self.tls.creatorFor(self._server, self._alpn)
        gates: list[_GateFactory] = []

        def cancel(result: Deferred) -> None:
            if not connecting.called:
                connecting.cancel()
                return
            gate = gates[0].gate if gates else None
            if gate is not None and not gate.done:
                gate.done = True
                gate.transport.abortConnection()

        result: Deferred = Deferred(cancel)
        gateFactory = _GateFactory(self, protocolFactory, result)
        gates.append(gateFactory)
        connecting = self._endpoint.connect(
            _PreambleTLSFactory(creator, gateFactory, preamble, self._reactor)
        )

        def notConnected(reason: Failure) -> None:
            if not result.called:
                result.errback(reason)

        connecting.addErrback(notConnected)
        return result


__all__ = [
    "BackendTLS",
    "HandshakeEndpoint",
    "TLSHandshakeFailed",
    "UnverifiedClientCreator",
    "describeVerifyFailure",
    "endpointHost",
]
