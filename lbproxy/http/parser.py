"""
Strict incremental HTTP/1.1 parsers for requests and responses.

Division of work:

  - The parser frames each header block itself (it ends at the first CRLF
    CRLF) and feeds those bytes, as they arrive, to llhttp (through
    httptools) in strict mode. llhttp rejects syntax errors early: bad
    header names and values, bare CR or LF, obs-fold, a head not ended by
    CRLF CRLF, unknown methods, bad URL characters, duplicated
    Content-Length, Content-Length with Transfer-Encoding.
  - On top of that the parser checks what llhttp lets through: the exact
    request and status line (single spaces, HTTP/1.0 or HTTP/1.1 only, no
    fragment, request target form per method), Content-Length digits,
    Transfer-Encoding other than exactly one final "chunked", HTTP/1.0
    with Transfer-Encoding, Host (one, valid, matching an absolute
    target), Upgrade syntax, and the size limits.
  - Bodies are delimited by the parser, never by llhttp: it knows where each
    message ends, so pipelined messages, pausing between (or inside)
    messages and the start of a tunnel need no byte offsets from llhttp,
    and a response to HEAD is handled (httptools cannot tell llhttp about
    HEAD). Chunked bodies are decoded by a strict decoder here.

Before a request line, empty lines (CRLF) are skipped, as RFC 9112 §2.2
allows, but their bytes count against the request-line limit of the
request that follows: more than the limit of them is 400, so a client
streaming CRLFs is refused once, after a bounded number of bytes. The first
bytes of a request must be a method (a token followed by SP): anything else
(binary data, control bytes, a TLS ClientHello sent to a plaintext port) is
400 as soon as the first wrong byte arrives, not once the request-line
limit is reached.

Status choices: every syntax or smuggling problem is 400; a request line
over the limit (empty lines before it included) 414; a header block (or trailer section) over the size or
count limit 431; a body over the configured maximum 413; a Transfer-Encoding
that is well formed and ends with a single "chunked" but applies other
codings first (e.g. "gzip, chunked"), and a well-formed but unknown method,
501 (RFC 9112 §6.1, RFC 9110 §9.1). Odd forms (",chunked", "chunked,
chunked", parameters on chunked, bytes like 0xA0 around the value) are 400,
as is a final coding other than chunked (RFC 9112 §6.3). Every problem in a
response is 502.
"""

from __future__ import annotations

import re
from collections import deque

import httptools
from zope.interface import implementer

from lbproxy.http.errors import HTTPParseError
from lbproxy.http.interfaces import IHTTPMessageParser, IHTTPMessageReceiver
from lbproxy.http.message import (
    HOP_BY_HOP,
    BodyKind,
    Headers,
    RequestHead,
    ResponseHead,
    persistentConnection,
)
from lbproxy.http.syntax import (
    CHUNK_LINE,
    CONTENT_LENGTH,
    FIELD_LINE,
    REQUEST_LINE,
    STATUS_LINE,
    classifyTarget,
    isToken,
    parseCoding,
    parseHostPort,
    splitList,
    splitStrictList,
)

# Parser states; each names the step that runs next.
_HEAD = "head"
_LENGTH = "length"
_CHUNK_LINE = "chunk-line"
_CHUNK_DATA = "chunk-data"
_CHUNK_END = "chunk-end"
_TRAILERS = "trailers"
_UNTIL_CLOSE = "until-close"
_COMPLETE = "complete"
_UPGRADE = "upgrade"
_TUNNEL = "tunnel"
_CLOSED = "closed"
_DETACHED = "detached"
_FAILED = "failed"

#: Empty lines before a message (RFC 9112 §2.2).
_EMPTY_LINES = re.compile(rb"(?:\r\n)++")
#: The bytes a method may start with, up to its longest length.
_METHOD_CHARS = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{0,64}+")
_MAX_METHOD = 64
#: Why a request starting with a TLS record (handshake type 0x16, version
#: 3.x) is refused: a client speaking TLS to a plaintext port.
TLS_ON_PLAINTEXT = "TLS handshake on a plaintext HTTP listener"

# Fields the framing and routing checks look at.
_SPECIAL = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"connection", b"upgrade"}
)

_DEFAULT_PORTS = {b"http": 80, b"https": 443}

_NO_OPTIONS: frozenset[bytes] = frozenset()

# The simple form of a message, parsed without llhttp (see
# RequestParser.simpleRequest and ResponseParser.simpleResponse): a subset
# of what the strict path accepts, with every field line of the form
# token ":" OWS value OWS, the value visible ASCII with SP/HTAB only inside.
# Possessive quantifiers keep each match linear in the line's length.
_SIMPLE_FIELD_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]++):[\t ]*+((?:[\x21-\x7e]++(?:[\t ]++[\x21-\x7e]++)*+)?)[\t ]*+"
)
#: A request line with a method llhttp knows and an origin-form target of
#: RFC 3986 path and query characters.
_SIMPLE_REQUEST_LINE = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) "
    rb"(/[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*+) HTTP/1\.([01])"
)
#: A final status line with a reason phrase of visible ASCII, SP and HTAB.
_SIMPLE_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([2-5][0-9][0-9]) ([\t \x21-\x7e]*+)")
_VERSIONS = {b"0": (1, 0), b"1": (1, 1)}
#: Connection options that name no other field to remove.
_PLAIN_OPTIONS = frozenset({b"close", b"keep-alive"})

# What a simple field is to the parsers, in an order that lets a response
# keep the fields below _HOP: those from _HOP on are hop-by-hop or framing
# fields, which a response's L{ResponseHead.fields} leaves out.
_FIELD = 0
_HOST = 1
_HOP = 2
_CONTENT_LENGTH = 2
_CONNECTION = 3
_TRANSFER_ENCODING = 4
_UPGRADE = 5
_OTHER_HOP = 6
_FIELD_KINDS = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"connection": _CONNECTION,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"upgrade": _UPGRADE,
}
for _name in HOP_BY_HOP:
    _FIELD_KINDS.setdefault(_name, _OTHER_HOP)
del _name

