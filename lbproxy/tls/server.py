"""
TLS termination for one listener.

L{ServerTLS} holds the listener's L{CertificateSet} and hands out a
pyOpenSSL connection per client: to L{ServerTLSFactory} for implicit TLS
(the listener's factory is wrapped in L{wrapFactory}; see
L{lbproxy.tls.transport}), or to C{transport.startTLS} for STARTTLS.

A reload reads every file again and swaps the whole set in one
assignment; connections made before keep their own L{SSL.Connection} and
context and go on undisturbed. A reload that fails leaves the previous
certificates serving.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.config.tls import ListenerTLSConfig
from lbproxy.tls.certificates import CertificateSet, loadCertificates
from lbproxy.tls.transport import ServerTLSFactory


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS settings and certificates of one listener.

    @ivar listenerName: the listener's name (for messages and config keys).
    @ivar config: its L{ListenerTLSConfig}.
    @ivar source: the configuration file, for error messages.
    @ivar certificates: the L{CertificateSet} serving new connections, or
        L{None} before L{load}.
    """

    log = Logger()

    def __init__(self, listenerName: str, tlsConfig: ListenerTLSConfig, source: str) -> None:
        self.listenerName = listenerName
        self.config = tlsConfig
        self.source = source
        self.certificates: CertificateSet | None = None

    def __repr__(self) -> str:
        return f"<ServerTLS {self.listenerName}>"

    @property
    def creator(self) -> IOpenSSLServerConnectionCreator:
        """
        What makes the server side of each TLS connection: for
        L{ServerTLSFactory}, C{TLSMemoryBIOFactory(creator, False, factory)}
        or C{transport.startTLS(creator)}.
        """
        return self

    def load(self) -> None:
        """
        Read and check the certificates and build their contexts.

        @raise lbproxy.errors.ConfigError: a file is unusable; nothing is
            changed.
        """
        self.certificates = loadCertificates(self.listenerName, self.config, self.source)

    def reload(self) -> CertificateSet:
        """
        Read the files again and serve new connections with them.

        @return: the new L{CertificateSet}.
        @raise lbproxy.errors.ConfigError: a file is unusable; the previous
            certificates keep serving.
        """
        certificates = loadCertificates(self.listenerName, self.config, self.source)
        self.certificates = certificates
        return certificates

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        """
        A server-side connection starting with the default certificate;
        the SNI callback of the set switches it to another one.
        """
        return SSL.Connection(self.certificates.default, None)


#: Seconds a client of a TCP listener has to complete the TLS handshake.
HANDSHAKE_TIMEOUT = 10.0


def wrapFactory(
    serverTLS: ServerTLS, factory, reactor, handshakeTimeout: float = HANDSHAKE_TIMEOUT
) -> ServerTLSFactory:
    """
    C{factory} behind TLS termination with C{serverTLS}'s certificates.

    @param reactor: times the handshake.
    @param handshakeTimeout: seconds a client has to complete the
        handshake before it is dropped.
    """
    return ServerTLSFactory(serverTLS.creator, factory, reactor, handshakeTimeout)


def _connection(transport) -> SSL.Connection | None:
    if transport is None:
        return None
    getHandle = getattr(transport, "getHandle", None)
    if getHandle is None:
        return None
    try:
        handle = getHandle()
    except Exception:
        return None
    return handle if isinstance(handle, SSL.Connection) else None


def clientSubject(transport) -> str | None:
    """
    The subject (RFC 4514, printable ASCII) of the client certificate C{transport}'s TLS
    connection verified, or L{None}: no TLS, no certificate, or the
    handshake is not done. A certificate that failed verification ends
    the handshake, so any certificate found here was verified.
    """
    connection = _connection(transport)
    if connection is None:
        return None
    certificate = connection.get_peer_certificate(as_cryptography=True)
    if certificate is None:
        return None
    return _printable(certificate.subject.rfc4514_string())


def _printable(text: str) -> str:
    """
    C{text} in printable ASCII, any other character written as RFC 4514
    hex pairs of its UTF-8 bytes (C{\\0a}): safe in a header field and a
    log line, whatever a certificate's subject holds.
    """
    if text.isascii() and text.isprintable():
        return text
    out = []
    for character in text:
        if " " <= character <= "~":
            out.append(character)
        else:
            out.extend(f"\\{byte:02x}" for byte in character.encode("utf-8"))
    return "".join(out)


def describeTLS(transport) -> dict | None:
    """
    What a TLS connection negotiated, for logs: C{version}, C{cipher},
    C{sni}, C{alpn} and the verified client C{subject} (each L{None} when
    absent); L{None} for a connection without TLS.
    """
    connection = _connection(transport)
    if connection is None:
        return None
    name = connection.get_servername()
    alpn = connection.get_alpn_proto_negotiated()
    return {
        "version": connection.get_protocol_version_name(),
        "cipher": connection.get_cipher_name(),
        "sni": name.decode("ascii", "replace") if name else None,
        "alpn": alpn.decode("ascii", "replace") if alpn else None,
        "subject": clientSubject(transport),
    }
