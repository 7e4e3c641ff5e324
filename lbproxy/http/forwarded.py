"""
X-Forwarded-* and RFC 7239 Forwarded headers added to forwarded requests.

A client can send these headers itself to lie about its address. Incoming
values are therefore kept only when the client is a trusted proxy (its
address is in the configured networks) and the values parse cleanly;
otherwise they are removed and the proxy's own view replaces them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from lbproxy.http.message import Headers
from lbproxy.http.syntax import QUOTED_STRING, TOKEN, isToken, parseHostPort

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_pair = re.compile(rb"(" + TOKEN + rb")=(" + TOKEN + rb"|" + QUOTED_STRING + rb")")
_port = re.compile(rb"[0-9]{1,5}")

_X_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port")


def parseAddress(host: str) -> _Address | None:
    """
    The IP address in C{host} (a Twisted address's C{host}), without an IPv6
    zone, or L{None} when it is not an IP address.
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    return address


class TrustedNetworks:
    """
    The networks whose clients are trusted proxies, e.g.
    C{TrustedNetworks(["10.0.0.0/8", "::1"])}.

    An IPv4-mapped IPv6 client (C{::ffff:10.1.2.3}) matches IPv4 networks.
    """

    def __init__(self, networks: Iterable[str] = ()) -> None:
        """
        @raise ValueError: a network is not an address or CIDR block.
        """
        self.networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in networks
        )

    def __contains__(self, host: str) -> bool:
        address = parseAddress(host)
        if address is None:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)


def _validForwardedForElement(element: bytes) -> bool:
    """
    Whether an X-Forwarded-For element is an IP address, optionally with a
    port (C{192.0.2.1:80}, C{[2001:db8::1]:80}), or C{unknown}.
    """
    if element.lower() == b"unknown":
        return True
    try:
        text = element.decode("ascii")
    except UnicodeDecodeError:
        return False
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest[:1] == ":" and _port.fullmatch(rest[1:].encode()))):
            return False
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    if text.count(":") == 1:
        text, _, port = text.partition(":")
        if not _port.fullmatch(port.encode()):
            return False
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            return False
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parseForwardedFor(values: list[bytes]) -> list[bytes] | None:
    """
    The elements of the X-Forwarded-For fields C{values} (in order), or
    L{None} when any element is malformed: then none of the chain can be
    relied on.
    """
    elements = []
    for value in values:
        for part in value.split(b","):
            element = part.strip(b" \t")
            if not _validForwardedForElement(element):
                return None
            elements.append(element)
    return elements


def parseForwarded(values: list[bytes]) -> list[list[tuple[bytes, bytes]]] | None:
    """
    The elements of the Forwarded fields C{values} (RFC 7239 §4), each a list
    of C{(lowercased parameter, raw value)} pairs; L{None} when malformed.
    Commas and semicolons inside quoted strings are handled.
    """
    elements: list[list[tuple[bytes, bytes]]] = []
    for value in values:
        pos = 0
        end = len(value)
        while True:
            while pos < end and value[pos] in b" \t":
                pos += 1
            pairs: list[tuple[bytes, bytes]] = []
            while True:
                match = _pair.match(value, pos)
                if match is None:
                    return None
                name = match.group(1).lower()
                if any(name == seen for seen, _ in pairs):
                    return None
                pairs.append((name, match.group(2)))
                pos = match.end()
                if pos < end and value[pos : pos + 1] == b";":
                    pos += 1
                    continue
                break
            elements.append(pairs)
            while pos < end and value[pos] in b" \t":
                pos += 1
            if pos == end:
                break
            if value[pos : pos + 1] != b",":
                return None
            pos += 1
    return elements