#: Field lines, request lines and status lines (without CRLF) found in the
#: simple form, with what was parsed from them: the same ones come back
#: message after message (a backend's Server, Content-Type, Connection...;
#: a client's Host, User-Agent, Accept...), and a dict lookup costs less
#: than matching them again. Each table is emptied when it holds
#: _SIMPLE_LIMIT entries; lines longer than _SIMPLE_SIZE are not kept.
_simpleFields: dict[bytes, tuple] = {}
_simpleRequestLines: dict[bytes, tuple] = {}
_simpleStatusLines: dict[bytes, tuple] = {}
_SIMPLE_LIMIT = 4096
_SIMPLE_SIZE = 256
#: Whole heads (without the final CRLF CRLF) found in the simple form,
#: with what was parsed from them: a client sends the same head request
#: after request, a backend the same one for every response of the same
#: second (its Date field changes once a second), and one lookup costs less
#: than splitting the head and looking up each line. Bounded like the
#: tables above, with larger heads left out.
_simpleRequestHeads: dict[bytes, tuple] = {}
_simpleResponseHeads: dict[bytes, tuple] = {}
_SIMPLE_HEAD_LIMIT = 1024
_SIMPLE_HEAD_SIZE = 1024


def _remember(table: dict, line: bytes, entry) -> None:
    if len(line) <= _SIMPLE_SIZE:
        if len(table) >= _SIMPLE_LIMIT:
            table.clear()
        table[line] = entry


def _rememberHead(table: dict, head: bytes, entry) -> None:
    if len(head) <= _SIMPLE_HEAD_SIZE:
        if len(table) >= _SIMPLE_HEAD_LIMIT:
            table.clear()
        table[head] = entry


def _simpleField(line: bytes) -> tuple | None:
    """
    The entry of a field line (without CRLF) in the simple form:
    C{((lowercased name, name, value), "name: value" CRLF, kind, parsed)},
    where C{parsed} is the length of a valid Content-Length (else L{None})
    and the lowercased options of a Connection field; or L{None} when the
    line is not in the simple form.
    """
    match = _SIMPLE_FIELD_LINE.fullmatch(line)
    if match is None:
        return None
    name, value = match.groups()
    lowered = name.lower()
    kind = _FIELD_KINDS.get(lowered, _FIELD)
    parsed = None
    if kind == _CONTENT_LENGTH:
        if CONTENT_LENGTH.fullmatch(value) is not None:
            parsed = int(value)
    elif kind == _CONNECTION:
        if b"," in value:
            parsed = frozenset(token.lower() for token in splitList(value))
        else:
            parsed = frozenset([value.lower()]) if value else _NO_OPTIONS
    entry = ((lowered, name, value), b"%s: %s\r\n" % (name, value), kind, parsed)
    _remember(_simpleFields, line, entry)
    return entry


def _simpleFieldEntries(data: bytes, start: int, end: int) -> list[tuple] | None:
    """
    The entries (see L{_simpleField}) of the field lines of C{data} from
    C{start} to C{end} (the CRLF of the last line, or C{start} when there
    are none), or L{None} unless all are in the simple form.
    """
    if start >= end:
        return []
    lines = data[start:end].split(b"\r\n")
    entries = list(map(_simpleFields.get, lines))
    if None in entries:
        for index, entry in enumerate(entries):
            if entry is None:
                entry = entries[index] = _simpleField(lines[index])
                if entry is None:
                    return None
    return entries


def _simpleRequestHead(data: bytes, end: int) -> tuple | None:
    """
    What L{RequestParser.simpleRequest} needs of the head of C{data} (which
    ends at C{end}, its final CRLF CRLF), when it is in the simple form:
    C{(end of the request line, field count, method, target, version,
    field items, Content-Length, keepAlive, Host value, Connection
    options)}; else L{None}. Depends on the head's bytes only, so that it
    can be remembered by them; the limits are checked by the caller.
    """
    lineEnd = data.find(b"\r\n")
    requestLine = data[:lineEnd]
    parsed = _simpleRequestLines.get(requestLine)
    if parsed is None:
        match = _SIMPLE_REQUEST_LINE.fullmatch(requestLine)
        if match is None:
            return None
        parsed = match.groups()
        _remember(_simpleRequestLines, requestLine, parsed)
    method, target, minor = parsed
    entries = _simpleFieldEntries(data, lineEnd + 2, end)
    if entries is None:
        return None
    host = contentLength = None
    connection = _NO_OPTIONS
    for entry in entries:
        kind = entry[2]
        if kind == _FIELD or kind == _OTHER_HOP:
            continue
        if kind == _HOST:
            if host is not None:
                return None
            host = entry[0][2]
        elif kind == _CONTENT_LENGTH:
            if contentLength is not None or entry[3] is None:
                return None
            contentLength = entry[3]
        elif kind == _CONNECTION:
            connection = entry[3] if connection is _NO_OPTIONS else connection | entry[3]
        else:
            return None
    if host is None:
        return None
    hostPort = parseHostPort(host)
    if hostPort is None or not hostPort[0]:
        return None
    version = _VERSIONS[minor]
    return (
        lineEnd,
        len(entries),
        method,
        target,
        version,
        tuple([entry[0] for entry in entries]),
        contentLength,
        persistentConnection(version, connection),
        host,
        connection,
    )


def _simpleResponseHead(data: bytes, end: int) -> tuple | None:
    """
    What L{ResponseParser.simpleResponse} needs of the head of C{data}
    (which ends at C{end}, its final CRLF CRLF), when it is in the simple
    form: C{(end of the status line, field count, status, reason, version,
    field items, Content-Length, keepAlive, Connection options, the field
    lines written to the client)}; else L{None}. As for
    L{_simpleRequestHead}, it depends on the head's bytes only.
    """
    lineEnd = data.find(b"\r\n")
    statusLine = data[:lineEnd]
    parsed = _simpleStatusLines.get(statusLine)
    if parsed is None:
        match = _SIMPLE_STATUS_LINE.fullmatch(statusLine)
        if match is None:
            return None
        minor, code, reason = match.groups()
        parsed = (minor, int(code), reason)
        _remember(_simpleStatusLines, statusLine, parsed)
    minor, status, reason = parsed
    entries = _simpleFieldEntries(data, lineEnd + 2, end)
    if entries is None:
        return None
    contentLength = None
    connection = _NO_OPTIONS
    for entry in entries:
        kind = entry[2]
        if kind < _HOP or kind == _OTHER_HOP or kind == _UPGRADE:
            continue
        if kind == _CONTENT_LENGTH:
            if contentLength is not None or entry[3] is None:
                return None
            contentLength = entry[3]
        elif kind == _CONNECTION:
            connection = entry[3] if connection is _NO_OPTIONS else connection | entry[3]
            if not connection <= _PLAIN_OPTIONS:
                return None
        else:
            return None
    version = _VERSIONS[minor]
    return (
        lineEnd,
        len(entries),
        status,
        reason,
        version,
        tuple([entry[0] for entry in entries]),
        contentLength,
        persistentConnection(version, connection),
        connection,
        b"".join([entry[1] for entry in entries if entry[2] < _HOP]),
    )


