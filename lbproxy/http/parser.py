"""
Strict incremental HTTP/1.1 parsers for requests and responses.

Division of work:

  - The parser frames each header block itself (it ends at the first CRLF
    CRLF) and feeds those bytes, as they arrive, to llhttp (through
    httptools, L{lbproxy.http.llhttp}) in strict mode, which rejects
    syntax errors early: bad header names and values, bare CR or LF,
    obs-fold, a head not ended by CRLF CRLF, unknown methods, bad URL
    characters, duplicated Content-Length, Content-Length with
    Transfer-Encoding. The parser checks the size limits.
  - What llhttp lets through, the one head builder (L{lbproxy.http.heads})
    checks and decides: start line, framing fields, Host, Upgrade, what
    the body is and whether the connection persists. Its record of a head
    depends on the head's bytes only: with a L{HeadCache}, a complete
    header block accepted before gives the same record again without
    being parsed again, within each parser's own limits.
  - Bodies are delimited by the parser (L{lbproxy.http.bodies}), never by
    llhttp, so pipelined messages, pausing between or inside messages and
    the start of a tunnel need no byte offsets from llhttp, and a response
    to HEAD is handled (httptools cannot tell llhttp about HEAD).

Before a request line, empty lines (CRLF) are skipped, as RFC 9112 §2.2
allows, but their bytes count against the request-line limit of the
request that follows: more than the limit of them is 400, so a client
streaming CRLFs is refused once, after a bounded number of bytes. The first
bytes of a request must be a method (a token followed by SP): anything else
(binary data, control bytes, a TLS ClientHello sent to a plaintext port) is
400 as soon as the first wrong byte arrives, not once the request-line
limit is reached.

Status choices for requests: a syntax or smuggling problem is 400 (the
builder's choices, L{lbproxy.http.heads}, included); a request line over
the limit (empty lines before it included) 414; a header block (or trailer
section) over the size or count limit 431; a body over the configured
maximum 413; a well-formed but unknown method 501 (RFC 9110 §9.1). Every
problem in a response is 502.
"""

from __future__ import annotations

from collections import deque

import httptools

from lbproxy.http.bodies import _HEAD, _TUNNEL, _UPGRADE
from lbproxy.http.errors import HTTPParseError
from lbproxy.http.headcache import HeadCache
from lbproxy.http.heads import RequestRecord, ResponseRecord, buildRequest, buildResponse
from lbproxy.http.interfaces import IHTTPMessageReceiver
from lbproxy.http.llhttp import TLS_ON_PLAINTEXT, checkMethodStart, methodComplete, unknownMethod
from lbproxy.http.message import RequestHead, ResponseHead
from lbproxy.http.parsing import MessageParser


class RequestParser(MessageParser):
    """
    Parses the requests a client sends on one connection.

    Pipelined requests are delivered one after another; the front pauses
    the parser (C{pauseParsing}) after each request until its response is
    sent, so later requests wait in the buffer. After a request that asks
    for an upgrade, or a CONNECT, the parser pauses itself: the front either
    calls C{detachTunnel} (the backend switched protocols) or
    C{resumeParsing} (it did not, HTTP goes on). After a request that does
    not keep the connection alive, later bytes are ignored.

    @param maxRequestLine: longest request line (without CRLF); 414 above.
    @param maxHeaderBytes: largest header block, request line and final
        CRLF CRLF included; 431 above. Also bounds a trailer section.
    @param maxHeaders: most header fields (and trailer fields); 431 above.
    @param maxBodySize: largest body, or L{None} for no limit; 413 above,
        before any of the body is delivered when Content-Length says so.
    @param maxChunkLineBytes: longest chunk size line with extensions.
    @param maxBufferedBytes: most bytes held while paused; beyond that the
        owner forgot to pause the transport and the connection fails.
    @param cache: the L{HeadCache} of the listener's request heads, or
        L{None} to parse every head.
    """

    __slots__ = ()

    _errorStatus = 400
    _parserFactory = httptools.HttpRequestParser

    def __init__(
        self,
        receiver: IHTTPMessageReceiver,
        *,
        maxRequestLine: int = 8192,
        maxHeaderBytes: int = 32768,
        maxHeaders: int = 100,
        maxBodySize: int | None = None,
        maxChunkLineBytes: int = 4096,
        maxBufferedBytes: int = 262144,
        cache: HeadCache | None = None,
    ) -> None:
        super().__init__(
            receiver,
            maxLineBytes=maxRequestLine,
            maxHeaderBytes=maxHeaderBytes,
            maxHeaders=maxHeaders,
            maxBodySize=maxBodySize,
            maxChunkLineBytes=maxChunkLineBytes,
            maxBufferedBytes=maxBufferedBytes,
            cache=cache,
        )

    # The hooks that are plain functions, called without a method of
    # their own: a method must start a request, and is held back from
    # llhttp until complete, so that an unknown one gets the same answer
    # however the bytes were split.
    _checkStart = staticmethod(checkMethodStart)
    _readyToFeed = staticmethod(methodComplete)
    _buildRecord = staticmethod(buildRequest)
    _newHead = staticmethod(RequestRecord.head)

    _unknownMethod = staticmethod(unknownMethod)

    def _plainHead(self, record: RequestRecord) -> RequestHead | None:
        return record.head() if record.plain else None

    def _afterMessage(self, head: RequestHead) -> None:
        if head.upgrade or head.method == b"CONNECT":
            self._state = _UPGRADE
            self.paused = True
        elif head.keepAlive:
            self._state = _HEAD
        else:
            self._closeQuietly()


