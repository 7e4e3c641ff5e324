"""
Writing heads, chunked framing and error responses.

What goes to a peer is always written from parsed values, never copied from
the bytes received: the proxy speaks HTTP/1.1 on both sides, writes single
spaces and CRLFs, and derives the framing fields (Content-Length or
Transfer-Encoding) from the body it is about to send, dropping any the
caller left in the headers. Names and values are checked before writing, so
a value with CR or LF (from a careless caller) cannot split a message.
"""

from __future__ import annotations

import re
from http import HTTPStatus

from lbproxy.http.message import BodyKind, Headers
from lbproxy.http.syntax import FIELD_VALUE, TOKEN

_FRAMING = frozenset({b"content-length", b"transfer-encoding"})

_fieldBlock = re.compile(rb"(?:" + TOKEN + rb": " + FIELD_VALUE + rb"\r\n)*")
_requestTarget = re.compile(rb"[\x21-\x7e]+")
_reasonPhrase = re.compile(rb"[\t \x21-\x7e\x80-\xff]*")
_token = re.compile(TOKEN)
_nameList = re.compile(rb"(?:" + TOKEN + rb"(?::" + TOKEN + rb")*)?")

LAST_CHUNK = b"0\r\n\r\n"

#: Names (of fields, and methods: tokens too) and whole field lines that
#: passed the check of L{_checkedBlock} already. The same ones come back message after message (Server,
#: Content-Type, the forwarding fields of a client...): a set lookup is
#: cheaper than checking them byte by byte again. Emptied when they hold
#: more than L{_KNOWN_LIMIT}, since values (dates, addresses) keep changing;
#: only what is at most L{_KNOWN_SIZE} bytes long is kept.
#: Response heads with a Content-Length built by checkedResponseHeadBytes,
#: by (status, reason, fields, length); at most _LENGTH_HEADS_KEPT of them,
#: each from at most _LENGTH_HEAD_FIELDS bytes of field lines.
_lengthHeads: dict[tuple, bytes] = {}
_LENGTH_HEADS_KEPT = 1024
_LENGTH_HEAD_FIELDS = 1024

_knownNames: set[bytes] = set()
_knownLines: set[bytes] = set()
_KNOWN_LIMIT = 8192
_KNOWN_SIZE = 256


def _checkedBlock(names: list[bytes], lines: list[bytes]) -> bytes:
    """
    Join field lines, refusing any name that is not a token and any value
    with CR, LF or another CTL (which could end the line early and inject
    fields of its own).

    A line C{name: value CRLF} whose name is a token splits only one way,
    so a known line with a known name is the same field that passed before.
    """
    if _knownNames.issuperset(names) and _knownLines.issuperset(lines):
        return b"".join(lines)
    block = b"".join(lines)
    if (
        _nameList.fullmatch(b":".join(names)) is None
        or _fieldBlock.fullmatch(block) is None
        or block.count(b"\n") != len(lines)
    ):
        raise ValueError("a header field cannot be written as it is")
    if len(_knownLines) > _KNOWN_LIMIT or len(_knownNames) > _KNOWN_LIMIT:
        _knownLines.clear()
        _knownNames.clear()
    _knownNames.update(name for name in names if len(name) <= _KNOWN_SIZE)
    _knownLines.update(line for line in lines if len(line) <= _KNOWN_SIZE)
    return block


def fieldBlock(fields) -> bytes:
    """
    The field lines C{name: value CRLF} of C{fields}, C{(lowercased name,
    name, value)} triples, checked as L{requestHeadBytes} checks fields:
    for blocks the caller writes many times as they are.

    @raise ValueError: a field cannot be written safely.
    """
    return _checkedBlock(
        [name for _, name, _ in fields], [b"%s: %s\r\n" % (name, value) for _, name, value in fields]
    )


def checkedRequestHeadBytes(
    method: bytes, target: bytes, fields: bytes, contentLength: int | None
) -> bytes:
    """
    An HTTP/1.1 request head from values the parser checked already (a
    head in the simple form: a method llhttp knows, an origin-form target
    of RFC 3986 characters) and field lines built from checked values or
    by L{fieldBlock}; C{Content-Length} is written when C{contentLength}
    is not L{None}.
    """
    if contentLength is None:
        return b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, fields)
    return b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (
        method,
        target,
        fields,
        contentLength,
    )


def checkedResponseHeadBytes(
    status: int, reason: bytes, fields: bytes, bodyKind: BodyKind, contentLength: int | None
) -> bytes:
    """
    An HTTP/1.1 status line and header block from a status and reason the
    parser checked (L{lbproxy.http.message.ResponseHead.fields} of a simple
    response) and field lines built from checked values; framing as for
    L{responseHeadBytes}.
    """
    if bodyKind is BodyKind.CHUNKED:
        return b"HTTP/1.1 %d %s\r\n%sTransfer-Encoding: chunked\r\n\r\n" % (
            status,
            reason,
            fields,
        )
    if contentLength is None or bodyKind is BodyKind.UNTIL_CLOSE:
        return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, fields)
    # The same response head comes back request after request (a backend's
    # fields change with its Date, once a second): remembered when short.
    key = (status, reason, fields, contentLength)
    head = _lengthHeads.get(key)
    if head is None:
        head = b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\n\r\n" % (
            status,
            reason,
            fields,
            contentLength,
        )
        if len(fields) <= _LENGTH_HEAD_FIELDS:
            if len(_lengthHeads) >= _LENGTH_HEADS_KEPT:
                _lengthHeads.clear()
            _lengthHeads[key] = head
    return head


