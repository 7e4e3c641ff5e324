"""
Tests for L{lbproxy.http.context}: the keys an HTTP request offers to
hashing selectors, and the request views routing shares.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from zope.interface.verify import verifyObject

from lbproxy.core.context import FlowContext
from lbproxy.http.mode import HTTPMode
from lbproxy.http.context import (
    HTTPFlowContext,
    parseCookies,
    parseQuery,
    requestHost,
    requestPath,
    requestURI,
)
from lbproxy.http.message import Headers, RequestHead
from lbproxy.http.parser import RequestParser
from lbproxy.interfaces import ISelectionContext

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)
LOCAL = IPv4Address("TCP", "127.0.0.1", 8080)


class _Heads:
    def __init__(self) -> None:
        self.heads: list[RequestHead] = []

    def headersComplete(self, head: RequestHead) -> None:
        self.heads.append(head)

    def bodyData(self, data: bytes) -> None:
        pass

    def messageComplete(self) -> None:
        pass


def parseHead(raw: bytes) -> RequestHead:
    """
    The head the strict parser makes of C{raw} (one request head).
    """
    receiver = _Heads()
    RequestParser(receiver).dataReceived(raw)
    [head] = receiver.heads
    return head


def request(target: bytes = b"/", *fields: bytes, method: bytes = b"GET", version: bytes = b"1.1") -> RequestHead:
    lines = [method + b" " + target + b" HTTP/" + version]
    lines.extend(fields)
    return parseHead(b"\r\n".join(lines) + b"\r\n\r\n")


def context(head: RequestHead, client=CLIENT) -> HTTPFlowContext:
    return HTTPFlowContext(client, LOCAL, head)


def test_interface():
    ctx = context(request(b"/", b"Host: a"))
    assert verifyObject(ISelectionContext, ctx)
    assert isinstance(ctx, FlowContext)
    assert ctx.protocol == "tcp"
    assert ctx.excluded == set()
    assert ctx.client is CLIENT and ctx.local is LOCAL


def test_tcpKeysStillProvided():
    head = request(b"/", b"Host: a")
    ctx = context(head)
    plain = FlowContext(CLIENT, LOCAL)
    for spec in ("src", "dst", "src_port", "5tuple"):
        assert ctx.key(spec) == plain.key(spec)
    assert ctx.key("src") == bytes([192, 0, 2, 7])


def test_everyHTTPKeyKindAnswers():
    """
    Each key kind the config accepts for HTTP listeners has an answer.
    """
    head = request(
        b"/p?q=1", b"Host: a", b"X-K: v", b"Cookie: c=1"
    )
    ctx = context(head)
    for kind in HTTPMode.selectionKeys:
        spec = kind + {"header:": "x-k", "cookie:": "c", "url_param:": "q"}.get(kind, "")
        assert ctx.key(spec) is not None, spec


@pytest.mark.parametrize(
    "target, uri, path",
    [
        (b"/", b"/", b"/"),
        (b"/a/b", b"/a/b", b"/a/b"),
        (b"/a/b?x=1&y", b"/a/b?x=1&y", b"/a/b"),
        (b"/a?", b"/a?", b"/a"),
        (b"/%2e%2e/x?a=%20", b"/%2e%2e/x?a=%20", b"/%2e%2e/x"),
        (b"/a/../b", b"/a/../b", b"/a/../b"),
        (b"/a?b?c", b"/a?b?c", b"/a"),
    ],
)
def test_uriAndPathOriginForm(target, uri, path):
    ctx = context(request(target, b"Host: a"))
    assert ctx.key("uri") == uri
    assert ctx.key("path") == path


@pytest.mark.parametrize(
    "target, uri, path",
    [
        (b"http://a/x?y=1", b"/x?y=1", b"/x"),
        (b"http://a:8080/x/", b"/x/", b"/x/"),
        (b"http://a", b"/", b"/"),
        (b"http://a?q=1", b"/?q=1", b"/"),
        (b"HTTPS://a/", b"/", b"/"),
    ],
)
def test_uriAndPathAbsoluteForm(target, uri, path):
    head = request(target, b"Host: " + target.split(b"://")[1].split(b"/")[0].split(b"?")[0])
    assert head.targetForm == "absolute"
    ctx = context(head)
    assert (ctx.key("uri"), ctx.key("path")) == (uri, path)
    assert (requestURI(head), requestPath(head)) == (uri, path)


def test_asteriskForm():
    head = request(b"*", b"Host: a", method=b"OPTIONS")
    ctx = context(head)
    assert (ctx.key("uri"), ctx.key("path")) == (b"*", b"*")


def test_authorityFormHasNoPath():
    head = request(b"example.com:443", b"Host: example.com:443", method=b"CONNECT")
    ctx = context(head)
    assert ctx.key("uri") is None
    assert ctx.key("path") is None
    assert ctx.key("url_param:x") is None
    assert ctx.key("host") == b"example.com"


@pytest.mark.parametrize(
    "host, expected",
    [
        (b"Example.COM", b"example.com"),
        (b"example.com:8080", b"example.com"),
        (b"www.example.com.", b"www.example.com"),
        (b"www.example.com.:80", b"www.example.com"),
        (b"[::1]:8080", b"[::1]"),
        (b"[2001:DB8::1]", b"[2001:db8::1]"),
        (b"10.0.0.1:80", b"10.0.0.1"),
    ],
)
def test_host(host, expected):
    head = request(b"/", b"Host: " + host)
    assert context(head).key("host") == expected
    assert requestHost(head) == expected


def test_hostFromAbsoluteTarget():
    head = request(b"http://WWW.Example.com:80/x", b"Host: www.example.com")
    assert context(head).key("host") == b"www.example.com"


def test_noHostOnHTTP10():
    head = request(b"/", version=b"1.0")
    assert context(head).key("host") is None


def test_header():
    head = request(b"/", b"Host: a", b"X-Tenant: blue", b"x-tenant: green", b"Empty:")
    ctx = context(head)
    assert ctx.key("header:X-Tenant") == b"blue"
    assert ctx.key("header:x-tenant") == b"blue"
    assert ctx.key("header:Empty") == b""
    assert ctx.key("header:Missing") is None
    assert ctx.key("header:") is None


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"a=1", [(b"a", b"1")]),
        (b"a=1; b=2", [(b"a", b"1"), (b"b", b"2")]),
        (b"a=1;b=2", [(b"a", b"1"), (b"b", b"2")]),
        (b"  a = 1 ;  b=2  ", [(b"a", b"1"), (b"b", b"2")]),
        (b'a="quoted"', [(b"a", b"quoted")]),
        (b"a=", [(b"a", b"")]),
        (b"a=1; garbage; b=2", [(b"a", b"1"), (b"b", b"2")]),
        (b"a=1; =x; b=2", [(b"a", b"1"), (b"b", b"2")]),
        (b"a=x y; b=2", [(b"b", b"2")]),
        (b'a=x"y; b=2', [(b"b", b"2")]),
        (b"a=x,y; b=2", [(b"b", b"2")]),
        (b"a=x\\y; b=2", [(b"b", b"2")]),
        (b'a="x; b=2', [(b"b", b"2")]),
        (b"n(ame)=1; b=2", [(b"b", b"2")]),
        (b"a=b=c", [(b"a", b"b=c")]),
        (b"a=1|2|3", [(b"a", b"1|2|3")]),
        (b";;", []),
        (b"", []),
    ],
)
def test_parseCookies(value, expected):
    assert parseCookies(value) == expected


def test_cookieKey():
    head = request(
        b"/",
        b"Host: a",
        b"Cookie: sid=abc; theme=dark",
        b"Cookie: sid=second; lang=en",
    )
    ctx = context(head)
    assert ctx.key("cookie:sid") == b"abc"
    assert ctx.key("cookie:lang") == b"en"
    assert ctx.key("cookie:SID") is None
    assert ctx.key("cookie:missing") is None


def test_noCookieHeader():
    assert context(request(b"/", b"Host: a")).key("cookie:sid") is None


@pytest.mark.parametrize(
    "query, expected",
    [
        (b"a=1&b=2", {b"a": b"1", b"b": b"2"}),
        (b"a=1&a=2", {b"a": b"1"}),
        (b"flag&x=", {b"flag": b"", b"x": b""}),
        (b"&&a=1&", {b"a": b"1"}),
        (b"a=%20b&c=d=e", {b"a": b"%20b", b"c": b"d=e"}),
        (b"", {}),
    ],
)
def test_parseQuery(query, expected):
    assert parseQuery(query) == expected


def test_urlParamKey():
    ctx = context(request(b"/s?user=42&user=43&debug&q=a%2Fb", b"Host: a"))
    assert ctx.key("url_param:user") == b"42"
    assert ctx.key("url_param:debug") == b""
    assert ctx.key("url_param:q") == b"a%2Fb"
    assert ctx.key("url_param:missing") is None
    assert ctx.key("url_param:") is None


def test_urlParamWithoutQuery():
    assert context(request(b"/s", b"Host: a")).key("url_param:user") is None


def test_urlParamAbsoluteForm():
    ctx = context(request(b"http://a/s?user=7", b"Host: a"))
    assert ctx.key("url_param:user") == b"7"


def test_unknownKeys():
    ctx = context(request(b"/", b"Host: a"))
    assert ctx.key("user") is None
    assert ctx.key("nonsense:x") is None
    assert ctx.key("nonsense") is None


def test_parsedOncePerRequest():
    """
    Cookies and the query are parsed on first use and cached: later
    changes to the head do not show.
    """
    head = request(b"/?a=1", b"Host: a", b"Cookie: c=1")
    ctx = context(head)
    assert ctx.key("cookie:c") == b"1"
    assert ctx.key("url_param:a") == b"1"
    head.headers.set(b"Cookie", b"c=2")
    head.target = b"/?a=2"
    assert ctx.key("cookie:c") == b"1"
    assert ctx.key("url_param:a") == b"1"
    assert ctx.cookies() is ctx.cookies()
    assert ctx.queryParameters() is ctx.queryParameters()


def test_handBuiltHead():
    """
    A head built without the parser (default origin form, no authority).
    """
    head = RequestHead(b"GET", b"/x?k=v", (1, 1), Headers([(b"Cookie", b"s=1")]))
    ctx = HTTPFlowContext(IPv6Address("TCP", "::1", 1), LOCAL, head)
    assert ctx.key("host") is None
    assert ctx.key("path") == b"/x"
    assert ctx.key("url_param:k") == b"v"
    assert ctx.key("cookie:s") == b"1"
    assert ctx.key("src") == bytes(15) + b"\x01"


def test_nonAsciiArgumentsAreLookedUpAsUtf8():
    ctx = context(request(b"/?a=1", b"Host: a", b"Cookie: c=1"))
    for spec in ("header:€", "cookie:€", "url_param:€"):
        assert ctx.key(spec) is None
