"""
Tests for lbproxy.http.forwarded: X-Forwarded-* and RFC 7239 Forwarded.
"""

from __future__ import annotations

import pytest

from lbproxy.http.forwarded import (
    ForwardingHeaders,
    TrustedNetworks,
    forwardedNode,
    parseForwarded,
    parseForwardedFor,
)
from lbproxy.http.message import Headers

TRUSTED = TrustedNetworks(["10.0.0.0/8", "::1", "2001:db8:1::/48"])


def apply(headers: Headers, clientHost: str, **kwargs) -> Headers:
    forwarding = ForwardingHeaders(
        TRUSTED,
        xForwarded=kwargs.pop("xForwarded", True),
        forwarded=kwargs.pop("forwarded", False),
    )
    arguments = dict(clientPort=40000, proto="https", host=b"www.example.com", port=443)
    arguments.update(kwargs)
    forwarding.apply(headers, clientHost=clientHost, **arguments)
    return headers


@pytest.mark.parametrize(
    "host, trusted",
    [
        ("10.1.2.3", True),
        ("11.0.0.1", False),
        ("::1", True),
        ("::2", False),
        ("::ffff:10.9.9.9", True),
        ("2001:db8:1:ff::5", True),
        ("fe80::1%eth0", False),
        ("/run/lbproxy.sock", False),
        ("", False),
    ],
)
def test_trustedNetworks(host: str, trusted: bool) -> None:
    assert (host in TRUSTED) is trusted


def test_trustedNetworksInvalid() -> None:
    with pytest.raises(ValueError):
        TrustedNetworks(["10.0.0.0/33"])
    assert not TrustedNetworks()


def test_untrustedClientReplacesChain() -> None:
    headers = Headers(
        [
            (b"Host", b"www.example.com"),
            (b"X-Forwarded-For", b"1.2.3.4"),
            (b"X-Forwarded-Proto", b"http"),
            (b"X-Forwarded-Host", b"evil.example"),
            (b"X-Forwarded-Port", b"1"),
        ]
    )
    apply(headers, "192.0.2.7")
    assert headers.items() == [
        (b"Host", b"www.example.com"),
        (b"X-Forwarded-For", b"192.0.2.7"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"www.example.com"),
        (b"X-Forwarded-Port", b"443"),
    ]


def test_trustedClientAppends() -> None:
    headers = Headers(
        [
            (b"X-Forwarded-For", b"203.0.113.9, 198.51.100.1"),
            (b"x-forwarded-for", b"2001:db8::7"),
            (b"X-Forwarded-Proto", b"http"),
            (b"X-Forwarded-Host", b"orig.example:8080"),
        ]
    )
    apply(headers, "10.0.0.2")
    assert headers.getAll(b"x-forwarded-for") == [b"203.0.113.9, 198.51.100.1, 2001:db8::7, 10.0.0.2"]
    # The first proxy's view is kept when it is well formed.
    assert headers.get(b"x-forwarded-proto") == b"http"
    assert headers.get(b"x-forwarded-host") == b"orig.example:8080"
    assert headers.get(b"x-forwarded-port") == b"443"


@pytest.mark.parametrize(
    "incoming",
    [b"1.2.3.4, , 5.6.7.8", b"1.2.3.4, evil", b"1.2.3.4\xa0", b"1.2.3.4, 300.1.1.1", b"[::1", b"1.2.3.4:x"],
)
def test_trustedClientMalformedChainDropped(incoming: bytes) -> None:
    headers = apply(Headers([(b"X-Forwarded-For", incoming)]), "10.0.0.2")
    assert headers.getAll(b"x-forwarded-for") == [b"10.0.0.2"]


def test_trustedClientMalformedProtoReplaced() -> None:
    headers = Headers([(b"X-Forwarded-Proto", b"gopher"), (b"X-Forwarded-Port", b"99999")])
    apply(headers, "10.0.0.2")
    assert headers.get(b"x-forwarded-proto") == b"https"
    assert headers.get(b"x-forwarded-port") == b"443"


