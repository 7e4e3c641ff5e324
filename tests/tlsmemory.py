"""
TLS handshakes in memory, between a pyOpenSSL client and a server-side
connection made by an L{lbproxy.tls.server.ServerTLS}, and config helpers
for the TLS tests.
"""

from __future__ import annotations

from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from lbproxy.config.tls import CertificateConfig, ListenerTLSConfig


def listenerTLS(*issued, names=None, **kwargs) -> ListenerTLSConfig:
    """
    A L{ListenerTLSConfig} presenting C{issued} certificates (the first is
    the default), each with its chain and key.
    """
    certificates = tuple(
        CertificateConfig(cert=str(i.chain), key=str(i.key), names=tuple((names or {}).get(n, ())))
        for n, i in enumerate(issued)
    )
    return ListenerTLSConfig(certificates=certificates, **kwargs)


def clientContext(
    ca=None,
    maxVersion=None,
    alpn=None,
    cert=None,
    key=None,
    minVersion=SSL.TLS1_VERSION,
) -> SSL.Context:
    """
    A client context trusting C{ca} (a path), offering C{alpn}, limited to
    C{maxVersion}, presenting C{cert}/C{key} when given.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if maxVersion is not None and maxVersion < SSL.TLS1_2_VERSION:
        # Old versions need the lowest security level to be offered at all.
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    context.set_min_proto_version(minVersion)
    if maxVersion is not None:
        context.set_max_proto_version(maxVersion)
    if ca is not None:
        context.load_verify_locations(str(ca))
        context.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
    if alpn is not None:
        context.set_alpn_protos(alpn)
    if cert is not None:
        context.use_certificate_chain_file(str(cert))
        context.use_privatekey_file(str(key))
    return context


class Handshake:
    """
    The outcome of one in-memory handshake.

    @ivar client: the client's L{SSL.Connection}.
    @ivar server: the server's L{SSL.Connection}.
    @ivar error: the L{SSL.Error} that ended it, or L{None}.
    """

    def __init__(self, client, server, error) -> None:
        self.client = client
        self.server = server
        self.error = error

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def serverCommonName(self) -> str:
        certificate = self.client.get_peer_certificate(as_cryptography=True)
        return certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def _pump(source: SSL.Connection, destination: SSL.Connection) -> bool:
    moved = False
    while True:
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            return moved
        if not data:
            return moved
        destination.bio_write(data)
        moved = True


def _step(connection: SSL.Connection) -> bool:
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        return False
    return True


def handshake(creator, clientCtx: SSL.Context, serverName: bytes | None = None, exchange: bool = True) -> Handshake:
    """
    Run a handshake between a client using C{clientCtx} (sending
    C{serverName} by SNI) and a server connection from C{creator}; with
    C{exchange}, also send one byte each way (TLS 1.3 reports a refused
    client certificate only then).
    """
    server = creator.serverConnectionForTLS(None)
    server.set_accept_state()
    client = SSL.Connection(clientCtx, None)
    if serverName is not None:
        client.set_tlsext_host_name(serverName)
    client.set_connect_state()
    error = None
    try:
        for _ in range(20):
            clientDone = _step(client)
            _pump(client, server)
            serverDone = _step(server)
            _pump(server, client)
            if clientDone and serverDone:
                break
        else:
            raise SSL.Error("handshake did not finish")
        if exchange:
            client.send(b"x")
            _pump(client, server)
            server.recv(1)
            server.send(b"y")
            _pump(server, client)
            client.recv(1)
    except SSL.Error as e:
        error = e
        # Let the peer see the alert, so both sides agree.
        _pump(server, client)
        _pump(client, server)
    return Handshake(client, server, error)


def subjectOf(issued) -> str:
    return issued.certificate.subject.rfc4514_string()


def x509(issued) -> crypto.X509:
    return crypto.X509.from_cryptography(issued.certificate)
