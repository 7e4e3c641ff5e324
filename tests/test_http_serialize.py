"""
Tests for lbproxy.http.serialize: heads, chunked framing, error responses.
"""

from __future__ import annotations

import pytest

from lbproxy.http.errors import HTTPParseError
from lbproxy.http.message import BodyKind, Headers
from lbproxy.http.parser import RequestParser, ResponseParser
from lbproxy.http.serialize import HeadWriter, encodeChunk, errorResponse, lastChunk

#: The writer the tests write heads with, as a listener's front does.
WRITER = HeadWriter()
requestHeadBytes = WRITER.requestHead
responseHeadBytes = WRITER.responseHead


class Collector:
    def __init__(self) -> None:
        self.messages: list = []

    def headersComplete(self, head) -> None:
        self.messages.append([head, b""])

    def bodyData(self, data: bytes) -> None:
        self.messages[-1][1] += data

    def messageComplete(self) -> None:
        pass


def parseRequest(raw: bytes):
    collector = Collector()
    RequestParser(collector).dataReceived(raw)
    ((head, body),) = collector.messages
    return head, body


def parseResponse(raw: bytes, method: bytes = b"GET"):
    collector = Collector()
    parser = ResponseParser(collector)
    parser.expectResponse(method)
    parser.dataReceived(raw)
    parser.connectionLost()
    ((head, body),) = collector.messages
    return head, body


def reserialise(head, body: bytes, pieces: int = 3) -> bytes:
    """
    Write a parsed request back out as the proxy would, re-framing a
    chunked body in several chunks.
    """
    raw = requestHeadBytes(head.method, head.target, head.headers, head.bodyKind, head.contentLength)
    if head.bodyKind is BodyKind.CHUNKED:
        step = max(1, len(body) // pieces)
        for offset in range(0, len(body), step):
            raw += b"".join(encodeChunk(body[offset : offset + step]))
        raw += lastChunk(head.trailers)
    else:
        raw += body
    return raw


def withoutFraming(headers: Headers) -> list:
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in (b"content-length", b"transfer-encoding")
    ]


ROUND_TRIP = [
    b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\nContent-Type: text/plain\r\n\r\npayload",
    b"PUT /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-After: 1\r\n\r\n"
    b"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Sum:  9 \r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: [::1]:8080\r\nX-Empty:\r\n\r\n",
    b"GET http://a:81/p HTTP/1.1\r\nHost: a:81\r\nCookie: a=b; c=d\r\n\r\n",
    b"DELETE /r HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
]


@pytest.mark.parametrize("raw", ROUND_TRIP)
def test_roundTrip(raw: bytes) -> None:
    head, body = parseRequest(raw)
    again, againBody = parseRequest(reserialise(head, body))
    assert (again.method, again.target, again.version) == (head.method, head.target, head.version)
    assert withoutFraming(again.headers) == withoutFraming(head.headers)
    assert (again.bodyKind, again.contentLength) == (head.bodyKind, head.contentLength)
    assert againBody == body
    assert again.trailers == head.trailers


@pytest.mark.parametrize("raw", ROUND_TRIP)
def test_serialisationIsAFixedPoint(raw: bytes) -> None:
    once = reserialise(*parseRequest(raw))
    assert reserialise(*parseRequest(once)) == once


def test_requestLineAndFramingNormalised() -> None:
    head, _ = parseRequest(
        b"\r\nPOST /x HTTP/1.0\r\nHost:  a \t\r\nContent-Length: 000\r\nX:\tv\r\n\r\n"
    )
    assert requestHeadBytes(head.method, head.target, head.headers, head.bodyKind, head.contentLength) == (
        b"POST /x HTTP/1.1\r\nHost: a\r\nX: v\r\nContent-Length: 0\r\n\r\n"
    )


