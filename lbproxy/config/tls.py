"""
TLS settings: termination on listeners (C{[listeners.NAME.tls]}) and TLS to
the servers of a pool (C{[pools.NAME.tls]}).

Only the shape of the settings is checked here. Whether the files exist,
parse, match their keys and are in date is checked when the certificates
are loaded (L{lbproxy.tls.certificates}), at startup, by C{--check} and on
every reload, with errors naming the same keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lbproxy.config.table import Table, show

TLS_VERSIONS = ("1.2", "1.3")
CLIENT_VERIFY = ("none", "optional", "required")

#: TLS 1.2 suites offered by default: forward secrecy and AEAD only (TLS 1.3
#: suites are OpenSSL's own, all of which qualify).
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

_ALPN = re.compile(r"[\x21-\x7e]{1,255}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_SERVER_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_CIPHERS = re.compile(r"[A-Za-z0-9:+!@=_-]{1,4096}")


@dataclass(frozen=True)
class CertificateConfig:
    """
    One certificate a listener can present.

    @ivar cert: PEM file: the certificate, then its chain (intermediates).
    @ivar key: PEM file holding the private key (may be C{cert} itself).
    @ivar names: host names (exact or C{*.example.com}) the certificate is
        chosen for by SNI; empty: the DNS names of its subjectAltName (or
        its common name when it has none).
    """

    cert: str
    key: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListenerTLSConfig:
    """
    TLS termination on a listener.

    @ivar certificates: chosen by the SNI name a client sends; the first
        is the default, for clients that send no name or an unknown one.
    @ivar alpn: protocols offered by ALPN, in preference order; HTTP
        listeners default to C{("http/1.1",)}, others to none.
    @ivar clientVerify: C{"none"}, C{"optional"} (a certificate a client
        sends must verify against C{clientCA}) or C{"required"}.
    @ivar clientSubjectHeader: HTTP: request header carrying the verified
        client certificate's subject to the server; removed from whatever
        the client sends, always.
    @ivar starttls: mail listeners: offer STARTTLS/STLS on a plain
        connection instead of starting with TLS (implicit TLS).
    """

    certificates: tuple[CertificateConfig, ...]
    minVersion: str = "1.2"
    ciphers: str = DEFAULT_CIPHERS
    alpn: tuple[str, ...] = ()
    clientCA: str | None = None
    clientVerify: str = "none"
    clientSubjectHeader: str = "X-Client-Subject"
    starttls: bool = False


@dataclass(frozen=True)
class BackendTLSConfig:
    """
    TLS from lbproxy to the servers of a pool.

    @ivar verify: check the server's certificate against C{ca} (or the
        system's trust store when C{ca} is None) and its name against
        C{serverName}. Turning it off must be explicit.
    @ivar serverName: the name sent by SNI and checked in the server's
        certificate; None: the host of each server's address (an IP
        address is then checked against the certificate's IP entries and
        no SNI is sent).
    @ivar cert: client certificate (PEM, with chain) presented to servers.
    @ivar key: its private key.
    @ivar starttls: mail pools: connect in plaintext and upgrade with
        STARTTLS/STLS instead of implicit TLS.
    """

    verify: bool = True
    ca: str | None = None
    serverName: str | None = None
    cert: str | None = None
    key: str | None = None
    minVersion: str = "1.2"
    starttls: bool = False


def parseListenerTLS(t: Table, rules, mode: str) -> ListenerTLSConfig:
    """
    Validate C{[listeners.NAME.tls]} of a listener of C{mode}, whose front
    allows what its L{lbproxy.modes.TLSRules} C{rules} say.
    """
    certificates = []
    items = t.list("certificates", required=True)
    if not items:
        t.fail("certificates", "expected at least one certificate")
    for index, item in enumerate(items):
        ct = t.tableAt("certificates", index, item)
        cert = _path(ct, "cert", required=True)
        key = _path(ct, "key", default=cert)
        names = []
        for nameIndex, name in enumerate(ct.list("names")):
            if not isinstance(name, str) or not _hostPattern(name):
                ct.fail(
                    f"names[{nameIndex}]",
                    f'expected a host name such as "www.example.com" or "*.example.com", got {show(name)}',
                )
            names.append(name.lower())
        ct.done()
        certificates.append(CertificateConfig(cert=cert, key=key, names=tuple(names)))
    minVersion = t.choice("min_version", TLS_VERSIONS, "1.2")
    ciphers = t.string("ciphers", default=DEFAULT_CIPHERS)
    if not _CIPHERS.fullmatch(ciphers):
        t.fail("ciphers", f'expected an OpenSSL cipher list such as "ECDHE-RSA-AES128-GCM-SHA256", got {ciphers!r}')
    alpn = t.list("alpn") if "alpn" in t.data else list(rules.alpn)
    t.seen.add("alpn")
    for index, protocol in enumerate(alpn):
        if not isinstance(protocol, str) or not _ALPN.fullmatch(protocol):
            t.fail(f"alpn[{index}]", f'expected a protocol name such as "http/1.1", got {show(protocol)}')
        if rules.alpnAllowed is not None and protocol not in rules.alpnAllowed:
            allowed = " or ".join(f'"{name}"' for name in rules.alpnAllowed)
            t.fail(
                f"alpn[{index}]",
                f"expected only {allowed} on a mode = \"{mode}\" listener (the protocols it speaks), got {protocol!r}",
            )
    clientVerify = t.choice("client_verify", CLIENT_VERIFY, "none")
    clientCA = _path(t, "client_ca", default=None)
    if clientVerify != "none" and clientCA is None:
        t.fail("client_ca", f'expected a CA file to verify client certificates with client_verify = "{clientVerify}"')
    if clientVerify == "none" and clientCA is not None:
        t.fail("client_verify", 'expected "optional" or "required" with client_ca (or no client_ca)')
    header = t.string("client_subject_header", default="X-Client-Subject")
    if "client_subject_header" in t.data:
        if not rules.clientSubjectHeader:
            from lbproxy.modes import modesWhere

            t.fail("client_subject_header", f"expected only with mode = {modesWhere(lambda m: m.tlsRules.clientSubjectHeader)}")
        if not _HEADER_NAME.fullmatch(header):
            t.fail("client_subject_header", f"expected a header name, got {header!r}")
    starttls = t.boolean("starttls", False)
    if starttls and not rules.startTLS:
        from lbproxy.modes import modesWhere

        t.fail("starttls", f"expected only with mode = {modesWhere(lambda m: m.tlsRules.startTLS)}")
    t.done()
    return ListenerTLSConfig(
        certificates=tuple(certificates),
        minVersion=minVersion,
        ciphers=ciphers,
        alpn=tuple(alpn),
        clientCA=clientCA,
        clientVerify=clientVerify,
        clientSubjectHeader=header,
        starttls=starttls,
    )


def parseBackendTLS(t: Table) -> BackendTLSConfig:
    """
    Validate C{[pools.NAME.tls]}.
    """
    verify = t.boolean("verify", True)
    ca = _path(t, "ca", default=None)
    if not verify and ca is not None:
        t.fail("ca", "expected no CA file with verify = false (nothing would be checked)")
    serverName = t.string("server_name", default=None)
    if serverName is not None and not _SERVER_NAME.fullmatch(serverName):
        t.fail("server_name", f'expected a host name such as "app.internal", got {serverName!r}')
    cert = _path(t, "cert", default=None)
    key = _path(t, "key", default=cert)
    if key is not None and cert is None:
        t.fail("cert", "expected a client certificate file with key")
    config = BackendTLSConfig(
        verify=verify,
        ca=ca,
        serverName=serverName,
        cert=cert,
        key=key,
        minVersion=t.choice("min_version", TLS_VERSIONS, "1.2"),
        starttls=t.boolean("starttls", False),
    )
    t.done()
    return config


def _path(t: Table, key: str, default=None, required: bool = False):
    value = t.string(key, default=default, required=required)
    if value is not None and value is not default and (not value or "\0" in value):
        t.fail(key, f"expected a file path, got {value!r}")
    return value


def _hostPattern(name: str) -> bool:
    name = name.lower()
    if name.startswith("*."):
        name = name[2:]
    return bool(_SERVER_NAME.fullmatch(name)) and ".." not in name
