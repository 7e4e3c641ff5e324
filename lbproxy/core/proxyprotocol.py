"""
The PROXY protocol (versions 1 and 2) as HAProxy specifies it.

A proxy in front of lbproxy can prepend a PROXY header telling who the
client really is; lbproxy can prepend one when it connects to a backend so
the backend learns the client address. Version 1 is one line of text,
version 2 a binary block.

Building: L{buildV1}, L{buildV2}, L{buildV2Local} and L{buildHeader} (by
the C{send_proxy} setting). Parsing: L{ProxyHeaderParser}, fed the first
bytes of a connection, accepts either version and is strict: any deviation
from the format raises L{ProxyProtocolError}, because a receiver that
guesses would let clients spoof their address.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address

#: First bytes of a version 1 header.
V1_PREFIX = b"PROXY "
#: Longest version 1 line, CRLF included.
V1_MAX_LENGTH = 107
#: The 12-byte signature that starts a version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Signature, version/command, family/protocol and length.
V2_FIXED_LENGTH = 16
#: Default bound on the bytes after the fixed part of a version 2 header
#: (addresses and TLVs). The wire format allows 65535.
V2_DEFAULT_MAX_PAYLOAD = 4096

_V2_VERSION = 0x2
_V2_LOCAL = 0x0
_V2_PROXY = 0x1

# Family/protocol byte: minimum address block length. Only TCP over IPv4
# and IPv6 carry addresses lbproxy uses; the other valid combinations
# (UNSPEC, UDP, UNIX) fall back to the real connection's addresses, as the
# specification allows.
_V2_FAMILIES = {
    0x00: 0,  # UNSPEC
    0x11: 12,  # TCP over IPv4
    0x12: 12,  # UDP over IPv4
    0x21: 36,  # TCP over IPv6
    0x22: 36,  # UDP over IPv6
    0x31: 216,  # UNIX stream
    0x32: 216,  # UNIX datagram
}
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21

_V1_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)
_V1_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")

IPAddress = IPv4Address | IPv6Address


#: Seconds a trusted proxy has to send its PROXY header (the specification
#: asks for at least 3, to cover one TCP retransmission).
PROXY_HEADER_TIMEOUT = 5.0


class ProxyProtocolError(Exception):
    """
    A PROXY protocol header is malformed; C{str()} says how.
    """


@dataclass(frozen=True)
class ProxyHeader:
    """
    A parsed PROXY header.

    @ivar version: 1 or 2.
    @ivar source: the original client address, or None when the header
        carries none (v1 C{UNKNOWN}, v2 C{LOCAL} or an unused family): the
        receiver then uses the real connection's addresses.
    @ivar destination: the address the client connected to, or None like
        C{source}.
    """

    version: int
    source: IPAddress | None
    destination: IPAddress | None


def _ip(address: IPAddress) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(address.host.split("%", 1)[0])


def _unmapped(address):
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _ipPair(source, destination):
    """
    The two addresses as C{ipaddress} objects of one family, or None when
    they cannot be expressed as TCP over IP.

    IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4 clients) are
    given as IPv4; an IPv4 address paired with an IPv6 one as IPv4-mapped
    IPv6.
    """
    if not (
        isinstance(source, (IPv4Address, IPv6Address))
        and isinstance(destination, (IPv4Address, IPv6Address))
    ):
        return None
    try:
        src, dst = (_unmapped(_ip(a)) for a in (source, destination))
    except ValueError:
        return None
    if src.version != dst.version:
        src, dst = (
            ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a
            for a in (src, dst)
        )
    return src, dst


def buildV1(source: IPAddress | None, destination: IPAddress | None) -> bytes:
    """
    A version 1 header line for a TCP connection from C{source} to
    C{destination}; C{PROXY UNKNOWN} when they are not IP addresses.
    """
    pair = _ipPair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = pair
    family = "TCP4" if src.version == 4 else "TCP6"
    return (
        f"PROXY {family} {src.compressed} {dst.compressed} "
        f"{source.port} {destination.port}\r\n"
    ).encode("ascii")


def buildV2(source: IPAddress | None, destination: IPAddress | None) -> bytes:
    """
    A version 2 header with the PROXY command for a TCP connection from
    C{source} to C{destination}; a LOCAL header when they are not IP
    addresses.
    """
    pair = _ipPair(source, destination)
    if pair is None:
        return buildV2Local()
    src, dst = pair
    family = _V2_TCP4 if src.version == 4 else _V2_TCP6
    block = src.packed + dst.packed + struct.pack("!HH", source.port, destination.port)
    return V2_SIGNATURE + struct.pack(
        "!BBH", (_V2_VERSION << 4) | _V2_PROXY, family, len(block)
    ) + block


def buildV2Local() -> bytes:
    """
    A version 2 header with the LOCAL command: the connection is the
    proxy's own (a health check), with no client to report.
    """
    return V2_SIGNATURE + struct.pack("!BBH", (_V2_VERSION << 4) | _V2_LOCAL, 0, 0)


def buildHeader(
    version: str, source: IPAddress | None, destination: IPAddress | None
) -> bytes:
    """
    The header a pool's C{send_proxy} setting asks for: C{"v1"}, C{"v2"},
    or C{"none"} (no header, empty bytes).
    """
    if version == "v1":
        return buildV1(source, destination)
    if version == "v2":
        return buildV2(source, destination)
    if version == "none":
        return b""
    raise ValueError(f"unknown PROXY protocol version {version!r}")


class ProxyHeaderParser:
    """
    Parses the PROXY header at the start of a byte stream, either version.

    Feed it data as it arrives with L{feed}; it returns None until the
    header is complete, then the header and the bytes that followed it.
    It never holds more than the longest header it accepts.
    """

    def __init__(self, maxV2Payload: int = V2_DEFAULT_MAX_PAYLOAD) -> None:
        """
        @param maxV2Payload: most bytes of addresses and TLVs accepted in a
            version 2 header.
        """
        self.maxV2Payload = maxV2Payload
        self._buffer = b""
        self.done = False

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        """
        Add C{data}; return C{(header, rest)} once the header is complete,
        None while more bytes are needed.

        @raise ProxyProtocolError: the bytes cannot start a valid header.
        """
        if self.done:
            raise ProxyProtocolError("the PROXY header was already parsed")
        buffer = self._buffer + data
        self._buffer = buffer
        if buffer[:1] == b"P":
            if not V1_PREFIX.startswith(buffer[:6]):
                raise ProxyProtocolError("not a PROXY protocol header")
            result = self._parseV1(buffer)
        else:
            if not V2_SIGNATURE.startswith(buffer[:12]):
                raise ProxyProtocolError("not a PROXY protocol header")
            result = self._parseV2(buffer)
        if result is not None:
            self.done = True
            self._buffer = b""
        return result

    def _parseV1(self, buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
        end = buffer.find(b"\n", 0, V1_MAX_LENGTH)
        if end < 0:
            if b"\r" in buffer[:-1] or len(buffer) >= V1_MAX_LENGTH:
                raise ProxyProtocolError(
                    f"v1 header without CRLF in its first {V1_MAX_LENGTH} bytes"
                )
            return None
        if end == 0 or buffer[end - 1 : end] != b"\r" or b"\r" in buffer[: end - 1]:
            raise ProxyProtocolError("v1 header not ended by exactly one CRLF")
        line = buffer[: end - 1]
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise ProxyProtocolError("v1 header is not US-ASCII")
        return parseV1Line(text), buffer[end + 1 :]

    def _parseV2(self, buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
        if len(buffer) < V2_FIXED_LENGTH:
            return None
        versionCommand, family, length = struct.unpack_from("!BBH", buffer, 12)
        if versionCommand >> 4 != _V2_VERSION:
            raise ProxyProtocolError(
                f"v2 header with version {versionCommand >> 4}, expected 2"
            )
        command = versionCommand & 0x0F
        if command not in (_V2_LOCAL, _V2_PROXY):
            raise ProxyProtocolError(f"v2 header with unknown command {command:#x}")
        if family not in _V2_FAMILIES:
            raise ProxyProtocolError(
                f"v2 header with unknown family/protocol {family:#04x}"
            )
        if length > self.maxV2Payload:
            raise ProxyProtocolError(
                f"v2 header of {length} address/TLV bytes, more than the "
                f"{self.maxV2Payload} accepted"
            )
        minimum = _V2_FAMILIES[family]
        if length < minimum:
            raise ProxyProtocolError(
                f"v2 address block of {length} bytes, family {family:#04x} "
                f"needs {minimum}"
            )
        total = V2_FIXED_LENGTH + length
        if len(buffer) < total:
            return None
        payload = buffer[V2_FIXED_LENGTH:total]
        if family != 0x00:
            _checkTLVs(payload, minimum)
        rest = buffer[total:]
        if command == _V2_LOCAL or family not in (_V2_TCP4, _V2_TCP6):
            return ProxyHeader(2, None, None), rest
        if family == _V2_TCP4:
            src, dst = (str(ipaddress.IPv4Address(payload[i : i + 4])) for i in (0, 4))
            sport, dport = struct.unpack_from("!HH", payload, 8)
            return (
                ProxyHeader(
                    2, IPv4Address("TCP", src, sport), IPv4Address("TCP", dst, dport)
                ),
                rest,
            )
        src, dst = (
            ipaddress.IPv6Address(payload[i : i + 16]).compressed for i in (0, 16)
        )
        sport, dport = struct.unpack_from("!HH", payload, 32)
        return (
            ProxyHeader(
                2, IPv6Address("TCP", src, sport), IPv6Address("TCP", dst, dport)
            ),
            rest,
        )


def _checkTLVs(payload: bytes, offset: int) -> None:
    """
    Check that the TLVs after the address block tile it exactly.
    """
    while offset < len(payload):
        if len(payload) - offset < 3:
            raise ProxyProtocolError("v2 header with a truncated TLV")
        (size,) = struct.unpack_from("!H", payload, offset + 1)
        offset += 3 + size
        if offset > len(payload):
            raise ProxyProtocolError("v2 header with a TLV longer than the header")


def parseV1Line(text: str) -> ProxyHeader:
    """
    Parse one version 1 line, without its CRLF.

    @raise ProxyProtocolError: the line does not match the format exactly.
    """
    parts = text.split(" ")
    if parts[0] != "PROXY" or len(parts) < 2:
        raise ProxyProtocolError("v1 header not starting with 'PROXY '")
    family = parts[1]
    if family == "UNKNOWN":
        return ProxyHeader(1, None, None)
    if family not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"v1 header with unknown protocol {family[:8]!r}")
    if len(parts) != 6:
        raise ProxyProtocolError(
            "v1 header needs exactly: PROXY family source destination "
            "source-port destination-port, separated by single spaces"
        )
    srcText, dstText, sportText, dportText = parts[2:]
    if family == "TCP4":
        for text in (srcText, dstText):
            if not _V1_IPV4.fullmatch(text):
                raise ProxyProtocolError(f"v1 header with invalid IPv4 address {text[:45]!r}")
        addressType = IPv4Address
        src, dst = srcText, dstText
    else:
        src, dst = (_v1IPv6(text) for text in (srcText, dstText))
        addressType = IPv6Address
    sport, dport = (_v1Port(text) for text in (sportText, dportText))
    return ProxyHeader(
        1, addressType("TCP", src, sport), addressType("TCP", dst, dport)
    )


def _v1IPv6(text: str) -> str:
    if not _V1_IPV6_CHARS.fullmatch(text):
        raise ProxyProtocolError(f"v1 header with invalid IPv6 address {text[:45]!r}")
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise ProxyProtocolError(f"v1 header with invalid IPv6 address {text!r}")


def _v1Port(text: str) -> int:
    if not _V1_PORT.fullmatch(text) or int(text) > 65535:
        raise ProxyProtocolError(f"v1 header with invalid port {text[:8]!r}")
    return int(text)