def _quoteIfNeeded(value: bytes) -> bytes:
    if isToken(value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def forwardedNode(host: str, port: int | None = None) -> bytes:
    """
    An RFC 7239 §6 node for C{host} and C{port}, quoted when needed:
    C{192.0.2.43}, C{"192.0.2.43:4711"}, C{"[2001:db8::1]"},
    C{"[2001:db8::1]:4711"}; a host that is not an IP address (a UNIX
    socket peer) is C{unknown}.
    """
    address = parseAddress(host)
    if address is None:
        node = b"unknown"
    elif address.version == 6:
        node = b"[%s]" % (address.compressed.encode("ascii"),)
    else:
        node = address.compressed.encode("ascii")
    if port is not None and address is not None:
        node += b":%d" % (port,)
    return _quoteIfNeeded(node)


def _hostOnly(host: str) -> bytes:
    address = parseAddress(host)
    if address is None:
        return b"unknown"
    return address.compressed.encode("ascii")


class ForwardingHeaders:
    """
    Adds the forwarding headers of one listener to requests.

    @param trusted: clients whose incoming forwarding headers are kept.
    @param xForwarded: write X-Forwarded-For, -Proto, -Host and -Port.
    @param forwarded: write an RFC 7239 Forwarded element.
    """

    def __init__(
        self,
        trusted: TrustedNetworks | None = None,
        *,
        xForwarded: bool = True,
        forwarded: bool = False,
    ) -> None:
        self.trusted = trusted if trusted is not None else TrustedNetworks()
        self.xForwarded = xForwarded
        self.forwarded = forwarded

    def apply(
        self,
        headers: Headers,
        *,
        clientHost: str,
        clientPort: int | None,
        proto: str,
        host: bytes | None,
        port: int | None,
        by: tuple[str, int | None] | None = None,
    ) -> None:
        """
        Update C{headers} (of a request about to be forwarded) in place.

        @param clientHost: the client's address (C{IPv4Address.host}).
        @param clientPort: the client's port, written in Forwarded only.
        @param proto: C{"http"} or C{"https"}, as the client connected.
        @param host: the Host the client asked for (L{None} if it sent none).
        @param port: the port the client connected to.
        @param by: the proxy's own address for Forwarded's C{by}, if wanted.
        """
        trustedClient = clientHost in self.trusted
        if self.xForwarded:
            self._applyXForwarded(headers, trustedClient, clientHost, proto, host, port)
        elif not trustedClient:
            for name in _X_FORWARDED:
                headers.remove(name)
        if self.forwarded:
            self._applyForwarded(headers, trustedClient, clientHost, clientPort, proto, host, by)
        elif not trustedClient:
            headers.remove(b"forwarded")

    def _applyXForwarded(
        self,
        headers: Headers,
        trustedClient: bool,
        clientHost: str,
        proto: str,
        host: bytes | None,
        port: int | None,
    ) -> None:
        chain: list[bytes] = []
        if trustedClient:
            chain = parseForwardedFor(headers.getAll(b"x-forwarded-for")) or []
        chain.append(_hostOnly(clientHost))
        headers.set(b"X-Forwarded-For", b", ".join(chain))

        values = {
            b"X-Forwarded-Proto": proto.encode("ascii"),
            b"X-Forwarded-Host": host,
            b"X-Forwarded-Port": None if port is None else b"%d" % (port,),
        }
        for name, ours in values.items():
            incoming = headers.getAll(name)
            if trustedClient and len(incoming) == 1 and _validForwardedValue(name, incoming[0]):
                continue
            headers.remove(name)
            if ours is not None:
                headers.add(name, ours)

    def _applyForwarded(
        self,
        headers: Headers,
        trustedClient: bool,
        clientHost: str,
        clientPort: int | None,
        proto: str,
        host: bytes | None,
        by: tuple[str, int | None] | None,
    ) -> None:
        incoming = headers.getAll(b"forwarded")
        headers.remove(b"forwarded")
        kept = b""
        if trustedClient and incoming and parseForwarded(incoming) is not None:
            kept = b", ".join(incoming)
        pairs = [b"for=" + forwardedNode(clientHost, clientPort)]
        if by is not None:
            pairs.append(b"by=" + forwardedNode(*by))
        pairs.append(b"proto=" + proto.encode("ascii"))
        if host is not None:
            pairs.append(b"host=" + _quoteIfNeeded(host))
        element = b";".join(pairs)
        headers.add(b"Forwarded", kept + b", " + element if kept else element)


def _validForwardedValue(name: bytes, value: bytes) -> bool:
    """
    Whether an incoming X-Forwarded-Proto, -Host or -Port value from a
    trusted proxy is well formed enough to pass on.
    """
    if name == b"X-Forwarded-Proto":
        return value.lower() in (b"http", b"https")
    if name == b"X-Forwarded-Port":
        return _port.fullmatch(value) is not None and int(value) <= 65535
    parsed = parseHostPort(value)
    return parsed is not None and bool(parsed[0])