class _LLHTTPCallbacks:
    """
    The callback object httptools calls; its method names are the ones
    httptools looks up.

    Only header fields are collected, as they come: the request or status
    line is parsed from the raw head, so no URL or status callbacks are
    needed, and the field count is checked once the block is complete (the
    block's size limit already bounds it while it grows).

    @ivar items: the fields as C{(lowercased name, name, value)}, with the
        values' trailing whitespace removed (llhttp removes the leading
        whitespace only).
    @ivar special: those of L{items} that the framing and routing checks
        look at, so that they need not go over every field again.
    """

    __slots__ = ("items", "special", "complete")

    def __init__(self) -> None:
        self.items: list[tuple[bytes, bytes, bytes]] = []
        self.special: list[tuple[bytes, bytes, bytes]] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        item = (lowered, name, value.rstrip(b" \t"))
        self.items.append(item)
        if lowered in _SPECIAL:
            self.special.append(item)

    def on_headers_complete(self) -> None:
        self.complete = True


class _Fields:
    """
    The header fields of a block as C{(lowercased name, name, value)}, with
    the values' trailing whitespace removed (llhttp removes the leading
    whitespace only), and the framing and routing fields picked out, with
    duplicates refused.
    """

    __slots__ = (
        "items",
        "contentLength",
        "transferEncoding",
        "hosts",
        "host",
        "connection",
        "upgrade",
    )

    def __init__(self, callbacks: _LLHTTPCallbacks, status: int) -> None:
        contentLength = None
        transferEncoding = None
        hosts = 0
        host = None
        connection: set[bytes] = set()
        upgrade = None
        for lowered, _, value in callbacks.special:
            if lowered == b"content-length":
                if contentLength is not None:
                    raise HTTPParseError(status, "several Content-Length fields")
                if CONTENT_LENGTH.fullmatch(value) is None:
                    raise HTTPParseError(status, "invalid Content-Length")
                contentLength = int(value)
            elif lowered == b"transfer-encoding":
                if transferEncoding is not None:
                    raise HTTPParseError(status, "several Transfer-Encoding fields")
                transferEncoding = value
            elif lowered == b"host":
                hosts += 1
                host = value
            elif lowered == b"connection":
                if b"," in value:
                    connection.update(token.lower() for token in splitList(value))
                elif value:
                    # A single option, already without surrounding whitespace.
                    connection.add(value.lower())
            else:
                upgrade = value if upgrade is None else upgrade + b", " + value
        self.items = callbacks.items
        self.contentLength = contentLength
        self.transferEncoding = transferEncoding
        self.hosts = hosts
        self.host = host
        self.connection = frozenset(connection) if connection else _NO_OPTIONS
        self.upgrade = upgrade


def _checkChunkedOnly(value: bytes, status: int, unsupportedStatus: int) -> None:
    """
    Accept a Transfer-Encoding value only when it is exactly one final
    "chunked" (case-insensitive, surrounding SP/HTAB allowed).

    @param unsupportedStatus: the status for a well-formed list that ends
        with a single chunked but applies other codings first.
    """
    elements = splitStrictList(value)
    if elements is None:
        raise HTTPParseError(status, "malformed Transfer-Encoding")
    codings = []
    for element in elements:
        coding = parseCoding(element)
        if coding is None:
            raise HTTPParseError(status, "malformed Transfer-Encoding")
        codings.append(coding)
    names = [name for name, _ in codings]
    if names.count(b"chunked") > 1:
        raise HTTPParseError(status, "chunked applied more than once")
    if names[-1] != b"chunked":
        raise HTTPParseError(status, "Transfer-Encoding does not end with chunked")
    if codings[-1][1]:
        raise HTTPParseError(status, "parameters on chunked")
    if len(names) > 1:
        raise HTTPParseError(unsupportedStatus, "unsupported transfer coding")


def _llhttpError(error: httptools.HttpParserError, status: int) -> HTTPParseError:
    """
    The L{HTTPParseError} for an error raised by llhttp: ours when one of
    our callbacks raised it, else llhttp's fixed description.
    """
    context = error.__context__
    if isinstance(context, HTTPParseError):
        return context
    description = str(error) or "malformed message"
    return HTTPParseError(status, f"malformed message: {description}")


