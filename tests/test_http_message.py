"""
Tests for lbproxy.http.message: header lists and hop-by-hop removal.
"""

from __future__ import annotations

import pytest

from lbproxy.http.message import Headers, persistentConnection


def sample() -> Headers:
    return Headers(
        [
            (b"Host", b"example.com"),
            (b"Accept", b"text/html"),
            (b"X-Tag", b"one"),
            (b"x-tag", b"two"),
        ]
    )


def test_lookupsAreCaseInsensitive() -> None:
    headers = sample()
    assert headers.get(b"HOST") == b"example.com"
    assert headers.get(b"x-TAG") == b"one"
    assert headers.getAll(b"X-Tag") == [b"one", b"two"]
    assert headers.get(b"missing") is None
    assert headers.get(b"missing", b"d") == b"d"
    assert headers.getAll(b"missing") == []
    assert b"ACCEPT" in headers
    assert b"cookie" not in headers
    assert len(headers) == 4


def test_orderAndCasePreserved() -> None:
    headers = sample()
    headers.add(b"Via", b"1.1 lbproxy")
    assert list(headers) == [
        (b"Host", b"example.com"),
        (b"Accept", b"text/html"),
        (b"X-Tag", b"one"),
        (b"x-tag", b"two"),
        (b"Via", b"1.1 lbproxy"),
    ]


def test_setReplacesFirstInPlace() -> None:
    headers = sample()
    headers.set(b"X-TAG", b"only")
    assert headers.items() == [
        (b"Host", b"example.com"),
        (b"Accept", b"text/html"),
        (b"X-TAG", b"only"),
    ]
    headers.set(b"New", b"v")
    assert headers.items()[-1] == (b"New", b"v")


def test_remove() -> None:
    headers = sample()
    assert headers.remove(b"X-TAG") == 2
    assert headers.remove(b"x-tag") == 0
    assert headers.items() == [(b"Host", b"example.com"), (b"Accept", b"text/html")]


def test_copyIsIndependent() -> None:
    headers = sample()
    copy = headers.copy()
    copy.remove(b"host")
    assert headers.get(b"host") == b"example.com"
    assert copy != headers


def test_connectionTokens() -> None:
    headers = Headers([(b"Connection", b"Keep-Alive, X-A,, "), (b"connection", b"close")])
    assert headers.connectionTokens() == frozenset({b"keep-alive", b"x-a", b"close"})


def test_removeHopByHop() -> None:
    headers = Headers(
        [
            (b"Host", b"example.com"),
            (b"Connection", b"keep-alive, X-Secret, Host"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-Checksum"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"websocket"),
            (b"x-secret", b"1"),
            (b"Accept", b"*/*"),
        ]
    )
    assert headers.removeHopByHop() is False
    # Host stays even though Connection names it.
    assert headers.items() == [(b"Host", b"example.com"), (b"Accept", b"*/*")]


def test_keepWebSocket() -> None:
    headers = Headers(
        [
            (b"Host", b"a"),
            (b"Connection", b"keep-alive, Upgrade"),
            (b"Upgrade", b"WebSocket"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Sec-WebSocket-Key", b"k"),
        ]
    )
    assert headers.removeHopByHop(keepWebSocket=True) is True
    assert headers.items() == [
        (b"Host", b"a"),
        (b"Upgrade", b"WebSocket"),
        (b"Sec-WebSocket-Key", b"k"),
        (b"Connection", b"Upgrade"),
    ]


@pytest.mark.parametrize(
    "fields",
    [
        [(b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"x")],
        [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket, h2c")],
        [(b"Upgrade", b"websocket")],
    ],
)
def test_otherUpgradesRemoved(fields) -> None:
    """
    h2c (or websocket without Connection: upgrade) never passes, even when
    websocket tunnels are allowed.
    """
    headers = Headers([(b"Host", b"a")] + fields)
    assert headers.removeHopByHop(keepWebSocket=True) is False
    assert headers.items() == [(b"Host", b"a")]


def test_websocketNotKeptUnlessAllowed() -> None:
    headers = Headers([(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")])
    assert headers.removeHopByHop() is False
    assert len(headers) == 0


@pytest.mark.parametrize(
    "version, tokens, expected",
    [
        ((1, 1), set(), True),
        ((1, 1), {b"close"}, False),
        ((1, 0), set(), False),
        ((1, 0), {b"keep-alive"}, True),
        ((1, 0), {b"keep-alive", b"close"}, False),
    ],
)
def test_persistentConnection(version, tokens, expected) -> None:
    assert persistentConnection(version, frozenset(tokens)) is expected
