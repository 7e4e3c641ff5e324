"""
Tests for lbproxy.core.proxyprotocol: building and strictly parsing PROXY
protocol v1 and v2 headers.
"""

import struct

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from lbproxy.core.proxyprotocol import (
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyProtocolError,
    buildHeader,
    buildV1,
    buildV2,
    buildV2Local,
)

SRC4 = IPv4Address("TCP", "192.0.2.10", 51234)
DST4 = IPv4Address("TCP", "198.51.100.1", 443)
SRC6 = IPv6Address("TCP", "2001:db8::1", 40000)
DST6 = IPv6Address("TCP", "2001:db8::ffff:1", 80)


def parseAll(data: bytes, **kwargs):
    parser = ProxyHeaderParser(**kwargs)
    return parser.feed(data)


def parseBytewise(data: bytes):
    parser = ProxyHeaderParser()
    for i in range(len(data)):
        result = parser.feed(data[i : i + 1])
        if result is not None:
            return result, data[i + 1 :]
    return None


def v2(versionCommand: int, family: int, payload: bytes, length=None) -> bytes:
    size = len(payload) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", versionCommand, family, size) + payload


# Building


def test_buildV1TCP4():
    assert buildV1(SRC4, DST4) == b"PROXY TCP4 192.0.2.10 198.51.100.1 51234 443\r\n"


def test_buildV1TCP6():
    assert buildV1(SRC6, DST6) == (
        b"PROXY TCP6 2001:db8::1 2001:db8::ffff:1 40000 80\r\n"
    )


def test_buildV1Unknown():
    """
    Addresses that are not IP (a UNIX socket) give the UNKNOWN form.
    """
    unix = UNIXAddress("/run/x.sock")
    assert buildV1(unix, unix) == b"PROXY UNKNOWN\r\n"
    assert buildV1(None, None) == b"PROXY UNKNOWN\r\n"


def test_buildV1MappedAddressesAreIPv4():
    """
    A dual-stack listener sees IPv4 clients as IPv4-mapped IPv6; the header
    gives them as TCP4.
    """
    src = IPv6Address("TCP", "::ffff:192.0.2.10", 1000)
    dst = IPv6Address("TCP", "::ffff:192.0.2.1", 80)
    assert buildV1(src, dst) == b"PROXY TCP4 192.0.2.10 192.0.2.1 1000 80\r\n"


def test_buildV1MixedFamiliesAreIPv6():
    line = buildV1(SRC4, DST6)
    assert line == b"PROXY TCP6 ::ffff:c000:20a 2001:db8::ffff:1 51234 80\r\n"
    header, rest = parseAll(line)
    assert header.source.host == "::ffff:c000:20a"


def test_buildV2TCP4():
    data = buildV2(SRC4, DST4)
    assert data[:12] == V2_SIGNATURE
    assert data[12:16] == b"\x21\x11\x00\x0c"
    assert data[16:] == bytes([192, 0, 2, 10, 198, 51, 100, 1]) + struct.pack(
        "!HH", 51234, 443
    )


def test_buildV2TCP6():
    data = buildV2(SRC6, DST6)
    assert data[12:16] == b"\x21\x21\x00\x24"
    assert len(data) == 16 + 36


def test_buildV2Local():
    assert buildV2Local() == V2_SIGNATURE + b"\x20\x00\x00\x00"
    unix = UNIXAddress("/run/x.sock")
    assert buildV2(unix, unix) == buildV2Local()


def test_buildHeaderBySetting():
    assert buildHeader("none", SRC4, DST4) == b""
    assert buildHeader("v1", SRC4, DST4) == buildV1(SRC4, DST4)
    assert buildHeader("v2", SRC4, DST4) == buildV2(SRC4, DST4)
    with pytest.raises(ValueError):
        buildHeader("v3", SRC4, DST4)


# Round trips


@pytest.mark.parametrize("build", [buildV1, buildV2])
@pytest.mark.parametrize("src,dst", [(SRC4, DST4), (SRC6, DST6)])
def test_roundTrip(build, src, dst):
    data = build(src, dst) + b"GET / HTTP/1.0\r\n"
    header, rest = parseAll(data)
    assert header.source == src
    assert header.destination == dst
    assert header.version == (1 if build is buildV1 else 2)
    assert rest == b"GET / HTTP/1.0\r\n"


@pytest.mark.parametrize("build", [buildV1, buildV2])
def test_roundTripOneByteAtATime(build):
    """
    The parser is incremental: the header may arrive one byte at a time.
    """
    data = build(SRC6, DST6) + b"payload"
    (header, rest), after = parseBytewise(data)
    assert header.source == SRC6
    assert rest + after == b"payload"


def test_parseV1Extremes():
    line = b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n"
    header, rest = parseAll(line)
    assert header.source == IPv4Address("TCP", "255.255.255.255", 65535)
    assert header.destination == IPv4Address("TCP", "0.0.0.0", 0)


def test_parseV1LongestUnknownLine():
    """
    The longest line the specification allows (107 bytes) is accepted.
    """
    full = "ffff:" * 7 + "ffff"
    line = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(line) == V1_MAX_LENGTH
    header, rest = parseAll(line + b"x")
    assert header == ProxyHeader(1, None, None)
    assert rest == b"x"


def test_parseV1UnknownShort():
    header, rest = parseAll(b"PROXY UNKNOWN\r\nabc")
    assert header == ProxyHeader(1, None, None)
    assert rest == b"abc"