def test_parseForwardedFor() -> None:
    assert parseForwardedFor([b"1.2.3.4:80, [2001:db8::1]:443, unknown, ::1"]) == [
        b"1.2.3.4:80",
        b"[2001:db8::1]:443",
        b"unknown",
        b"::1",
    ]
    assert parseForwardedFor([b"1.2.3.4:99x"]) is None
    assert parseForwardedFor([b"[1.2.3.4]"]) is None


def test_ipv6ClientInXForwardedFor() -> None:
    headers = apply(Headers(), "2001:db8::1")
    assert headers.get(b"x-forwarded-for") == b"2001:db8::1"


def test_noHost() -> None:
    headers = apply(Headers([(b"X-Forwarded-Host", b"spoof")]), "192.0.2.1", host=None)
    assert b"x-forwarded-host" not in headers


def test_xForwardedDisabledStillStripsSpoofedValues() -> None:
    headers = Headers([(b"X-Forwarded-For", b"1.1.1.1"), (b"X-Forwarded-Proto", b"https")])
    apply(headers, "192.0.2.1", xForwarded=False)
    assert len(headers) == 0
    headers = Headers([(b"X-Forwarded-For", b"1.1.1.1")])
    apply(headers, "10.0.0.1", xForwarded=False)
    assert headers.get(b"x-forwarded-for") == b"1.1.1.1"


@pytest.mark.parametrize(
    "host, port, node",
    [
        ("192.0.2.43", None, b"192.0.2.43"),
        ("192.0.2.43", 4711, b'"192.0.2.43:4711"'),
        ("2001:db8:cafe::17", None, b'"[2001:db8:cafe::17]"'),
        ("::1", 4711, b'"[::1]:4711"'),
        ("2001:0db8:0000::0001", None, b'"[2001:db8::1]"'),
        ("fe80::1%eth0", None, b'"[fe80::1]"'),
        ("/run/sock", 5, b"unknown"),
    ],
)
def test_forwardedNode(host: str, port: int | None, node: bytes) -> None:
    assert forwardedNode(host, port) == node


def test_forwardedElement() -> None:
    headers = apply(
        Headers([(b"Forwarded", b"for=1.2.3.4")]),
        "::1",
        forwarded=True,
        xForwarded=False,
        clientPort=5555,
        host=b"www.example.com:8443",
        by=("2001:db8::2", 443),
    )
    assert headers.getAll(b"forwarded") == [
        b'for=1.2.3.4, for="[::1]:5555";by="[2001:db8::2]:443";proto=https;host="www.example.com:8443"'
    ]


def test_forwardedUntrustedDropsIncoming() -> None:
    headers = apply(
        Headers([(b"Forwarded", b"for=1.2.3.4;proto=https")]),
        "192.0.2.1",
        forwarded=True,
        proto="http",
        clientPort=None,
    )
    assert headers.getAll(b"forwarded") == [b"for=192.0.2.1;proto=http;host=www.example.com"]
    headers = apply(Headers([(b"Forwarded", b"for=1.2.3.4")]), "192.0.2.1")
    assert b"forwarded" not in headers


def test_forwardedTrustedMalformedDropped() -> None:
    headers = apply(
        Headers([(b"Forwarded", b"for=1.2.3.4;;")]), "10.0.0.1", forwarded=True, clientPort=None
    )
    assert headers.getAll(b"forwarded") == [b"for=10.0.0.1;proto=https;host=www.example.com"]


def test_parseForwarded() -> None:
    assert parseForwarded([b'for="[2001:db8::1]:80";proto=http, For=1.2.3.4', b'by="a,b;c"']) == [
        [(b"for", b'"[2001:db8::1]:80"'), (b"proto", b"http")],
        [(b"for", b"1.2.3.4")],
        [(b"by", b'"a,b;c"')],
    ]
    for bad in (b"for", b"for=", b"for=a b", b"for=a;for=b", b'for="a', b"for=a,,for=b", b"for=a;"):
        assert parseForwarded([bad]) is None, bad
