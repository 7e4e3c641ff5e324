"""
Tests for lbproxy.http.parser: strict request and response parsing.
"""

from __future__ import annotations

import random

import pytest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.http.errors import HTTPParseError
from lbproxy.http.interfaces import IHTTPMessageParser, IHTTPMessageReceiver
from lbproxy.http.message import BodyKind, Headers
from lbproxy.http.parser import RequestParser, ResponseParser


@implementer(IHTTPMessageReceiver)
class Recorder:
    """
    Records parser events; optionally pauses the parser after each message.
    """

    def __init__(self, pauseAfterMessage: bool = False) -> None:
        self.events: list = []
        self.heads: list = []
        self.parser = None
        self.pauseAfterMessage = pauseAfterMessage

    def headersComplete(self, head) -> None:
        self.heads.append(head)
        self.events.append(("head", head))

    def bodyData(self, data: bytes) -> None:
        assert data, "empty body data delivered"
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        else:
            self.events.append(("body", data))

    def messageComplete(self) -> None:
        head = self.heads[-1]
        self.events.append(("complete", head.trailers))
        if self.pauseAfterMessage:
            self.parser.pauseParsing()


def requestParser(**kwargs) -> tuple[RequestParser, Recorder]:
    recorder = Recorder(kwargs.pop("pauseAfterMessage", False))
    parser = RequestParser(recorder, **kwargs)
    recorder.parser = parser
    return parser, recorder


def responseParser(*expected, **kwargs) -> tuple[ResponseParser, Recorder]:
    recorder = Recorder()
    parser = ResponseParser(recorder, **kwargs)
    recorder.parser = parser
    for method in expected:
        if isinstance(method, tuple):
            parser.expectResponse(*method)
        else:
            parser.expectResponse(method)
    return parser, recorder


def feed(parser, pieces) -> None:
    for piece in pieces:
        parser.dataReceived(piece)


def parseRequests(raw: bytes, pieces=None, **kwargs) -> list:
    parser, recorder = requestParser(**kwargs)
    feed(parser, pieces if pieces is not None else [raw])
    return recorder.events


def rejectionStatus(raw: bytes, **kwargs) -> int:
    parser, recorder = requestParser(**kwargs)
    with pytest.raises(HTTPParseError) as caught:
        parser.dataReceived(raw)
    assert parser.error is caught.value
    # Everything after an error is discarded.
    parser.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert all(kind != "head" or head is not None for kind, head in recorder.events)
    return caught.value.status


def request(*lines: bytes, body: bytes = b"") -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


GET = b"GET / HTTP/1.1"
HOST = b"Host: example.com"


# -- interfaces -----------------------------------------------------------------


def test_interfaces() -> None:
    parser, recorder = requestParser()
    assert verifyObject(IHTTPMessageParser, parser)
    assert verifyObject(IHTTPMessageReceiver, recorder)
    assert verifyObject(IHTTPMessageParser, ResponseParser(recorder))


# -- accepted requests ---------------------------------------------------------------


def test_simpleRequest() -> None:
    raw = request(GET, HOST, b"User-Agent: test", b"X-Multi: a", b"x-multi: b")
    (kind, head), (done, trailers) = parseRequests(raw)
    assert (kind, done, trailers) == ("head", "complete", None)
    assert head.method == b"GET"
    assert head.target == b"/"
    assert head.version == (1, 1)
    assert head.bodyKind is BodyKind.NONE
    assert head.contentLength is None
    assert head.keepAlive
    assert head.upgrade == ()
    assert head.targetForm == "origin"
    assert head.authority == b"example.com"
    assert head.headers.items() == [
        (b"Host", b"example.com"),
        (b"User-Agent", b"test"),
        (b"X-Multi", b"a"),
        (b"x-multi", b"b"),
    ]
    assert head.headers.getAll(b"X-MULTI") == [b"a", b"b"]


def test_valueWhitespaceTrimmed() -> None:
    (_, head), _ = parseRequests(request(GET, HOST, b"X-A:\t  spaced  value \t", b"X-B:"))
    assert head.headers.get(b"x-a") == b"spaced  value"
    assert head.headers.get(b"x-b") == b""


def test_obsTextAllowedInOrdinaryValues() -> None:
    """
    RFC 9110 allows obs-text in field values; only framing and routing
    fields are held to their exact grammar.
    """
    (_, head), _ = parseRequests(request(GET, HOST, b"X-Name: caf\xc3\xa9"))
    assert head.headers.get(b"x-name") == b"caf\xc3\xa9"


@pytest.mark.parametrize(
    "version, connection, keepAlive",
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Keep-Alive, CLOSE", False),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive", True),
    ],
)
def test_keepAlive(version: bytes, connection: bytes | None, keepAlive: bool) -> None:
    lines = [b"GET / HTTP/" + version, HOST]
    if connection is not None:
        lines.append(b"Connection: " + connection)
    (_, head), _ = parseRequests(request(*lines))
    assert head.keepAlive is keepAlive


def test_http10WithoutHost() -> None:
    (_, head), _ = parseRequests(request(b"GET / HTTP/1.0"))
    assert head.version == (1, 0)
    assert head.authority is None


def test_leadingEmptyLinesIgnored() -> None:
    events = parseRequests(b"\r\n\r\n" + request(GET, HOST))
    assert [kind for kind, _ in events] == ["head", "complete"]


def test_contentLengthBody() -> None:
    events = parseRequests(request(b"POST /f HTTP/1.1", HOST, b"Content-Length: 5", body=b"hello"))
    (_, head), body, complete = events
    assert head.bodyKind is BodyKind.LENGTH
    assert head.contentLength == 5
    assert body == ("body", b"hello")
    assert complete == ("complete", None)