def test_parseV2Local():
    """
    LOCAL carries no client: the real connection's addresses apply. The
    address block is skipped even when present.
    """
    data = v2(0x20, 0x11, bytes(12)) + b"rest"
    header, rest = parseAll(data)
    assert header == ProxyHeader(2, None, None)
    assert rest == b"rest"


def test_parseV2UnspecAndUnusedFamilies():
    """
    UNSPEC, UDP and UNIX are valid but carry no TCP addresses: the real
    connection's addresses apply.
    """
    for family, size in [(0x00, 0), (0x12, 12), (0x22, 36), (0x31, 216), (0x32, 216)]:
        header, rest = parseAll(v2(0x21, family, bytes(size)) + b"z")
        assert header == ProxyHeader(2, None, None), hex(family)
        assert rest == b"z"


def test_parseV2SkipsTLVs():
    block = buildV2(SRC4, DST4)[16:]
    tlvs = b"\x04" + struct.pack("!H", 0) + b"\x01" + struct.pack("!H", 2) + b"h2"
    header, rest = parseAll(v2(0x21, 0x11, block + tlvs) + b"data")
    assert header.source == SRC4
    assert rest == b"data"


def test_parseWaitsForMore():
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY TCP4 1.2.3.4 ") is None
    assert parser.feed(b"5.6.7.8 1 2\r") is None
    header, rest = parser.feed(b"\n")
    assert header.source == IPv4Address("TCP", "1.2.3.4", 1)
    assert rest == b""
    parser = ProxyHeaderParser()
    assert parser.feed(buildV2(SRC4, DST4)[:20]) is None


def test_parserIsSingleUse():
    parser = ProxyHeaderParser()
    parser.feed(b"PROXY UNKNOWN\r\n")
    with pytest.raises(ProxyProtocolError):
        parser.feed(b"more")


# Every class of malformed header is rejected.

V1_MALFORMED = [
    (b"GET / HTTP/1.1\r\n", "not a PROXY"),
    (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "exactly"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "exactly"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "exactly"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "exactly"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "IPv4"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "IPv4"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "IPv4"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP6 ::1%eth0 ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP6 ::g ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "CRLF"),
    (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CRLF"),
    (b"PROXY UNKNOWN " + b"f" * 100 + b"\r\n", "107"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n", "ASCII"),
]


@pytest.mark.parametrize("data,why", V1_MALFORMED)
def test_v1Malformed(data, why):
    with pytest.raises(ProxyProtocolError, match=why):
        parseAll(data)


@pytest.mark.parametrize("data,why", V1_MALFORMED)
def test_v1MalformedBytewise(data, why):
    """
    Fed one byte at a time, a malformed header is still rejected, at the
    latest when its line ends.
    """
    with pytest.raises(ProxyProtocolError, match=why):
        parseBytewise(data)


def test_v1TooLongWithoutCRLFRejectedBeforeEnd():
    """
    A line with no CRLF is rejected after 107 bytes, without waiting.
    """
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyProtocolError, match="107"):
        parser.feed(b"PROXY UNKNOWN " + b"a" * 200)


def test_notAProxyHeaderRejectedEarly():
    """
    Bytes that cannot begin either version are rejected at once.
    """
    for data in (b"G", b"PRX", b"\r\n\r\nX", b"\x16\x03\x01"):
        with pytest.raises(ProxyProtocolError, match="not a PROXY"):
            ProxyHeaderParser().feed(data)


V2_MALFORMED = [
    (v2(0x11, 0x11, bytes(12)), "version 1"),
    (v2(0x31, 0x11, bytes(12)), "version 3"),
    (v2(0x22, 0x11, bytes(12)), "command"),
    (v2(0x2F, 0x11, bytes(12)), "command"),
    (v2(0x21, 0x13, bytes(12)), "family"),
    (v2(0x21, 0x41, bytes(12)), "family"),
    (v2(0x21, 0x10, bytes(12)), "family"),
    (v2(0x21, 0x01, bytes(12)), "family"),
    (v2(0x21, 0x11, bytes(8)), "needs 12"),
    (v2(0x21, 0x21, bytes(12)), "needs 36"),
    (v2(0x21, 0x31, bytes(100)), "needs 216"),
    (v2(0x21, 0x11, bytes(12) + b"\x01\x00"), "truncated TLV"),
    (v2(0x21, 0x11, bytes(12) + b"\x01\x00\x05ab"), "TLV longer"),
    (v2(0x21, 0x11, b"", length=5000), "more than"),
]


@pytest.mark.parametrize("data,why", V2_MALFORMED)
def test_v2Malformed(data, why):
    with pytest.raises(ProxyProtocolError, match=why):
        parseAll(data + bytes(64))


def test_v2LengthBoundConfigurable():
    data = v2(0x21, 0x11, bytes(12) + b"\x04\x00\x20" + bytes(32))
    with pytest.raises(ProxyProtocolError, match="more than the 40"):
        parseAll(data, maxV2Payload=40)
    header, rest = parseAll(data, maxV2Payload=47)
    assert header.source == IPv4Address("TCP", "0.0.0.0", 0)


def test_v2BadSignature():
    with pytest.raises(ProxyProtocolError, match="not a PROXY"):
        parseAll(b"\r\n\r\n\x00\r\nQUIX\n" + bytes(20))