@implementer(IHTTPMessageParser)
class _MessageParser:
    """
    What request and response parsing share: buffering, pausing, header
    block framing and limits, body delimiting and chunked decoding.

    Subclasses set C{_parserFactory} and the error statuses, and provide
    C{_buildHead}; they may extend C{_beginMessage} and C{_afterMessage}.

    @ivar error: the L{HTTPParseError} the parser failed with, if any; it
        discards everything received afterwards.
    """

    _errorStatus = 400
    _lineTooLongStatus = 414
    _headTooLargeStatus = 431
    _bodyTooLargeStatus = 413
    _parserFactory = httptools.HttpRequestParser

    def __init__(
        self,
        receiver: IHTTPMessageReceiver,
        *,
        maxLineBytes: int,
        maxHeaderBytes: int,
        maxHeaders: int,
        maxBodySize: int | None,
        maxChunkLineBytes: int,
        maxBufferedBytes: int,
    ) -> None:
        self._receiver = receiver
        self._maxLineBytes = maxLineBytes
        self._maxHeaderBytes = maxHeaderBytes
        self._maxHeaders = maxHeaders
        self._maxBodySize = maxBodySize
        self._maxChunkLineBytes = maxChunkLineBytes
        self._maxBufferedBytes = maxBufferedBytes
        self._buf = b""
        self._pos = 0
        self._pending: list[bytes] = []
        self._pendingBytes = 0
        self._state = _HEAD
        self._inHead = False
        #: Bytes of empty lines skipped before the next message.
        self._leading = 0
        self._fedBytes = 0
        self._scanFrom = 0
        self._lineEnd = -1
        self._llhttp = None
        self._callbacks: _LLHTTPCallbacks | None = None
        self._head: RequestHead | ResponseHead | None = None
        self._remaining = 0
        self._bodyBytes = 0
        #: Whether delivery of events is suspended (a plain attribute: the
        #: front reads it after every chunk).
        self.paused = False
        self._processing = False
        self._eof = False
        self.error: HTTPParseError | None = None

    # -- public interface ---------------------------------------------------

    @property
    def idle(self) -> bool:
        # Nothing buffered: bufferedBytes written out (checked after each
        # keep-alive response).
        return (
            self._state == _HEAD
            and not self._inHead
            and not (len(self._buf) - self._pos + self._pendingBytes)
        )

    @property
    def bufferedBytes(self) -> int:
        """
        Bytes received but not parsed yet (while paused, or a partial head or
        chunk line).
        """
        return len(self._buf) - self._pos + self._pendingBytes

    def dataReceived(self, data: bytes) -> None:
        state = self._state
        if state == _FAILED or state == _CLOSED or not data:
            return
        if state == _DETACHED:
            raise ValueError("the parser was detached for a tunnel")
        if self.paused:
            # Kept aside until a step needs more bytes, so that data piling
            # up while paused is not copied again with every arrival.
            self._pending.append(data)
            self._pendingBytes += len(data)
            if self.bufferedBytes > self._maxBufferedBytes:
                self._fail(HTTPParseError(self._errorStatus, "too much data while paused"))
            return
        if self._pos >= len(self._buf) and not self._pending and not self._processing:
            # Everything before was parsed: the data is the buffer.
            self._buf = data
            self._pos = 0
        else:
            self._pending.append(data)
            self._pendingBytes += len(data)
        self._process()

    def connectionLost(self) -> None:
        if self._state in (_FAILED, _CLOSED, _DETACHED):
            return
        self._eof = True
        if not self.paused:
            self._process()

    def pauseParsing(self) -> None:
        self.paused = True

    def resumeParsing(self) -> None:
        if self._state == _TUNNEL:
            return
        if self._state == _UPGRADE:
            if self._head.keepAlive:
                self._state = _HEAD
            else:
                self._closeQuietly()
        self.paused = False
        if self._state == _HEAD and self._readyForSimple():
            # Nothing waits: the next read starts the next message.
            return
        self._process()

    def detachTunnel(self) -> bytes:
        if self._state not in (_UPGRADE, _TUNNEL):
            raise ValueError("no tunnel was opened")
        self._merge()
        rest = self._buf
        self._buf = b""
        self._pos = 0
        self._state = _DETACHED
        return rest

    def _readyForSimple(self) -> bool:
        """
        Whether nothing is buffered or half parsed, so that a read holding
        a whole message in the simple form can be parsed in one step.
        """
        return (
            self._state == _HEAD
            and not self.paused
            and not self._inHead
            and not self._processing
            and not self._pending
            and not self._eof
            and self._pos >= len(self._buf)
        )

    # -- processing loop ----------------------------------------------------

    def _fail(self, error: HTTPParseError) -> None:
        self.error = error
        self._state = _FAILED
        self._discard()
        self._llhttp = None
        raise error

    def _discard(self) -> None:
        self._buf = b""
        self._pos = 0
        self._pending = []
        self._pendingBytes = 0

    def _merge(self) -> None:
        """
        Make the unparsed bytes and the pending data one buffer, starting at
        position 0. Positions kept relative to the start of a header block
        stay valid, since the block starts at the current position.
        """
        pending = self._pending
        if self._pos < len(self._buf):
            pending.insert(0, self._buf[self._pos :] if self._pos else self._buf)
        if len(pending) == 1:
            self._buf = pending[0]
        else:
            self._buf = b"".join(pending)
        self._pos = 0
        self._pending = []
        self._pendingBytes = 0

    def _process(self) -> None:
        if self._processing:
            # Called from a receiver callback: the running loop goes on.
            return
        self._processing = True
        steps = self._steps
        try:
            while not self.paused:
                if self._pending:
                    self._merge()
                if not steps[self._state](self) and not self._pending:
                    break
        except HTTPParseError as error:
            self._fail(error)
        finally:
            self._processing = False

    def _truncated(self, where: str) -> HTTPParseError:
        return HTTPParseError(self._errorStatus, f"connection closed {where}")

    # -- header block -------------------------------------------------------

    def _stepHead(self) -> bool:
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if not self._inHead:
            if buf.startswith(b"\r\n", pos):
                pos = self._skipEmptyLines(buf, pos, end)
            self._pos = pos
            if pos >= end or (end - pos == 1 and buf[pos] == 13):
                if self._eof:
                    if pos < end:
                        raise self._truncated("before a message")
                    self._closeQuietly()
                return False
            self._checkStart(buf, pos, end)
            self._beginMessage()
            callbacks = _LLHTTPCallbacks()
            llhttp = self._parserFactory(callbacks)
            crlfcrlf = buf.find(b"\r\n\r\n", pos)
            if crlfcrlf >= 0 and crlfcrlf + 4 - pos <= self._maxHeaderBytes:
                # The whole head arrived at once (the common case).
                return self._headReceived(buf, pos, crlfcrlf + 4, llhttp, callbacks, 0)
            self._callbacks = callbacks
            self._llhttp = llhttp
            self._inHead = True
            self._fedBytes = 0
            self._scanFrom = 0
            self._lineEnd = -1
        elif not self._fedBytes:
            # The method was incomplete at the last read.
            self._checkStart(buf, pos, end)
        limit = self._maxHeaderBytes
        crlfcrlf = buf.find(b"\r\n\r\n", pos + self._scanFrom)
        if crlfcrlf < 0 or crlfcrlf + 4 - pos > limit:
            available = end - pos
            if self._lineEnd < 0:
                maxLine = self._maxLineBytes - self._leading
                lineEnd = buf.find(b"\r\n", pos + max(0, self._fedBytes - 1), pos + maxLine + 2)
                if lineEnd >= 0:
                    self._lineEnd = lineEnd - pos
                elif available >= maxLine + 2:
                    raise HTTPParseError(self._lineTooLongStatus, "start line too long")
            if crlfcrlf >= 0 or available >= limit:
                raise HTTPParseError(self._headTooLargeStatus, "header block too large")
            if self._eof:
                raise self._truncated("in the header block")
            # Feed what there is, so that llhttp rejects garbage early.
            if self._fedBytes or self._readyToFeed(buf, pos, end):
                self._feed(self._llhttp, buf, pos + self._fedBytes, end)
                self._fedBytes = available
            self._scanFrom = max(0, available - 3)
            return False
        llhttp = self._llhttp
        callbacks = self._callbacks
        self._inHead = False
        self._llhttp = None
        self._callbacks = None
        return self._headReceived(buf, pos, crlfcrlf + 4, llhttp, callbacks, self._fedBytes)

    def _headReceived(
        self,
        buf: bytes,
        pos: int,
        headEnd: int,
        llhttp,
        callbacks: _LLHTTPCallbacks,
        fedBytes: int,
    ) -> bool:
        """
        The header block C{buf[pos:headEnd]} is complete, its first
        C{fedBytes} bytes already given to C{llhttp}: check it, build the
        head and hand it to the receiver.
        """
        self._feed(llhttp, buf, pos + fedBytes, headEnd)
        if not callbacks.complete:
            raise HTTPParseError(self._errorStatus, "malformed header block")
        lineEnd = buf.find(b"\r\n", pos, headEnd)
        if lineEnd - pos > self._maxLineBytes - self._leading:
            raise HTTPParseError(self._lineTooLongStatus, "start line too long")
        self._leading = 0
        if len(callbacks.items) > self._maxHeaders:
            raise HTTPParseError(self._headTooLargeStatus, "too many header fields")
        head, state = self._buildHead(buf, pos, lineEnd, _Fields(callbacks, self._errorStatus))
        self._pos = headEnd
        self._head = head
        self._bodyBytes = 0
        self._state = state
        self._receiver.headersComplete(head)
        return True

    def _feed(self, llhttp, buf: bytes, start: int, end: int) -> None:
        """
        Give C{llhttp} the head bytes C{buf[start:end]}.
        """
        if start >= end:
            return
        data = buf if start == 0 and end == len(buf) else memoryview(buf)[start:end]
        try:
            llhttp.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp stops at the end of an upgrade or CONNECT head, which is
            # where this feed ends anyway; the framing is decided here.
            pass
        except httptools.HttpParserInvalidMethodError:
            raise self._unknownMethod(buf) from None
        except httptools.HttpParserError as error:
            raise _llhttpError(error, self._errorStatus) from None

    def _skipEmptyLines(self, buf: bytes, pos: int, end: int) -> int:
        """
        Skip the empty lines at C{buf[pos:end]}, counting their bytes
        against the start-line limit of the message that follows (RFC 9112
        §2.2 asks to ignore at least one, not any number); return where
        they end.
        """
        budget = self._maxLineBytes - self._leading
        stop = pos + budget + 2
        after = _EMPTY_LINES.match(buf, pos, stop if stop < end else end).end()
        self._leading += after - pos
        if self._leading > self._maxLineBytes:
            raise HTTPParseError(self._errorStatus, "too many empty lines before the start line")
        return after

    def _checkStart(self, buf: bytes, pos: int, end: int) -> None:
        """
        Refuse the beginning C{buf[pos:end]} of a message as soon as it
        cannot start one (the request parser checks the method).
        """

    def _beginMessage(self) -> None:
        """
        The first byte of a message arrived. The response parser refuses
        bytes that answer no request here.
        """

    def _readyToFeed(self, buf: bytes, pos: int, end: int) -> bool:
        """
        Whether a partial head C{buf[pos:end]} may be given to llhttp yet.
        """
        return True

    def _unknownMethod(self, buf: bytes) -> HTTPParseError:
        return HTTPParseError(self._errorStatus, "invalid method")

    def _closeQuietly(self) -> None:
        self._state = _CLOSED
        self._discard()

    # -- bodies -------------------------------------------------------------

    def _deliver(self, count: int) -> None:
        """
        Pass the next C{count} buffered bytes to the receiver.
        """
        buf = self._buf
        pos = self._pos
        self._pos = pos + count
        if pos == 0 and count == len(buf):
            self._receiver.bodyData(buf)
        else:
            self._receiver.bodyData(buf[pos : pos + count])

    def _stepLength(self) -> bool:
        available = len(self._buf) - self._pos
        if not available:
            if self._eof:
                raise self._truncated("in the body")
            return False
        count = min(self._remaining, available)
        self._remaining -= count
        if not self._remaining:
            self._state = _COMPLETE
        self._deliver(count)
        return True

    def _stepChunkLine(self) -> bool:
        buf = self._buf
        pos = self._pos
        maxLine = self._maxChunkLineBytes
        newline = buf.find(b"\n", pos, pos + maxLine + 2)
        if newline < 0:
            if len(buf) - pos >= maxLine + 2:
                raise HTTPParseError(self._errorStatus, "chunk size line too long")
            if self._eof:
                raise self._truncated("in a chunk size line")
            return False
        if newline == pos or buf[newline - 1] != 13:
            raise HTTPParseError(self._errorStatus, "chunk size line not ended by CRLF")
        match = CHUNK_LINE.fullmatch(buf, pos, newline - 1)
        if match is None:
            raise HTTPParseError(self._errorStatus, "invalid chunk size line")
        size = int(match.group(1), 16)
        self._pos = newline + 1
        if not size:
            self._state = _TRAILERS
            return True
        self._bodyBytes += size
        if self._maxBodySize is not None and self._bodyBytes > self._maxBodySize:
            raise HTTPParseError(self._bodyTooLargeStatus, "body too large")
        self._remaining = size
        self._state = _CHUNK_DATA
        return True

    def _stepChunkData(self) -> bool:
        available = len(self._buf) - self._pos
        if not available:
            if self._eof:
                raise self._truncated("in chunk data")
            return False
        count = min(self._remaining, available)
        self._remaining -= count
        if not self._remaining:
            self._state = _CHUNK_END
        self._deliver(count)
        return True

    def _stepChunkEnd(self) -> bool:
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available >= 2:
            if buf[pos] != 13 or buf[pos + 1] != 10:
                raise HTTPParseError(self._errorStatus, "chunk data not followed by CRLF")
            self._pos = pos + 2
            self._state = _CHUNK_LINE
            return True
        if available == 1 and buf[pos] != 13:
            raise HTTPParseError(self._errorStatus, "chunk data not followed by CRLF")
        if self._eof:
            raise self._truncated("after chunk data")
        return False

    def _stepTrailers(self) -> bool:
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available >= 2 and buf[pos] == 13 and buf[pos + 1] == 10:
            self._pos = pos + 2
            self._state = _COMPLETE
            return True
        if available == 1 and buf[pos] == 13:
            if self._eof:
                raise self._truncated("in the trailer section")
            return False
        blockEnd = buf.find(b"\r\n\r\n", pos)
        if blockEnd < 0 or blockEnd + 4 - pos > self._maxHeaderBytes:
            if available >= self._maxHeaderBytes:
                raise HTTPParseError(self._headTooLargeStatus, "trailer section too large")
            if self._eof:
                raise self._truncated("in the trailer section")
            return False
        lines = buf[pos:blockEnd].split(b"\r\n")
        if len(lines) > self._maxHeaders:
            raise HTTPParseError(self._headTooLargeStatus, "too many trailer fields")
        items = []
        for line in lines:
            match = FIELD_LINE.fullmatch(line)
            if match is None:
                raise HTTPParseError(self._errorStatus, "malformed trailer field")
            name, value = match.groups()
            items.append((name.lower(), name, value))
        self._head.trailers = Headers._fromLowered(items)
        self._pos = blockEnd + 4
        self._state = _COMPLETE
        return True

    def _stepUntilClose(self) -> bool:
        available = len(self._buf) - self._pos
        if available:
            self._bodyBytes += available
            if self._maxBodySize is not None and self._bodyBytes > self._maxBodySize:
                raise HTTPParseError(self._bodyTooLargeStatus, "body too large")
            self._deliver(available)
            return True
        if self._eof:
            self._state = _COMPLETE
            return True
        return False

    def _stepComplete(self) -> bool:
        self._afterMessage(self._head)
        self._receiver.messageComplete()
        return True

    def _stepStopped(self) -> bool:
        return False

    def _bodyState(self, bodyKind: BodyKind, contentLength: int | None) -> str:
        """
        The state that reads a body of C{bodyKind}, with the size limit
        checked up front for a known length.
        """
        if bodyKind is BodyKind.LENGTH:
            if self._maxBodySize is not None and contentLength > self._maxBodySize:
                raise HTTPParseError(self._bodyTooLargeStatus, "body too large")
            if contentLength:
                self._remaining = contentLength
                return _LENGTH
            return _COMPLETE
        if bodyKind is BodyKind.CHUNKED:
            return _CHUNK_LINE
        if bodyKind is BodyKind.UNTIL_CLOSE:
            return _UNTIL_CLOSE
        return _COMPLETE

    def _afterMessage(self, head: RequestHead | ResponseHead) -> None:
        """
        Choose what follows a complete message, before the receiver hears of
        its completion.
        """
        if head.keepAlive:
            self._state = _HEAD
        else:
            # Anything after a message that closes the connection is ignored.
            self._closeQuietly()

    _steps = {
        _HEAD: _stepHead,
        _LENGTH: _stepLength,
        _CHUNK_LINE: _stepChunkLine,
        _CHUNK_DATA: _stepChunkData,
        _CHUNK_END: _stepChunkEnd,
        _TRAILERS: _stepTrailers,
        _UNTIL_CLOSE: _stepUntilClose,
        _COMPLETE: _stepComplete,
        _UPGRADE: _stepStopped,
        _TUNNEL: _stepStopped,
        _CLOSED: _stepStopped,
        _DETACHED: _stepStopped,
        _FAILED: _stepStopped,
    }