def test_zeroContentLength() -> None:
    events = parseRequests(request(b"POST /f HTTP/1.1", HOST, b"Content-Length: 0"))
    assert [kind for kind, _ in events] == ["head", "complete"]
    assert events[0][1].bodyKind is BodyKind.LENGTH
    assert events[0][1].contentLength == 0


def test_chunkedBodyWithExtensionsAndTrailers() -> None:
    raw = request(b"POST /u HTTP/1.1", HOST, b"Transfer-Encoding: Chunked") + (
        b'5;name=value;q="a \\" b"\r\nhello\r\n'
        b"6\r\n world\r\n"
        b"000\r\n"
        b"X-Checksum: abc \r\nX-Other:1\r\n\r\n"
    )
    (_, head), body, (kind, trailers) = parseRequests(raw)
    assert head.bodyKind is BodyKind.CHUNKED
    assert body == ("body", b"hello world")
    assert kind == "complete"
    assert trailers.items() == [(b"X-Checksum", b"abc"), (b"X-Other", b"1")]


def test_uppercaseHexChunkSize() -> None:
    data = b"x" * 0xAB
    raw = request(b"POST /u HTTP/1.1", HOST, b"Transfer-Encoding: chunked") + (
        b"aB\r\n" + data + b"\r\n0\r\n\r\n"
    )
    _, body, _ = parseRequests(raw)
    assert body == ("body", data)


@pytest.mark.parametrize(
    "target, form, authority",
    [
        (b"/a/b?c=d&e", "origin", b"example.com"),
        (b"http://example.com/x", "absolute", b"example.com"),
        (b"HTTP://EXAMPLE.com:80", "absolute", b"EXAMPLE.com:80"),
        (b"https://example.com:443/", "absolute", b"example.com:443"),
    ],
)
def test_targetForms(target: bytes, form: str, authority: bytes) -> None:
    (_, head), _ = parseRequests(request(b"GET " + target + b" HTTP/1.1", HOST))
    assert head.targetForm == form
    assert head.authority == authority


def test_asteriskForm() -> None:
    (_, head), _ = parseRequests(request(b"OPTIONS * HTTP/1.1", HOST))
    assert head.targetForm == "asterisk"


@pytest.mark.parametrize(
    "host",
    [b"example.com:8080", b"[2001:db8::1]", b"[::1]:443", b"192.0.2.1", b"xn--caf-dma.example"],
)
def test_validHosts(host: bytes) -> None:
    (_, head), _ = parseRequests(request(GET, b"Host: " + host))
    assert head.authority == host


def test_expectContinue() -> None:
    (_, head), *_ = parseRequests(
        request(b"PUT /x HTTP/1.1", HOST, b"Expect: 100-Continue", b"Content-Length: 1", body=b"x")
    )
    assert head.expectsContinue


# -- rejections --------------------------------------------------------------


TE_CHUNKED = b"Transfer-Encoding: chunked"
POST = b"POST / HTTP/1.1"