class ResponseParser(MessageParser):
    """
    Parses the responses a backend sends on one connection.

    The front announces each request it sends with L{expectResponse}, since
    the framing of a response depends on it (no body for HEAD, a tunnel
    after 101 or a 2xx to CONNECT). Bytes that arrive when no response is
    expected fail with 502; bytes that follow the final response to the
    last request sent, in the same read, are dropped with the rest of the
    connection, and L{extra} says how many. Interim 1xx responses are
    delivered as messages of their own before the final one. After a
    tunnel opens the parser pauses and holds what follows for
    C{detachTunnel}. Every problem is reported with status 502.

    @param cache: the L{HeadCache} of the response heads of the pool's
        servers, or L{None} to parse every head.
    """

    __slots__ = ("_expected", "extra")

    _errorStatus = 502
    _lineTooLongStatus = 502
    _headTooLargeStatus = 502
    _bodyTooLargeStatus = 502
    _parserFactory = httptools.HttpResponseParser

    def __init__(
        self,
        receiver: IHTTPMessageReceiver,
        *,
        maxStatusLine: int = 8192,
        maxHeaderBytes: int = 65536,
        maxHeaders: int = 100,
        maxBodySize: int | None = None,
        maxChunkLineBytes: int = 4096,
        maxBufferedBytes: int = 262144,
        cache: HeadCache | None = None,
    ) -> None:
        super().__init__(
            receiver,
            maxLineBytes=maxStatusLine,
            maxHeaderBytes=maxHeaderBytes,
            maxHeaders=maxHeaders,
            maxBodySize=maxBodySize,
            maxChunkLineBytes=maxChunkLineBytes,
            maxBufferedBytes=maxBufferedBytes,
            cache=cache,
        )
        self._expected: deque[tuple[bytes, bool]] = deque()
        #: The last response and the count of the bytes that followed it
        #: when nothing more was expected: they were dropped, with the
        #: rest of the connection (see L{_afterMessage}).
        self.extra: tuple[ResponseHead, int] | None = None

    def expectResponse(self, method: bytes, upgrade: bool = False) -> None:
        """
        A request with C{method} was sent; C{upgrade} when it asked for a
        protocol switch the front allows (a 101 is refused otherwise).
        """
        self._expected.append((method, upgrade))

    @property
    def expecting(self) -> int:
        """
        How many requests still wait for their final response.
        """
        return len(self._expected)

    def connectionLost(self) -> None:
        if self._expected and self.idle:
            self._fail(HTTPParseError(502, "connection closed before the response"))
        MessageParser.connectionLost(self)

    def _beginMessage(self) -> None:
        if not self._expected:
            raise HTTPParseError(502, "response without a request")

    _buildRecord = staticmethod(buildResponse)

    def _newHead(self, record: ResponseRecord) -> ResponseHead:
        # It answers the oldest request, which is answered once its final
        # response ends (see _afterMessage).
        method, upgradeAllowed = self._expected[0]
        return record.head(method, upgradeAllowed)

    def _plainHead(self, record: ResponseRecord) -> ResponseHead | None:
        expected = self._expected
        if not expected or record.status < 200:
            return None
        method, upgradeAllowed = expected[0]
        if method == b"CONNECT":
            return None
        return record.head(method, upgradeAllowed)

    def _afterMessage(self, head: ResponseHead) -> None:
        expected = self._expected
        if head.status < 200 and not head.tunnel:
            # An interim response: the final one follows.
            self._state = _HEAD
            return
        # The final response: its request is answered.
        expected.popleft()
        if head.tunnel:
            self._state = _TUNNEL
            self.paused = True
            return
        if not expected:
            extra = len(self._buf) - self._pos + self._pendingBytes
            if extra:
                # More than the final response to the last request sent (a
                # body on a HEAD, 204 or 304 answer, a second response): it
                # answers nothing, and the connection can no longer be
                # trusted.
                self.extra = (head, extra)
                self._closeQuietly()
                return
        if head.keepAlive:
            self._state = _HEAD
        else:
            self._closeQuietly()


__all__ = ["HTTPParseError", "RequestParser", "ResponseParser", "TLS_ON_PLAINTEXT"]
