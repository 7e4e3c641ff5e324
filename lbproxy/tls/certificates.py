"""
The certificates of a TLS listener: read and checked once, turned into one
pyOpenSSL context each, and chosen by the SNI name a client sends.

Everything that touches the disk happens in L{loadCertificates}: at
startup, by C{--check} and on a reload. Choosing a certificate during a
handshake (L{CertificateSet.contextFor}) is a lookup in two dictionaries
built at load time: a client sending random names causes neither disk
reads nor growth of any table.

A name matches a certificate exactly, or by a wildcard one label deep
(C{*.example.com} matches C{www.example.com}, not C{example.com} nor
C{a.b.example.com}); a client sending no name or an unknown one gets the
first certificate.

Every context of a listener carries the same settings (versions, ciphers,
ALPN, client verification): OpenSSL takes some of them from the context a
connection starts with and others from the one the SNI callback switches
to, so they must not differ.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from lbproxy.config.tls import CertificateConfig, ListenerTLSConfig
from lbproxy.errors import ConfigError

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

#: No compression (CRIME), no renegotiation (a client cannot make the
#: server redo handshakes, nor change its certificate mid-connection), the
#: server's cipher order, fresh ECDH keys.
_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_NO_RENEGOTIATION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_SINGLE_ECDH_USE
)

#: How deep a client certificate chain may be (leaf, intermediates, root).
VERIFY_DEPTH = 5

#: Seconds a TLS session may be resumed for. OpenSSL's server session cache
#: holds at most 20480 sessions; TLS 1.3 resumes with tickets, which the
#: server does not store.
SESSION_TIMEOUT = 300


@dataclass(frozen=True)
class LoadedCertificate:
    """
    One certificate of a listener, ready to serve.

    @ivar file: the certificate file it was read from.
    @ivar names: the host names it is chosen for (lowercase).
    @ivar notAfter: when it expires.
    @ivar context: the pyOpenSSL context presenting it.
    """

    file: str
    names: tuple[str, ...]
    notAfter: datetime.datetime
    context: SSL.Context


class CertificateSet:
    """
    The certificates of one listener, by the names they are chosen for.

    Immutable once built: a reload builds a new set and swaps it in whole,
    so a connection sees either the old certificates or the new ones.

    @ivar certificates: the L{LoadedCertificate}s, the default first.
    @ivar default: the context of the first certificate, which every
        connection starts with.
    """

    def __init__(self, certificates: Sequence[LoadedCertificate]) -> None:
        self.certificates = tuple(certificates)
        self.default = self.certificates[0].context
        self._exact: dict[bytes, SSL.Context] = {}
        self._wildcard: dict[bytes, SSL.Context] = {}
        for certificate in self.certificates:
            for name in certificate.names:
                encoded = name.encode("ascii", "replace")
                if encoded.startswith(b"*."):
                    self._wildcard.setdefault(encoded[2:], certificate.context)
                else:
                    self._exact.setdefault(encoded, certificate.context)
        for certificate in self.certificates:
            certificate.context.set_tlsext_servername_callback(self._serverNameReceived)

    @property
    def sizes(self) -> tuple[int, int]:
        """
        How many exact and wildcard names the set holds (fixed at build
        time; tests check that handshakes do not change it).
        """
        return len(self._exact), len(self._wildcard)

    def contextFor(self, serverName: bytes | None) -> SSL.Context:
        """
        The context of the certificate for C{serverName}: an exact match,
        else a wildcard one label up, else the default.
        """
        if not serverName:
            return self.default
        name = serverName.lower().rstrip(b".")
        context = self._exact.get(name)
        if context is not None:
            return context
        parent = name.partition(b".")[2]
        if parent:
            context = self._wildcard.get(parent)
            if context is not None:
                return context
        return self.default

    def _serverNameReceived(self, connection: SSL.Connection) -> None:
        context = self.contextFor(connection.get_servername())
        if context is not self.default:
            connection.set_context(context)


def loadCertificates(listenerName: str, config: ListenerTLSConfig, source: str) -> CertificateSet:
    """
    Read and check every file of a listener's C{[tls]} table and build its
    L{CertificateSet}.

    @param source: the configuration file, for error messages.
    @raise ConfigError: a file is missing or unreadable, holds no PEM
        certificate or key, the key does not belong to the certificate,
        or the certificate is expired or not valid yet. The message names
        the key in the configuration and the file.
    """
    prefix = f"listeners.{listenerName}.tls"
    clientCA = None
    if config.clientVerify != "none" and config.clientCA is not None:
        clientCA = _readCA(source, f"{prefix}.client_ca", config.clientCA)
    alpnSelect = alpnSelector(config.alpn)
    sessionId = f"lbproxy:{listenerName}".encode("utf-8")[:32]
    loaded = []
    for index, certificate in enumerate(config.certificates):
        key = f"{prefix}.certificates[{index}]"
        chain, privateKey, names, notAfter = _readCertificate(source, key, certificate)
        context = _context(config, chain, privateKey, clientCA, alpnSelect, sessionId)
        loaded.append(
            LoadedCertificate(file=certificate.cert, names=names, notAfter=notAfter, context=context)
        )
    return CertificateSet(loaded)


def alpnSelector(protocols: Sequence[str]) -> Callable | None:
    """
    An ALPN select callback choosing the first of C{protocols} (the
    server's preference order) that the client offers; L{None} without
    protocols.

    A client offering none of them gets no ALPN at all rather than a
    protocol lbproxy does not speak (RFC 7301 allows either; the protocol
    then defaults to what the listener serves).
    """
    if not protocols:
        return None
    ours = [protocol.encode("ascii") for protocol in protocols]

    def select(connection: SSL.Connection, offered: list[bytes]):
        for protocol in ours:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def _context(
    config: ListenerTLSConfig,
    chain: list[x509.Certificate],
    privateKey,
    clientCA: list[x509.Certificate] | None,
    alpnSelect: Callable | None,
    sessionId: bytes,
) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    # OpenSSL frees a connection's read and write buffers (about 34 KiB)
    # while they are empty: an idle TLS client costs that much less.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_min_proto_version(_VERSIONS[config.minVersion])
    context.set_options(_OPTIONS)
    if config.minVersion == "1.2":
        context.set_cipher_list(config.ciphers.encode("ascii"))
    context.use_certificate(chain[0])
    for intermediate in chain[1:]:
        context.add_extra_chain_cert(intermediate)
    context.use_privatekey(privateKey)
    context.check_privatekey()
    context.set_session_id(sessionId)
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    context.set_timeout(SESSION_TIMEOUT)
    if alpnSelect is not None:
        context.set_alpn_select_callback(alpnSelect)
    if clientCA is not None:
        store = context.get_cert_store()
        for ca in clientCA:
            store.add_cert(crypto.X509.from_cryptography(ca))
        for ca in clientCA:
            context.add_client_ca(ca)
        mode = SSL.VERIFY_PEER
        if config.clientVerify == "required":
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(mode, _verified)
        context.set_verify_depth(VERIFY_DEPTH)
    return context


def _verified(connection, certificate, errorNumber: int, depth: int, ok: int) -> bool:
    # OpenSSL's own verdict: chain to the client CA, dates, purpose.
    return bool(ok)


def _read(source: str, key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise ConfigError(source, key, f"cannot read {path}: {error.strerror or error}") from None


def _readCertificates(source: str, key: str, path: str) -> list[x509.Certificate]:
    data = _read(source, key, path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigError(source, key, f"expected PEM certificates in {path}, found none that parse")
    return certificates


def _readCA(source: str, key: str, path: str) -> list[x509.Certificate]:
    return _readCertificates(source, key, path)


def _readCertificate(source: str, key: str, config: CertificateConfig):
    certKey = f"{key}.cert"
    chain = _readCertificates(source, certKey, config.cert)
    leaf = chain[0]
    now = datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc < now:
        raise ConfigError(
            source, certKey, f"certificate in {config.cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if leaf.not_valid_before_utc > now:
        raise ConfigError(
            source,
            certKey,
            f"certificate in {config.cert} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
        )
    keyKey = f"{key}.key"
    keyData = _read(source, keyKey, config.key)
    try:
        privateKey = serialization.load_pem_private_key(keyData, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            source, keyKey, f"expected an unencrypted PEM private key in {config.key}, found none that parses"
        ) from None
    if _publicBytes(privateKey.public_key()) != _publicBytes(leaf.public_key()):
        raise ConfigError(
            source, keyKey, f"the private key in {config.key} does not belong to the certificate in {config.cert}"
        )
    names = config.names or certificateNames(leaf)
    if not names:
        raise ConfigError(
            source, certKey, f"certificate in {config.cert} names no host (no DNS subjectAltName nor common name); set names"
        )
    return chain, privateKey, tuple(names), leaf.not_valid_after_utc


def _publicBytes(publicKey) -> bytes:
    return publicKey.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certificateNames(certificate: x509.Certificate) -> tuple[str, ...]:
    """
    The host names C{certificate} is for: the DNS entries of its
    subjectAltName, else its common name (lowercase).
    """
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        extension = None
    if extension is not None:
        names = extension.value.get_values_for_type(x509.DNSName)
        if names:
            return tuple(name.lower().rstrip(".") for name in names)
    return tuple(
        str(attribute.value).lower()
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    )