class RequestParser(_MessageParser):
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
    """

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
    ) -> None:
        super().__init__(
            receiver,
            maxLineBytes=maxRequestLine,
            maxHeaderBytes=maxHeaderBytes,
            maxHeaders=maxHeaders,
            maxBodySize=maxBodySize,
            maxChunkLineBytes=maxChunkLineBytes,
            maxBufferedBytes=maxBufferedBytes,
        )

    def simpleRequest(self, data: bytes) -> tuple[RequestHead, bytes] | None:
        """
        Parse C{data} at once when it is exactly one whole request in the
        simple form and the parser holds nothing else: a method llhttp
        knows (not CONNECT), an origin-form target of RFC 3986 path and
        query characters, HTTP/1.0 or HTTP/1.1, one valid Host, field
        values of visible ASCII (SP and HTAB inside only), no
        Transfer-Encoding or Upgrade, within the limits, and no body or a
        Content-Length body that is the rest of C{data}. This is what
        nearly every request looks like, and all of it is accepted by the
        strict path too, with the same result; checking it with one
        pattern costs less than llhttp's callback per field.

        On success the parser is where it would be after delivering that
        message and being paused by its receiver (which delivery it skips:
        the caller handles the request itself).

        @return: the head and the body, or L{None} (nothing was consumed:
            feed C{data} to L{dataReceived}).
        """
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 > self._maxHeaderBytes or not self._readyForSimple():
            return None
        headBytes = data[:end]
        parsed = _simpleRequestHeads.get(headBytes)
        if parsed is None:
            parsed = _simpleRequestHead(data, end)
            if parsed is None:
                return None
            _rememberHead(_simpleRequestHeads, headBytes, parsed)
        (
            lineEnd,
            fieldCount,
            method,
            target,
            version,
            items,
            contentLength,
            keepAlive,
            host,
            connection,
        ) = parsed
        if lineEnd > self._maxLineBytes - self._leading or fieldCount > self._maxHeaders:
            return None
        body = b""
        if contentLength is None:
            bodyKind = BodyKind.NONE
            if len(data) != end + 4:
                return None
        else:
            bodyKind = BodyKind.LENGTH
            if len(data) - end - 4 != contentLength:
                return None
            if self._maxBodySize is not None and contentLength > self._maxBodySize:
                return None
            if contentLength:
                body = data[end + 4 :]
        head = RequestHead(
            method,
            target,
            version,
            Headers._fromLowered(list(items)),
            bodyKind,
            contentLength,
            keepAlive,
            (),
            "origin",
            host,
            None,
            connection,
            True,
        )
        self._head = head
        self._bodyBytes = len(body)
        self._leading = 0
        if keepAlive:
            self._buf = b""
            self._pos = 0
        else:
            self._closeQuietly()
        self.paused = True
        return head, body

    def _checkStart(self, buf: bytes, pos: int, end: int) -> None:
        # A method: up to 64 token characters, then SP. Refused at the
        # first byte that cannot be part of one, whatever follows.
        stop = pos + _MAX_METHOD + 1
        if stop > end:
            stop = end
        after = _METHOD_CHARS.match(buf, pos, stop).end()
        if after == stop:
            if after - pos <= _MAX_METHOD:
                # Token characters so far: wait for the rest.
                return
        elif after > pos and buf[after] == 32:
            return
        if buf[pos] == 0x16 and (end - pos < 2 or buf[pos + 1] == 3):
            raise HTTPParseError(400, TLS_ON_PLAINTEXT)
        raise HTTPParseError(400, "invalid method")

    def _readyToFeed(self, buf: bytes, pos: int, end: int) -> bool:
        # Hold back a method until it is complete, so that an unknown one
        # gets the same answer however the bytes were split (_checkStart
        # has refused whatever is not a token already).
        return buf.find(b" ", pos, end) >= 0 or end - pos > _MAX_METHOD

    def _unknownMethod(self, buf: bytes) -> HTTPParseError:
        # llhttp knows every registered method; a well-formed other token is
        # a method this server does not implement (RFC 9110 §9.1).
        space = buf.find(b" ", self._pos, self._pos + 64)
        if space > self._pos and isToken(buf[self._pos : space]):
            return HTTPParseError(501, "method not implemented")
        return HTTPParseError(400, "invalid method")

    def _buildHead(
        self, buf: bytes, pos: int, lineEnd: int, fields: _Fields
    ) -> tuple[RequestHead, str]:
        line = REQUEST_LINE.fullmatch(buf, pos, lineEnd)
        if line is None:
            raise HTTPParseError(400, "malformed request line")
        method, target, major, minor = line.groups()
        if major != b"1" or minor not in (b"0", b"1"):
            raise HTTPParseError(400, "unsupported HTTP version")
        version = (1, int(minor))

        form = classifyTarget(target)
        if form is None:
            raise HTTPParseError(400, "invalid request target")
        targetForm, authority = form
        if (targetForm == "authority") != (method == b"CONNECT"):
            raise HTTPParseError(400, "invalid request target for the method")
        if targetForm == "asterisk" and method != b"OPTIONS":
            raise HTTPParseError(400, "invalid request target for the method")

        if fields.hosts > 1:
            raise HTTPParseError(400, "several Host fields")
        if fields.hosts:
            hostPort = parseHostPort(fields.host)
            if hostPort is None or not hostPort[0]:
                raise HTTPParseError(400, "invalid Host")
            if targetForm == "absolute" and not _sameAuthority(target, authority, hostPort):
                raise HTTPParseError(400, "Host does not match the request target")
        elif version == (1, 1):
            raise HTTPParseError(400, "missing Host")
        if authority is None:
            authority = fields.host

        contentLength = fields.contentLength
        if fields.transferEncoding is not None:
            if version == (1, 0):
                raise HTTPParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if contentLength is not None:
                raise HTTPParseError(400, "both Content-Length and Transfer-Encoding")
            _checkChunkedOnly(fields.transferEncoding, 400, 501)
            bodyKind = BodyKind.CHUNKED
        elif contentLength is not None:
            bodyKind = BodyKind.LENGTH
        else:
            bodyKind = BodyKind.NONE

        upgrade: tuple[bytes, ...] = ()
        if fields.upgrade is not None and version == (1, 1) and b"upgrade" in fields.connection:
            protocols = splitList(fields.upgrade)
            if not protocols or not all(_isProtocol(p) for p in protocols):
                raise HTTPParseError(400, "malformed Upgrade")
            upgrade = tuple(p.lower() for p in protocols)
        hasBody = bodyKind is BodyKind.CHUNKED or bool(contentLength)
        if hasBody and (upgrade or method == b"CONNECT"):
            raise HTTPParseError(400, "tunnel request with a body")

        # Positional: the fields of RequestHead in order (faster than keywords).
        head = RequestHead(
            method,
            target,
            version,
            Headers._fromLowered(fields.items),
            bodyKind,
            contentLength,
            persistentConnection(version, fields.connection),
            upgrade,
            targetForm,
            authority,
            None,
            fields.connection,
        )
        return head, self._bodyState(bodyKind, contentLength)

    def _afterMessage(self, head: RequestHead) -> None:
        if head.upgrade or head.method == b"CONNECT":
            self._state = _UPGRADE
            self.paused = True
        else:
            _MessageParser._afterMessage(self, head)


def _isProtocol(value: bytes) -> bool:
    """
    Whether C{value} is C{protocol-name ["/" protocol-version]} (RFC 9110
    §7.8).
    """
    name, slash, version = value.partition(b"/")
    return isToken(name) and (not slash or isToken(version))


def _sameAuthority(
    target: bytes, authority: bytes, hostPort: tuple[bytes, int | None]
) -> bool:
    """
    Whether an absolute target's authority and the Host field name the same
    host and port (default port of the target's scheme when absent).
    """
    scheme = target.split(b":", 1)[0].lower()
    default = _DEFAULT_PORTS[scheme]
    targetHost, targetPort = parseHostPort(authority)
    return targetHost.lower() == hostPort[0].lower() and (targetPort or default) == (
        hostPort[1] or default
    )


class ResponseParser(_MessageParser):
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
    """

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
    ) -> None:
        super().__init__(
            receiver,
            maxLineBytes=maxStatusLine,
            maxHeaderBytes=maxHeaderBytes,
            maxHeaders=maxHeaders,
            maxBodySize=maxBodySize,
            maxChunkLineBytes=maxChunkLineBytes,
            maxBufferedBytes=maxBufferedBytes,
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

    def simpleResponse(self, data: bytes) -> tuple[ResponseHead, bytes, bool] | None:
        """
        Parse C{data} at once when it starts with a whole final response
        head in the simple form (see L{RequestParser.simpleRequest}; a
        status from 200 to 599, a reason phrase of visible ASCII, SP and
        HTAB, no Transfer-Encoding, Connection naming no other field, a
        Content-Length unless no body may follow) answering the only
        request expected, which is not CONNECT and asked for no upgrade,
        and the rest of C{data} is no more than its body. The head gets its
        L{ResponseHead.fields}.

        On success the parser is where it would be after delivering the
        head and that much of the body (and, with all of it, the end of the
        message); the caller tells its receiver.

        @return: the head, the body bytes and whether they complete the
            response; or L{None} (nothing was consumed: feed C{data} to
            L{dataReceived}).
        """
        end = data.find(b"\r\n\r\n")
        if (
            end < 0
            or end + 4 > self._maxHeaderBytes
            or len(self._expected) != 1
            or not self._readyForSimple()
        ):
            return None
        method, upgradeAllowed = self._expected[0]
        if upgradeAllowed or method == b"CONNECT":
            return None
        headBytes = data[:end]
        parsed = _simpleResponseHeads.get(headBytes)
        if parsed is None:
            parsed = _simpleResponseHead(data, end)
            if parsed is None:
                return None
            _rememberHead(_simpleResponseHeads, headBytes, parsed)
        (
            lineEnd,
            fieldCount,
            status,
            reason,
            version,
            items,
            contentLength,
            keepAlive,
            connection,
            fields,
        ) = parsed
        if lineEnd > self._maxLineBytes - self._leading or fieldCount > self._maxHeaders:
            return None
        rest = len(data) - end - 4
        if method == b"HEAD" or status == 304 or status == 204:
            bodyKind = BodyKind.NONE
            if status == 204 and method != b"HEAD":
                contentLength = None
            if rest:
                return None
        elif contentLength is None:
            return None
        else:
            bodyKind = BodyKind.LENGTH
            if rest > contentLength:
                return None
            if self._maxBodySize is not None and contentLength > self._maxBodySize:
                return None
        head = ResponseHead(
            status,
            reason,
            version,
            Headers._fromLowered(list(items)),
            bodyKind,
            contentLength,
            keepAlive,
            False,
            None,
            connection,
            fields,
        )
        self._expected.popleft()
        self._head = head
        self._bodyBytes = rest
        self._leading = 0
        body = data[end + 4 :] if rest else b""
        if bodyKind is BodyKind.LENGTH and rest < contentLength:
            self._remaining = contentLength - rest
            self._state = _LENGTH
            self._buf = b""
            self._pos = 0
            return head, body, False
        if keepAlive:
            self._buf = b""
            self._pos = 0
        else:
            self._closeQuietly()
        return head, body, True

    def connectionLost(self) -> None:
        if self._expected and self.idle:
            self._fail(HTTPParseError(502, "connection closed before the response"))
        _MessageParser.connectionLost(self)

    def _beginMessage(self) -> None:
        if not self._expected:
            raise HTTPParseError(502, "response without a request")

    def _buildHead(
        self, buf: bytes, pos: int, lineEnd: int, fields: _Fields
    ) -> tuple[ResponseHead, str]:
        line = STATUS_LINE.fullmatch(buf, pos, lineEnd)
        if line is None:
            raise HTTPParseError(502, "malformed status line")
        major, minor, code, reason = line.groups()
        if major != b"1" or minor not in (b"0", b"1"):
            raise HTTPParseError(502, "unsupported HTTP version")
        status = int(code)
        if status < 100 or status > 599:
            raise HTTPParseError(502, "invalid status code")
        version = (1, int(minor))
        contentLength = fields.contentLength
        if fields.transferEncoding is not None:
            if version == (1, 0):
                raise HTTPParseError(502, "Transfer-Encoding in an HTTP/1.0 response")
            if contentLength is not None:
                raise HTTPParseError(502, "both Content-Length and Transfer-Encoding")
            _checkChunkedOnly(fields.transferEncoding, 502, 502)

        method, upgradeAllowed = self._expected[0]
        tunnel = False
        if status < 200:
            bodyKind = BodyKind.NONE
            contentLength = None
            if status == 101:
                if not upgradeAllowed:
                    raise HTTPParseError(502, "unexpected 101 Switching Protocols")
                tunnel = True
                self._expected.popleft()
        else:
            self._expected.popleft()
            if method == b"CONNECT" and status < 300:
                tunnel = True
                bodyKind = BodyKind.NONE
                contentLength = None
            elif method == b"HEAD" or status == 304:
                bodyKind = BodyKind.NONE
            elif status == 204:
                bodyKind = BodyKind.NONE
                contentLength = None
            elif fields.transferEncoding is not None:
                bodyKind = BodyKind.CHUNKED
            elif contentLength is not None:
                bodyKind = BodyKind.LENGTH
            else:
                bodyKind = BodyKind.UNTIL_CLOSE

        keepAlive = bodyKind is not BodyKind.UNTIL_CLOSE and persistentConnection(
            version, fields.connection
        )
        # Positional: the fields of ResponseHead in order.
        head = ResponseHead(
            status,
            reason or b"",
            version,
            Headers._fromLowered(fields.items),
            bodyKind,
            contentLength,
            keepAlive,
            tunnel,
            None,
            fields.connection,
        )
        return head, self._bodyState(bodyKind, contentLength if bodyKind is BodyKind.LENGTH else None)

    def _afterMessage(self, head: ResponseHead) -> None:
        if head.tunnel:
            self._state = _TUNNEL
            self.paused = True
        elif head.interim:
            self._state = _HEAD
        elif not self._expected and self.bufferedBytes:
            # More than the final response to the last request sent (a
            # body on a HEAD, 204 or 304 answer, a second response): it
            # answers nothing, and the connection can no longer be trusted.
            self.extra = (head, self.bufferedBytes)
            self._closeQuietly()
        else:
            _MessageParser._afterMessage(self, head)


__all__ = ["HTTPParseError", "RequestParser", "ResponseParser"]