def test_callerFramingFieldsReplaced() -> None:
    headers = Headers([(b"Host", b"a"), (b"Content-Length", b"99"), (b"Transfer-Encoding", b"gzip")])
    assert requestHeadBytes(b"POST", b"/", headers, BodyKind.CHUNKED) == (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert requestHeadBytes(b"GET", b"/", headers) == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize(
    "name, value",
    [
        (b"X", b"a\r\nInjected: 1"),
        (b"X", b"a\nb"),
        (b"X", b"a\x00"),
        (b"X", b" leading"),
        (b"X Y", b"v"),
        (b"", b"v"),
        (b"X:", b"v"),
        (b"X: y", b"v"),
        (b"X\r\nY", b"v"),
    ],
)
def test_unsafeFieldsRefused(name: bytes, value: bytes) -> None:
    with pytest.raises(ValueError):
        requestHeadBytes(b"GET", b"/", Headers([(name, value)]))
    with pytest.raises(ValueError):
        responseHeadBytes(200, b"OK", Headers([(name, value)]))
    with pytest.raises(ValueError):
        lastChunk(Headers([(name, value)]))


@pytest.mark.parametrize(
    "safe, unsafe",
    [
        # The same line from a name that is not a token.
        ((b"X", b"y: v"), (b"X: y", b"v")),
        # A known field followed by a line of its own.
        ((b"X", b"a"), (b"X", b"a\r\nX: a")),
        ((b"Y", b"b"), (b"Y", b"b\r\n")),
    ],
)
def test_unsafeFieldsRefusedAfterSafeOnes(safe, unsafe) -> None:
    """
    Fields that were written once are remembered; what is refused stays
    refused, even when its line looks like one written before.
    """
    for _ in range(2):
        written = requestHeadBytes(b"GET", b"/", Headers([safe]))
        assert written == b"GET / HTTP/1.1\r\n%s: %s\r\n\r\n" % safe
        with pytest.raises(ValueError):
            requestHeadBytes(b"GET", b"/", Headers([safe, unsafe]))
        with pytest.raises(ValueError):
            responseHeadBytes(200, b"OK", Headers([unsafe, safe]))


@pytest.mark.parametrize("method, target", [(b"G T", b"/"), (b"GET", b"/a b"), (b"GET", b"/\r\n")])
def test_unsafeRequestLineRefused(method: bytes, target: bytes) -> None:
    with pytest.raises(ValueError):
        requestHeadBytes(method, target, Headers())


def test_requestFramingArguments() -> None:
    with pytest.raises(ValueError):
        requestHeadBytes(b"POST", b"/", Headers(), BodyKind.LENGTH)
    with pytest.raises(ValueError):
        requestHeadBytes(b"POST", b"/", Headers(), BodyKind.UNTIL_CLOSE)


def test_responseHead() -> None:
    headers = Headers([(b"Server", b"x"), (b"Content-Length", b"5")])
    assert responseHeadBytes(200, b"OK", headers, BodyKind.LENGTH, 12) == (
        b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 12\r\n\r\n"
    )
    # A response to HEAD keeps the announced length without a body.
    assert responseHeadBytes(200, b"OK", headers, BodyKind.NONE, 5) == (
        b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\n\r\n"
    )
    assert responseHeadBytes(200, b"", Headers(), BodyKind.UNTIL_CLOSE, 5) == b"HTTP/1.1 200 \r\n\r\n"
    with pytest.raises(ValueError):
        responseHeadBytes(200, b"O\r\nK", Headers())
    with pytest.raises(ValueError):
        responseHeadBytes(1000, b"OK", Headers())


def test_responseRoundTrip() -> None:
    raw = b"HTTP/1.1 201 Created\r\nLocation: /x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    head, body = parseResponse(raw)
    written = responseHeadBytes(head.status, head.reason, head.headers, head.bodyKind, head.contentLength)
    written += b"".join(encodeChunk(body)) + lastChunk()
    assert written == raw


def test_encodeChunk() -> None:
    data = b"x" * 300
    pieces = encodeChunk(data)
    assert pieces == [b"12c\r\n", data, b"\r\n"]
    assert pieces[1] is data
    assert encodeChunk(b"") == []


def test_lastChunk() -> None:
    assert lastChunk() == b"0\r\n\r\n"
    assert lastChunk(Headers()) == b"0\r\n\r\n"
    assert lastChunk(Headers([(b"X-Sum", b"1")])) == b"0\r\nX-Sum: 1\r\n\r\n"


@pytest.mark.parametrize("status", [400, 408, 413, 414, 431, 501, 502, 503, 504])
def test_errorResponse(status: int) -> None:
    raw = errorResponse(status)
    head, body = parseResponse(raw)
    assert head.status == status
    assert not head.keepAlive
    assert head.headers.get(b"content-type") == b"text/plain; charset=utf-8"
    assert body == b"%d %s\n" % (status, head.reason)
    assert head.contentLength == len(body)


def test_errorResponseToHead() -> None:
    raw = errorResponse(400, includeBody=False)
    assert raw.endswith(b"\r\n\r\n")
    head, body = parseResponse(raw, b"HEAD")
    assert body == b""
    assert head.contentLength == len(b"400 Bad Request\n")


def test_errorResponseFromParseError() -> None:
    """
    The detailed reason of a parse error is not sent to the client.
    """
    with pytest.raises(HTTPParseError) as caught:
        RequestParser(Collector()).dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01<b>\r\n\r\n")
    raw = errorResponse(caught.value.status)
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert caught.value.reason.encode() not in raw
    assert b"<b>" not in raw


def test_checkedResponseHeadRemembered():
    """
    A response head with a length is the same bytes however often it is
    built, for each status, reason, fields and length; heads with long
    field blocks are built each time, not kept, and the writer keeps at
    most its bound.
    """
    writer = HeadWriter(maxHeads=8)
    fields = b"Server: x\r\nContent-Type: text/plain\r\n"
    first = writer.checkedResponseHead(200, b"OK", fields, BodyKind.LENGTH, 5)
    again = writer.checkedResponseHead(200, b"OK", fields, BodyKind.LENGTH, 5)
    assert first is again
    assert first == b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 5\r\n\r\n"
    assert writer.checkedResponseHead(200, b"OK", fields, BodyKind.LENGTH, 6).endswith(
        b"Content-Length: 6\r\n\r\n"
    )
    assert writer.checkedResponseHead(404, b"Nope", fields, BodyKind.LENGTH, 5).startswith(
        b"HTTP/1.1 404 Nope\r\n"
    )
    long = b"X-Long: " + b"a" * 2000 + b"\r\n"
    head = writer.checkedResponseHead(200, b"OK", long, BodyKind.LENGTH, 1)
    assert head == b"HTTP/1.1 200 OK\r\n" + long + b"Content-Length: 1\r\n\r\n"
    assert (200, b"OK", long, 1) not in writer._lengthHeads
    for length in range(100):
        writer.checkedResponseHead(200, b"OK", fields, BodyKind.LENGTH, length)
    assert len(writer._lengthHeads) <= 8


@pytest.mark.parametrize(
    "kind, length, framing",
    [
        (BodyKind.CHUNKED, None, b"Transfer-Encoding: chunked\r\n"),
        (BodyKind.UNTIL_CLOSE, None, b""),
        (BodyKind.NONE, 7, b"Content-Length: 7\r\n"),
        (BodyKind.NONE, None, b""),
    ],
)
def test_checkedResponseHeadSameAsGeneral(kind, length, framing):
    """
    A response head from checked field lines is what the general writer
    writes for the same fields, whatever the framing.
    """
    headers = Headers([(b"Server", b"x"), (b"ETag", b'"1"')])
    fields = b"Server: x\r\nETag: \"1\"\r\n"
    checked = WRITER.checkedResponseHead(200, b"OK", fields, kind, length)
    assert checked == WRITER.responseHead(200, b"OK", headers, kind, length)
    assert checked == b"HTTP/1.1 200 OK\r\n" + fields + framing + b"\r\n"


def test_knownLinesBounded():
    """
    The field lines a writer remembers as checked stay within its bound,
    whatever a peer sends, and unsafe ones are still refused after.
    """
    writer = HeadWriter(maxEntries=16)
    for index in range(200):
        writer.fieldBlock([(b"x-n", b"X-N", b"%d" % (index,))])
    assert len(writer._lines) <= 17 and len(writer._names) <= 17
    with pytest.raises(ValueError):
        writer.fieldBlock([(b"x-n", b"X-N", b"1\r\nX-Injected: 1")])