def _fieldLines(headers: Headers, bodyKind: BodyKind, contentLength: int | None) -> bytes:
    names = []
    lines = []
    for lowered, name, value in headers._items:
        if lowered not in _FRAMING:
            names.append(name)
            lines.append(b"%s: %s\r\n" % (name, value))
    if bodyKind is BodyKind.CHUNKED:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif contentLength is not None and bodyKind is not BodyKind.UNTIL_CLOSE:
        lines.append(b"Content-Length: %d\r\n" % (contentLength,))
    return _checkedBlock(names, lines)


def requestHeadBytes(
    method: bytes,
    target: bytes,
    headers: Headers,
    bodyKind: BodyKind = BodyKind.NONE,
    contentLength: int | None = None,
) -> bytes:
    """
    An HTTP/1.1 request line and header block.

    @param bodyKind: the framing of the body that follows: C{LENGTH} writes
        C{Content-Length: contentLength}, C{CHUNKED} writes
        C{Transfer-Encoding: chunked} (the body must then be framed with
        L{encodeChunk} and L{lastChunk}), C{NONE} writes neither.
    @raise ValueError: the method, target or a field cannot be written
        safely.
    """
    if method not in _knownNames:
        if _token.fullmatch(method) is None:
            raise ValueError("the request line cannot be written as it is")
        if len(method) <= _KNOWN_SIZE:
            _knownNames.add(method)
    if _requestTarget.fullmatch(target) is None:
        raise ValueError("the request line cannot be written as it is")
    if bodyKind is BodyKind.UNTIL_CLOSE:
        raise ValueError("a request body cannot be delimited by closing")
    if bodyKind is BodyKind.LENGTH and contentLength is None:
        raise ValueError("a length body needs its length")
    if bodyKind is BodyKind.NONE:
        contentLength = None
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (
        method,
        target,
        _fieldLines(headers, bodyKind, contentLength),
    )


def responseHeadBytes(
    status: int,
    reason: bytes,
    headers: Headers,
    bodyKind: BodyKind = BodyKind.NONE,
    contentLength: int | None = None,
) -> bytes:
    """
    An HTTP/1.1 status line and header block.

    Framing as for L{requestHeadBytes}; in addition, with C{NONE} a given
    C{contentLength} is still written, as the announced length of a
    response to HEAD or of a 304, and C{UNTIL_CLOSE} writes no framing
    field (the caller must close the connection after the body).

    @raise ValueError: the status, reason or a field cannot be written.
    """
    if not 100 <= status <= 599 or _reasonPhrase.fullmatch(reason) is None:
        raise ValueError("the status line cannot be written as it is")
    if bodyKind is BodyKind.LENGTH and contentLength is None:
        raise ValueError("a length body needs its length")
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (
        status,
        reason,
        _fieldLines(headers, bodyKind, contentLength),
    )


def encodeChunk(data: bytes) -> list[bytes]:
    """
    The chunked framing of C{data}, as pieces for C{writeSequence} so the
    data is not copied. Empty data gives no chunk (a zero-size chunk would
    end the body).
    """
    if not data:
        return []
    return [b"%x\r\n" % (len(data),), data, b"\r\n"]


def lastChunk(trailers: Headers | None = None) -> bytes:
    """
    The end of a chunked body, with an optional trailer section.
    """
    if not trailers:
        return LAST_CHUNK
    names = [name for name, _ in trailers]
    block = _checkedBlock(names, [b"%s: %s\r\n" % (name, value) for name, value in trailers])
    return b"0\r\n%s\r\n" % (block,)


def errorResponse(status: int, includeBody: bool = True) -> bytes:
    """
    A complete response the proxy sends itself, closing the connection.

    The body is only the status and its standard phrase
    (C{"400 Bad Request\\n"}): the detailed reason of an
    L{lbproxy.http.errors.HTTPParseError} goes to the log, not to the peer,
    so nothing of the offending message is echoed and the parser's
    internals are not advertised.

    @param includeBody: L{False} for a response to HEAD (the length of the
        body that would have been sent is still announced).
    """
    phrase = HTTPStatus(status).phrase.encode("ascii")
    body = b"%d %s\n" % (status, phrase)
    head = (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Cache-Control: no-store\r\n"
        b"Connection: close\r\n"
        b"\r\n" % (status, phrase, len(body))
    )
    return head + body if includeBody else head