REJECTIONS = [
    # framing conflicts and Content-Length forms
    ("cl and te", request(POST, HOST, b"Content-Length: 3", TE_CHUNKED, body=b"0\r\n\r\n"), 400),
    ("te and cl", request(POST, HOST, TE_CHUNKED, b"Content-Length: 3", body=b"0\r\n\r\n"), 400),
    ("two equal cl", request(POST, HOST, b"Content-Length: 1", b"Content-Length: 1", body=b"x"), 400),
    ("two cl", request(POST, HOST, b"Content-Length: 1", b"Content-Length: 2", body=b"xx"), 400),
    ("cl list", request(POST, HOST, b"Content-Length: 1, 1", body=b"x"), 400),
    ("empty cl", request(POST, HOST, b"Content-Length:"), 400),
    ("signed cl", request(POST, HOST, b"Content-Length: +1", body=b"x"), 400),
    ("negative cl", request(POST, HOST, b"Content-Length: -1"), 400),
    ("hex cl", request(POST, HOST, b"Content-Length: 0x1", body=b"x"), 400),
    ("underscore cl", request(POST, HOST, b"Content-Length: 1_0", body=b"x" * 10), 400),
    ("letter cl", request(POST, HOST, b"Content-Length: 1a", body=b"x"), 400),
    ("nbsp cl", request(POST, HOST, b"Content-Length: \xa01", body=b"x"), 400),
    ("huge cl", request(POST, HOST, b"Content-Length: 1" + b"0" * 19), 400),
    # Transfer-Encoding forms
    ("te comma chunked", request(POST, HOST, b"Transfer-Encoding: ,chunked", body=b"0\r\n\r\n"), 400),
    ("te chunked comma", request(POST, HOST, b"Transfer-Encoding: chunked,", body=b"0\r\n\r\n"), 400),
    ("te chunked twice", request(POST, HOST, b"Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"), 400),
    ("te duplicated", request(POST, HOST, TE_CHUNKED, TE_CHUNKED, body=b"0\r\n\r\n"), 400),
    ("te duplicated other", request(POST, HOST, b"Transfer-Encoding: gzip", TE_CHUNKED, body=b"0\r\n\r\n"), 400),
    ("te gzip chunked", request(POST, HOST, b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501),
    ("te deflate chunked", request(POST, HOST, b"Transfer-Encoding: deflate,chunked", body=b"0\r\n\r\n"), 501),
    ("te chunked gzip", request(POST, HOST, b"Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n"), 400),
    ("te gzip", request(POST, HOST, b"Transfer-Encoding: gzip", body=b"x"), 400),
    ("te identity", request(POST, HOST, b"Transfer-Encoding: identity", body=b"x"), 400),
    ("te unknown", request(POST, HOST, b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"), 400),
    ("te nbsp before", request(POST, HOST, b"Transfer-Encoding: \xa0chunked", body=b"0\r\n\r\n"), 400),
    ("te nbsp after", request(POST, HOST, b"Transfer-Encoding: chunked\xa0", body=b"0\r\n\r\n"), 400),
    ("te nel", request(POST, HOST, b"Transfer-Encoding: \x85chunked", body=b"0\r\n\r\n"), 400),
    ("te vtab", request(POST, HOST, b"Transfer-Encoding: \x0bchunked", body=b"0\r\n\r\n"), 400),
    ("te params", request(POST, HOST, b"Transfer-Encoding: chunked;a=b", body=b"0\r\n\r\n"), 400),
    ("te quoted", request(POST, HOST, b'Transfer-Encoding: "chunked"', body=b"0\r\n\r\n"), 400),
    ("te on http/1.0", request(b"POST / HTTP/1.0", TE_CHUNKED, body=b"0\r\n\r\n"), 400),
    ("te space in name", request(POST, HOST, b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400),
    # chunk sizes and terminators
    ("empty chunk size", request(POST, HOST, TE_CHUNKED, body=b"\r\nx\r\n0\r\n\r\n"), 400),
    ("signed chunk size", request(POST, HOST, TE_CHUNKED, body=b"+1\r\nx\r\n0\r\n\r\n"), 400),
    ("negative chunk size", request(POST, HOST, TE_CHUNKED, body=b"-1\r\nx\r\n0\r\n\r\n"), 400),
    ("0x chunk size", request(POST, HOST, TE_CHUNKED, body=b"0x1\r\nx\r\n0\r\n\r\n"), 400),
    ("space before chunk size", request(POST, HOST, TE_CHUNKED, body=b" 1\r\nx\r\n0\r\n\r\n"), 400),
    ("tab before chunk size", request(POST, HOST, TE_CHUNKED, body=b"\t1\r\nx\r\n0\r\n\r\n"), 400),
    ("space after chunk size", request(POST, HOST, TE_CHUNKED, body=b"1 \r\nx\r\n0\r\n\r\n"), 400),
    ("junk after chunk size", request(POST, HOST, TE_CHUNKED, body=b"1x\r\nx\r\n0\r\n\r\n"), 400),
    ("underscore chunk size", request(POST, HOST, TE_CHUNKED, body=b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"), 400),
    ("overlong chunk size", request(POST, HOST, TE_CHUNKED, body=b"1" + b"0" * 16 + b"\r\n"), 400),
    ("chunk size bare lf", request(POST, HOST, TE_CHUNKED, body=b"1\nx\r\n0\r\n\r\n"), 400),
    ("chunk size bare cr", request(POST, HOST, TE_CHUNKED, body=b"1\rx\r\n0\r\n\r\n"), 400),
    ("bare cr in chunk ext", request(POST, HOST, TE_CHUNKED, body=b"1;a\rb\r\nx\r\n0\r\n\r\n"), 400),
    ("bare cr in quoted ext", request(POST, HOST, TE_CHUNKED, body=b'1;a="\r"\r\nx\r\n0\r\n\r\n'), 400),
    ("lf in chunk ext", request(POST, HOST, TE_CHUNKED, body=b"1;a\nb\r\nx\r\n0\r\n\r\n"), 400),
    ("space in chunk ext", request(POST, HOST, TE_CHUNKED, body=b"1 ;a=b\r\nx\r\n0\r\n\r\n"), 400),
    ("chunk data no crlf", request(POST, HOST, TE_CHUNKED, body=b"1\r\nxy\r\n0\r\n\r\n"), 400),
    ("chunk data bare lf", request(POST, HOST, TE_CHUNKED, body=b"1\r\nx\n0\r\n\r\n"), 400),
    ("chunk data bare cr", request(POST, HOST, TE_CHUNKED, body=b"1\r\nx\r0\r\n\r\n"), 400),
    ("last chunk bare lf", request(POST, HOST, TE_CHUNKED, body=b"0\n\r\n"), 400),
    ("trailer bare lf", request(POST, HOST, TE_CHUNKED, body=b"0\r\nX: a\nY: b\r\n\r\n"), 400),
    ("trailer obs-fold", request(POST, HOST, TE_CHUNKED, body=b"0\r\nX: a\r\n b\r\n\r\n"), 400),
    ("trailer no colon", request(POST, HOST, TE_CHUNKED, body=b"0\r\nXa\r\n\r\n"), 400),
    ("trailer nul", request(POST, HOST, TE_CHUNKED, body=b"0\r\nX: a\x00\r\n\r\n"), 400),
    # header names and lines
    ("space before colon", request(GET, HOST, b"X-A : b"), 400),
    ("tab before colon", request(GET, HOST, b"X-A\t: b"), 400),
    ("empty name", request(GET, HOST, b": b"), 400),
    ("non-token name", request(GET, HOST, b"X(A): b"), 400),
    ("non-ascii name", request(GET, HOST, b"X\xe9: b"), 400),
    ("no colon", request(GET, HOST, b"X-A b"), 400),
    ("obs-fold", request(GET, HOST, b"X-A: b", b" c"), 400),
    ("obs-fold tab", request(GET, HOST, b"X-A: b", b"\tc"), 400),
    ("leading whitespace line", request(GET, b" " + HOST), 400),
    # header values
    ("nul in value", request(GET, HOST, b"X-A: b\x00c"), 400),
    ("bare cr in value", request(GET, HOST, b"X-A: b\rc"), 400),
    ("bare lf in value", request(GET, HOST, b"X-A: b\nc"), 400),
    ("ctl in value", request(GET, HOST, b"X-A: b\x01c"), 400),
    ("del in value", request(GET, HOST, b"X-A: b\x7fc"), 400),
    # end of the header block
    ("block ended by lf lf", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    ("lines ended by lf", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("block ended by cr lf lf", b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400),
    # request line
    ("lowercase http", b"GET / http/1.1\r\nHost: a\r\n\r\n", 400),
    ("http/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
    ("http/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
    ("http/0.9 line", b"GET /\r\n\r\n", 400),
    ("http/0.9 version", b"GET / HTTP/0.9\r\n\r\n", 400),
    ("double space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("trailing space", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
    ("tab separator", b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("leading lf", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("ctl in target", b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("non-ascii target", b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("fragment", b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("relative target", b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("ftp target", b"GET ftp://a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("userinfo target", b"GET http://u@a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("empty authority", b"GET http:///b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("absolute host mismatch", b"GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("absolute port mismatch", b"GET http://a:8080/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("asterisk not options", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("authority not connect", b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("connect origin form", b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("connect without port", b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("non-token method", b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("unknown method", b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    ("lowercase method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    ("tls hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    # Host
    ("missing host", request(GET), 400),
    ("two hosts", request(GET, HOST, HOST), 400),
    ("two different hosts", request(GET, HOST, b"Host: other"), 400),
    ("empty host", request(GET, b"Host:"), 400),
    ("host with path", request(GET, b"Host: a/b"), 400),
    ("host with userinfo", request(GET, b"Host: u@a"), 400),
    ("host with space", request(GET, b"Host: a b"), 400),
    ("host nbsp", request(GET, b"Host: \xa0a"), 400),
    ("host bad port", request(GET, b"Host: a:99999"), 400),
    ("host bad ipv6", request(GET, b"Host: [::g]"), 400),
    ("two hosts on http/1.0", request(b"GET / HTTP/1.0", HOST, HOST), 400),
    # upgrade and CONNECT with bodies
    (
        "upgrade with body",
        request(POST, HOST, b"Connection: upgrade", b"Upgrade: h2c", b"Content-Length: 1", body=b"x"),
        400,
    ),
    ("malformed upgrade", request(GET, HOST, b"Connection: upgrade", b"Upgrade: a/b/c"), 400),
    ("connect with body", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 1\r\n\r\nx", 400),
]


@pytest.mark.parametrize("raw, status", [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_rejected(raw: bytes, status: int) -> None:
    assert rejectionStatus(raw) == status


@pytest.mark.parametrize("raw, status", [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_rejectedAtEverySplit(raw: bytes, status: int) -> None:
    """
    However the bytes are split, the answer is the same.
    """
    for cut in range(1, len(raw)):
        parser, _ = requestParser()
        with pytest.raises(HTTPParseError) as caught:
            feed(parser, [raw[:cut], raw[cut:]])
        assert caught.value.status == status, cut


def test_rejectedByteByByte() -> None:
    for name, raw, status in REJECTIONS:
        parser, _ = requestParser()
        with pytest.raises(HTTPParseError) as caught:
            feed(parser, [raw[i : i + 1] for i in range(len(raw))])
        assert caught.value.status == status, name


def test_headRejectionDeliversNothing() -> None:
    parser, recorder = requestParser()
    with pytest.raises(HTTPParseError):
        parser.dataReceived(request(POST, HOST, b"Content-Length: 1", TE_CHUNKED))
    assert recorder.events == []


def test_errorReasonDoesNotEchoInput() -> None:
    parser, _ = requestParser()
    with pytest.raises(HTTPParseError) as caught:
        parser.dataReceived(request(GET, HOST, b"X-Evil\xff<script>: b"))
    assert b"script" not in caught.value.reason.encode("latin-1")
    assert "evil" not in caught.value.reason.lower()


# -- limits --------------------------------------------------------------------


def test_requestLineTooLong() -> None:
    target = b"/" + b"a" * 100
    raw = request(b"GET " + target + b" HTTP/1.1", HOST)
    assert rejectionStatus(raw, maxRequestLine=100) == 414
    assert parseRequests(raw, maxRequestLine=len(target) + 13)[0][0] == "head"


@pytest.mark.parametrize(
    "raw, limits, status",
    [
        (request(b"GET /" + b"a" * 60 + b" HTTP/1.1", HOST), dict(maxRequestLine=40), 414),
        (request(GET, HOST, b"X: " + b"b" * 60), dict(maxHeaderBytes=60), 431),
        (request(GET, HOST, b"A: 1", b"B: 2"), dict(maxHeaders=2), 431),
    ],
)
def test_limitsAtEverySplit(raw: bytes, limits: dict, status: int) -> None:
    for pieces in [[raw[:cut], raw[cut:]] for cut in range(1, len(raw))] + [list(map(bytes, zip(raw)))]:
        parser, _ = requestParser(**limits)
        with pytest.raises(HTTPParseError) as caught:
            feed(parser, pieces)
        assert caught.value.status == status


def test_requestLineTooLongBeforeItEnds() -> None:
    parser, _ = requestParser(maxRequestLine=100)
    parser.dataReceived(b"GET /" + b"a" * 80)
    with pytest.raises(HTTPParseError) as caught:
        parser.dataReceived(b"a" * 40)
    assert caught.value.status == 414


def test_headerBlockTooLarge() -> None:
    raw = request(GET, HOST, b"X-Big: " + b"b" * 200)
    assert rejectionStatus(raw, maxHeaderBytes=200) == 431
    assert parseRequests(raw, maxHeaderBytes=len(raw))[0][0] == "head"
    assert rejectionStatus(raw, maxHeaderBytes=len(raw) - 1) == 431


def test_headerBlockTooLargeBeforeItEnds() -> None:
    parser, _ = requestParser(maxHeaderBytes=1000)
    parser.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    with pytest.raises(HTTPParseError) as caught:
        for _ in range(100):
            parser.dataReceived(b"b" * 100)
    assert caught.value.status == 431
    assert parser.bufferedBytes == 0


def test_tooManyHeaders() -> None:
    lines = [GET, HOST] + [b"X-%d: v" % i for i in range(10)]
    assert rejectionStatus(request(*lines), maxHeaders=10) == 431
    assert parseRequests(request(*lines), maxHeaders=11)[0][0] == "head"


def test_bodyTooLargeByContentLength() -> None:
    """
    A Content-Length over the limit is refused before anything is
    delivered.
    """
    parser, recorder = requestParser(maxBodySize=10)
    with pytest.raises(HTTPParseError) as caught:
        parser.dataReceived(request(POST, HOST, b"Content-Length: 11"))
    assert caught.value.status == 413
    assert recorder.events == []
    assert parseRequests(request(POST, HOST, b"Content-Length: 10", body=b"x" * 10), maxBodySize=10)[-1][0] == "complete"


def test_bodyTooLargeChunked() -> None:
    parser, recorder = requestParser(maxBodySize=10)
    parser.dataReceived(request(POST, HOST, TE_CHUNKED, body=b"6\r\nabcdef\r\n"))
    with pytest.raises(HTTPParseError) as caught:
        parser.dataReceived(b"5\r\nghijk\r\n0\r\n\r\n")
    assert caught.value.status == 413
    assert recorder.events[1:] == [("body", b"abcdef")]


def test_chunkedExactlyAtLimit() -> None:
    raw = request(POST, HOST, TE_CHUNKED, body=b"6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n")
    assert parseRequests(raw, maxBodySize=10)[-1][0] == "complete"


def test_trailerLimits() -> None:
    body = b"0\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5)) + b"\r\n"
    assert rejectionStatus(request(POST, HOST, TE_CHUNKED, body=body), maxHeaders=4) == 431
    big = b"0\r\nX: " + b"v" * 300 + b"\r\n\r\n"
    assert rejectionStatus(request(POST, HOST, TE_CHUNKED, body=big), maxHeaderBytes=200) == 431


def test_chunkLineTooLong() -> None:
    body = b"1;" + b"a" * 100
    parser, _ = requestParser(maxChunkLineBytes=50)
    with pytest.raises(HTTPParseError) as caught:
        parser.dataReceived(request(POST, HOST, TE_CHUNKED, body=body))
    assert caught.value.status == 400


# -- pipelining, splitting, pausing --------------------------------------------------


PIPELINE = (
    request(b"GET /1 HTTP/1.1", HOST)
    + request(b"POST /2 HTTP/1.1", HOST, b"Content-Length: 11", body=b"hello world")
    + request(
        b"PUT /3 HTTP/1.1",
        HOST,
        TE_CHUNKED,
        body=b"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n",
    )
    + b"\r\n"
    + request(b"DELETE /4 HTTP/1.1", HOST, b"Content-Length: 0")
    + request(b"GET /5 HTTP/1.1", HOST, b"Connection: close")
    + b"GARBAGE AFTER CLOSE"
)


def summary(events: list) -> list:
    """
    Events with heads reduced to comparable tuples.
    """
    result = []
    for kind, value in events:
        if kind == "head":
            result.append((kind, value.method, value.target, value.headers.items(), value.bodyKind))
        elif kind == "complete":
            result.append((kind, value.items() if value else None))
        else:
            result.append((kind, value))
    return result


def test_pipelineInOneChunk() -> None:
    events = summary(parseRequests(PIPELINE))
    assert [e[0] for e in events] == [
        "head", "complete",
        "head", "body", "complete",
        "head", "body", "complete",
        "head", "complete",
        "head", "complete",
    ]  # fmt: skip
    assert [e[2] for e in events if e[0] == "head"] == [b"/1", b"/2", b"/3", b"/4", b"/5"]
    assert events[3] == ("body", b"hello world")
    assert events[6] == ("body", b"abc0123456789abcdef")
    assert events[7] == ("complete", [(b"X-T", b"1")])


def test_pipelineSplitAtEveryByte() -> None:
    expected = summary(parseRequests(PIPELINE))
    for cut in range(1, len(PIPELINE)):
        assert summary(parseRequests(PIPELINE, [PIPELINE[:cut], PIPELINE[cut:]])) == expected, cut
    for first in range(1, len(PIPELINE), 7):
        for second in range(first + 1, len(PIPELINE), 5):
            pieces = [PIPELINE[:first], PIPELINE[first:second], PIPELINE[second:]]
            assert summary(parseRequests(PIPELINE, pieces)) == expected, (first, second)


def test_pipelineByteByByte() -> None:
    expected = summary(parseRequests(PIPELINE))
    pieces = [PIPELINE[i : i + 1] for i in range(len(PIPELINE))]
    assert summary(parseRequests(PIPELINE, pieces)) == expected


def test_chunkedBodySplitArbitrarily() -> None:
    rng = random.Random(7)
    payload = bytes(rng.randrange(256) for _ in range(5000))
    body = b""
    offset = 0
    while offset < len(payload):
        size = rng.randrange(1, 700)
        piece = payload[offset : offset + size]
        body += b"%x\r\n%s\r\n" % (len(piece), piece)
        offset += size
    body += b"0\r\n\r\n"
    raw = request(POST, HOST, TE_CHUNKED, body=body) + request(GET, HOST)
    expected = summary(parseRequests(raw))
    assert expected[1] == ("body", payload)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randrange(1, 40)))
        pieces = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]
        assert summary(parseRequests(raw, pieces)) == expected


def test_pauseAfterEachMessage() -> None:
    """
    A paused parser delivers nothing more until resumed, whatever arrives
    meanwhile; resuming delivers the next message.
    """
    parser, recorder = requestParser(pauseAfterMessage=True)
    parser.dataReceived(PIPELINE)
    seen = [summary(recorder.events)]
    while parser.paused:
        parser.resumeParsing()
        seen.append(summary(recorder.events))
    assert seen[-1] == summary(parseRequests(PIPELINE))
    assert [len([e for e in s if e[0] == "head"]) for s in seen] == [1, 2, 3, 4, 5, 5]


def test_pauseBeforeBody() -> None:
    """
    Pausing from headersComplete (e.g. until the backend is connected) holds
    the body, and the completion of a message without body.
    """
    parser, recorder = requestParser()
    record = recorder.headersComplete

    def headersComplete(head) -> None:
        record(head)
        parser.pauseParsing()

    recorder.headersComplete = headersComplete
    parser.dataReceived(request(POST, HOST, b"Content-Length: 3", body=b"abc") + request(GET, HOST))
    assert [e[0] for e in recorder.events] == ["head"]
    assert parser.bufferedBytes == 3 + len(request(GET, HOST))
    parser.resumeParsing()
    assert [e[0] for e in recorder.events] == ["head", "body", "complete", "head"]
    parser.resumeParsing()
    assert [e[0] for e in recorder.events] == ["head", "body", "complete", "head", "complete"]


def test_pauseInsideBody() -> None:
    """
    Pausing from bodyData holds the rest of the body (backpressure).
    """
    parser, recorder = requestParser()
    received = []

    def bodyData(data: bytes) -> None:
        received.append(data)
        parser.pauseParsing()

    recorder.bodyData = bodyData
    parser.dataReceived(request(POST, HOST, TE_CHUNKED, body=b"1\r\na\r\n1\r\nb\r\n"))
    assert received == [b"a"]
    parser.dataReceived(b"0\r\n\r\n")
    assert received == [b"a"]
    parser.resumeParsing()
    assert received == [b"a", b"b"]
    parser.resumeParsing()
    assert recorder.events[-1][0] == "complete"


def test_resumeFromInsideCallback() -> None:
    parser, recorder = requestParser(pauseAfterMessage=True)

    def messageComplete() -> None:
        recorder.events.append(("complete", None))
        parser.pauseParsing()
        parser.resumeParsing()

    recorder.messageComplete = messageComplete
    parser.dataReceived(request(GET, HOST) * 3)
    assert [e[0] for e in recorder.events] == ["head", "complete"] * 3


def test_dataWhilePausedIsBounded() -> None:
    parser, _ = requestParser(pauseAfterMessage=True, maxBufferedBytes=1000)
    parser.dataReceived(request(GET, HOST))
    parser.dataReceived(b"x" * 1000)
    with pytest.raises(HTTPParseError):
        parser.dataReceived(b"x")


def test_smallPiecesWhilePaused() -> None:
    parser, recorder = requestParser(pauseAfterMessage=True)
    second = request(POST, HOST, b"Content-Length: 500", body=b"y" * 500)
    parser.dataReceived(request(GET, HOST))
    for index in range(len(second)):
        parser.dataReceived(second[index : index + 1])
    assert parser.bufferedBytes == len(second)
    parser.resumeParsing()
    assert recorder.events[-2:] == [("body", b"y" * 500), ("complete", None)]
    assert parser.bufferedBytes == 0


def test_detachEmptyTunnel() -> None:
    parser, _ = requestParser()
    parser.dataReceived(WEBSOCKET)
    assert parser.detachTunnel() == b""


def test_closeIgnoresLaterData() -> None:
    parser, recorder = requestParser()
    parser.dataReceived(request(GET, HOST, b"Connection: close") + b"junk")
    parser.dataReceived(request(GET, HOST))
    assert [e[0] for e in recorder.events] == ["head", "complete"]
    assert parser.bufferedBytes == 0


def test_idle() -> None:
    parser, _ = requestParser()
    assert parser.idle
    parser.dataReceived(b"GET / HT")
    assert not parser.idle
    parser.dataReceived(b"TP/1.1\r\nHost: a\r\n\r\n")
    assert parser.idle


def test_connectionLostMidMessage() -> None:
    parser, _ = requestParser()
    parser.dataReceived(request(POST, HOST, b"Content-Length: 5", body=b"ab"))
    with pytest.raises(HTTPParseError) as caught:
        parser.connectionLost()
    assert caught.value.status == 400


def test_connectionLostWhenIdle() -> None:
    parser, recorder = requestParser()
    parser.dataReceived(request(GET, HOST))
    parser.connectionLost()
    assert [e[0] for e in recorder.events] == ["head", "complete"]


def test_connectionLostMidHead() -> None:
    parser, _ = requestParser()
    parser.dataReceived(b"GET / HTTP/1.1\r\n")
    with pytest.raises(HTTPParseError):
        parser.connectionLost()


# -- upgrade and CONNECT ----------------------------------------------------------


WEBSOCKET = request(
    GET, HOST, b"Connection: keep-alive, Upgrade", b"Upgrade: WebSocket", b"Sec-WebSocket-Version: 13"
)


def test_upgradeDetected() -> None:
    parser, recorder = requestParser()
    parser.dataReceived(WEBSOCKET + b"\x81\x05hello")
    head = recorder.heads[0]
    assert head.upgrade == (b"websocket",)
    assert [e[0] for e in recorder.events] == ["head", "complete"]
    assert parser.paused
    parser.dataReceived(b"more")
    assert parser.detachTunnel() == b"\x81\x05hellomore"
    with pytest.raises(ValueError):
        parser.dataReceived(b"x")


def test_upgradeRefusedContinuesHTTP() -> None:
    """
    When the backend does not switch, resuming parses what follows as HTTP.
    """
    parser, recorder = requestParser()
    parser.dataReceived(WEBSOCKET + request(b"GET /next HTTP/1.1", HOST))
    assert len(recorder.heads) == 1
    parser.resumeParsing()
    assert [h.target for h in recorder.heads] == [b"/", b"/next"]
    assert not parser.paused


def test_upgradeNeedsConnectionOption() -> None:
    (_, head), _ = parseRequests(request(GET, HOST, b"Upgrade: websocket"))
    assert head.upgrade == ()


def test_upgradeIgnoredOnHttp10() -> None:
    (_, head), _ = parseRequests(request(b"GET / HTTP/1.0", b"Connection: upgrade", b"Upgrade: websocket"))
    assert head.upgrade == ()


def test_connect() -> None:
    parser, recorder = requestParser()
    parser.dataReceived(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01")
    head = recorder.heads[0]
    assert head.isConnect
    assert head.targetForm == "authority"
    assert head.authority == b"example.com:443"
    assert parser.detachTunnel() == b"\x16\x03\x01"


def test_detachWithoutTunnel() -> None:
    parser, _ = requestParser()
    parser.dataReceived(request(GET, HOST))
    with pytest.raises(ValueError):
        parser.detachTunnel()


# -- responses ---------------------------------------------------------------------


def response(*lines: bytes, body: bytes = b"") -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


OK = b"HTTP/1.1 200 OK"


def test_responseWithLength() -> None:
    parser, recorder = responseParser(b"GET")
    parser.dataReceived(response(OK, b"Content-Length: 2", b"Server: x", body=b"hi"))
    head = recorder.heads[0]
    assert (head.status, head.reason, head.version) == (200, b"OK", (1, 1))
    assert head.bodyKind is BodyKind.LENGTH
    assert recorder.events[1:] == [("body", b"hi"), ("complete", None)]
    assert parser.expecting == 0


def test_responseToHeadHasNoBody() -> None:
    parser, recorder = responseParser(b"HEAD", b"GET")
    parser.dataReceived(
        response(OK, b"Content-Length: 1234") + response(OK, b"Content-Length: 1", body=b"x")
    )
    first, second = recorder.heads
    assert first.bodyKind is BodyKind.NONE
    assert first.contentLength == 1234
    assert second.bodyKind is BodyKind.LENGTH
    assert [e[0] for e in recorder.events] == ["head", "complete", "head", "body", "complete"]


def test_responseToHeadChunked() -> None:
    parser, recorder = responseParser(b"HEAD")
    parser.dataReceived(response(OK, TE_CHUNKED))
    assert recorder.heads[0].bodyKind is BodyKind.NONE
    assert recorder.events[-1][0] == "complete"


@pytest.mark.parametrize("status, length", [(204, None), (304, 50)])
def test_noBodyStatuses(status: int, length: int | None) -> None:
    parser, recorder = responseParser(b"GET", b"GET")
    parser.dataReceived(
        response(b"HTTP/1.1 %d X" % status, b"Content-Length: 50") + response(OK, b"Content-Length: 0")
    )
    assert recorder.heads[0].bodyKind is BodyKind.NONE
    assert recorder.heads[0].contentLength == length
    assert [h.status for h in recorder.heads] == [status, 200]


def test_interimResponses() -> None:
    parser, recorder = responseParser(b"POST")
    parser.dataReceived(
        response(b"HTTP/1.1 100 Continue")
        + response(b"HTTP/1.1 103 Early Hints", b"Link: </a.css>; rel=preload")
        + response(OK, b"Content-Length: 1", body=b"x")
    )
    assert [h.status for h in recorder.heads] == [100, 103, 200]
    assert [h.interim for h in recorder.heads] == [True, True, False]
    assert parser.expecting == 0


def test_untilCloseBody() -> None:
    parser, recorder = responseParser(b"GET")
    parser.dataReceived(response(b"HTTP/1.0 200 OK", body=b"part1"))
    parser.dataReceived(b"part2")
    head = recorder.heads[0]
    assert head.bodyKind is BodyKind.UNTIL_CLOSE
    assert not head.keepAlive
    assert recorder.events[-1] == ("body", b"part1part2")
    parser.connectionLost()
    assert recorder.events[-1] == ("complete", None)


def test_untilCloseWhilePaused() -> None:
    parser, recorder = responseParser(b"GET")
    parser.dataReceived(response(OK))
    parser.pauseParsing()
    parser.dataReceived(b"tail")
    parser.connectionLost()
    assert [e[0] for e in recorder.events] == ["head"]
    parser.resumeParsing()
    assert recorder.events[1:] == [("body", b"tail"), ("complete", None)]


def test_chunkedResponseSplit() -> None:
    raw = response(OK, TE_CHUNKED, body=b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n")
    for cut in range(1, len(raw)):
        parser, recorder = responseParser(b"GET")
        feed(parser, [raw[:cut], raw[cut:]])
        assert recorder.events[1:] == [("body", b"Wikipedia"), ("complete", None)]


def test_truncatedResponse() -> None:
    parser, _ = responseParser(b"GET")
    parser.dataReceived(response(OK, b"Content-Length: 10", body=b"abc"))
    with pytest.raises(HTTPParseError) as caught:
        parser.connectionLost()
    assert caught.value.status == 502


def test_closedBeforeResponse() -> None:
    parser, _ = responseParser(b"GET")
    assert parser.idle
    with pytest.raises(HTTPParseError) as caught:
        parser.connectionLost()
    assert caught.value.reason == "connection closed before the response"


def test_idleBackendCloses() -> None:
    parser, recorder = responseParser()
    parser.connectionLost()
    assert recorder.events == []


def test_unsolicitedResponse() -> None:
    parser, _ = responseParser()
    with pytest.raises(HTTPParseError) as caught:
        parser.dataReceived(response(OK, b"Content-Length: 0"))
    assert caught.value.status == 502


def test_switchingProtocols() -> None:
    parser, recorder = responseParser((b"GET", True))
    parser.dataReceived(
        response(b"HTTP/1.1 101 Switching Protocols", b"Connection: Upgrade", b"Upgrade: websocket")
        + b"\x81\x02hi"
    )
    head = recorder.heads[0]
    assert head.tunnel
    assert [e[0] for e in recorder.events] == ["head", "complete"]
    assert parser.paused
    parser.resumeParsing()
    assert parser.detachTunnel() == b"\x81\x02hi"


def test_unexpectedSwitchingProtocols() -> None:
    parser, _ = responseParser(b"GET")
    with pytest.raises(HTTPParseError) as caught:
        parser.dataReceived(response(b"HTTP/1.1 101 Switching Protocols", b"Upgrade: h2c"))
    assert caught.value.status == 502


def test_connectResponseOpensTunnel() -> None:
    parser, recorder = responseParser(b"CONNECT")
    parser.dataReceived(response(OK) + b"tls bytes")
    assert recorder.heads[0].tunnel
    assert parser.detachTunnel() == b"tls bytes"


def test_connectRefused() -> None:
    parser, recorder = responseParser(b"CONNECT")
    parser.dataReceived(response(b"HTTP/1.1 403 Forbidden", b"Content-Length: 2", body=b"no"))
    assert not recorder.heads[0].tunnel
    assert recorder.events[-1][0] == "complete"


RESPONSE_REJECTIONS = [
    ("cl and te", response(OK, b"Content-Length: 1", TE_CHUNKED)),
    ("two cl", response(OK, b"Content-Length: 1", b"Content-Length: 1")),
    ("bad cl", response(OK, b"Content-Length: 1x")),
    ("te gzip", response(OK, b"Transfer-Encoding: gzip")),
    ("te gzip chunked", response(OK, b"Transfer-Encoding: gzip, chunked")),
    ("te twice", response(OK, TE_CHUNKED, TE_CHUNKED)),
    ("te on http/1.0", response(b"HTTP/1.0 200 OK", TE_CHUNKED)),
    ("status 99", response(b"HTTP/1.1 099 Low")),
    ("status 600", response(b"HTTP/1.1 600 High")),
    ("status 4 digits", response(b"HTTP/1.1 2000 OK")),
    ("double space", response(b"HTTP/1.1  200 OK")),
    ("ctl in reason", response(b"HTTP/1.1 200 O\x01K")),
    ("http/2", response(b"HTTP/2 200 OK")),
    ("http/1.2", response(b"HTTP/1.2 200 OK")),
    ("bare lf", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"),
    ("obs-fold", response(OK, b"X: a", b" b")),
    ("bad chunk", response(OK, TE_CHUNKED, body=b"0x1\r\nx\r\n0\r\n\r\n")),
    ("not http", b"SSH-2.0-OpenSSH_9.2\r\n"),
]


@pytest.mark.parametrize(
    "raw", [r[1] for r in RESPONSE_REJECTIONS], ids=[r[0] for r in RESPONSE_REJECTIONS]
)
def test_responseRejected(raw: bytes) -> None:
    for pieces in ([raw], [raw[i : i + 1] for i in range(len(raw))]):
        parser, _ = responseParser(b"GET")
        with pytest.raises(HTTPParseError) as caught:
            feed(parser, pieces)
            parser.connectionLost()
        assert caught.value.status == 502


def test_responseLimits() -> None:
    parser, _ = responseParser(b"GET", maxHeaderBytes=100)
    with pytest.raises(HTTPParseError) as caught:
        parser.dataReceived(response(OK, b"X: " + b"a" * 200))
    assert caught.value.status == 502
    parser, _ = responseParser(b"GET", maxBodySize=3)
    with pytest.raises(HTTPParseError) as caught:
        parser.dataReceived(response(OK, b"Content-Length: 4"))
    assert caught.value.status == 502
    parser, _ = responseParser(b"GET", maxBodySize=3)
    parser.dataReceived(response(OK, body=b"abc"))
    with pytest.raises(HTTPParseError):
        parser.dataReceived(b"d")


def test_responseReasonOptional() -> None:
    parser, recorder = responseParser(b"GET", b"GET")
    parser.dataReceived(response(b"HTTP/1.1 204") + response(b"HTTP/1.1 204 "))
    assert [h.reason for h in recorder.heads] == [b"", b""]


def test_responseKeepAlive() -> None:
    parser, recorder = responseParser(b"GET")
    parser.dataReceived(response(OK, b"Connection: close", b"Content-Length: 0") + b"junk")
    assert not recorder.heads[0].keepAlive
    assert parser.bufferedBytes == 0


def test_headersEquality() -> None:
    (_, head), _ = parseRequests(request(GET, HOST, b"A: 1"))
    assert head.headers == Headers([(b"Host", b"example.com"), (b"A", b"1")])


def test_idleParserHoldsLittle() -> None:
    """
    A parser lives as long as its connection: its attributes are slots, it
    keeps no list of pending data while none waits, and it lets go of a
    message's head once the next message may begin (whole or in pieces).
    """
    parser, recorder = requestParser(pauseAfterMessage=True)
    assert not hasattr(parser, "__dict__")
    assert parser._pending is None
    raw = request(b"GET / HTTP/1.1", b"Host: a", body=b"")
    assert parser.wholeMessage(raw) is not None
    assert parser._head is None
    parser.dataReceived(raw[:10])
    parser.dataReceived(raw[10:])
    assert [event[0] for event in recorder.events] == ["head", "complete"]
    assert parser._head is None
    parser.dataReceived(raw)
    assert parser._pending == [raw]
    parser.resumeParsing()
    assert parser._pending is None
    assert parser._head is None
    assert len(recorder.heads) == 2


def test_upgradeKeepsItsHead() -> None:
    """
    After a request asking for an upgrade, the parser keeps its head until
    the front decides: HTTP goes on (resumeParsing) when the request keeps
    the connection alive.
    """
    parser, recorder = requestParser()
    parser.dataReceived(
        request(b"GET /chat HTTP/1.1", b"Host: a", b"Connection: Upgrade", b"Upgrade: websocket")
    )
    assert parser.paused
    assert parser._head is recorder.heads[0]
    parser.resumeParsing()
    parser.dataReceived(request(b"GET / HTTP/1.1", b"Host: a"))
    assert len(recorder.heads) == 2
    assert parser._head is None


def test_responseParserReleasesHeads() -> None:
    parser, recorder = responseParser(b"GET", b"GET")
    parser.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert parser._head is None
    assert parser.wholeMessage(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") is not None
    assert parser._head is None
    assert not hasattr(parser, "__dict__")
