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

#: The framing fields, which the proxy writes itself from the body it sends.
FRAMING = frozenset({b"content-length", b"transfer-encoding"})

_fieldBlock = re.compile(rb"(?:" + TOKEN + rb": " + FIELD_VALUE + rb"\r\n)*")
#: A request target that can be written as it is.
WRITABLE_TARGET = re.compile(rb"[\x21-\x7e]+")
_reasonPhrase = re.compile(rb"[\t \x21-\x7e\x80-\xff]*")
_token = re.compile(TOKEN)
_nameList = re.compile(rb"(?:" + TOKEN + rb"(?::" + TOKEN + rb")*)?")

LAST_CHUNK = b"0\r\n\r\n"


def _checkBlock(names: list[bytes], block: bytes, count: int) -> bool:
    """
    Whether C{block}, C{count} field lines C{name: value CRLF} joined,
    splits only one way: each name (C{names}) a token, each value without
    CR, LF or another CTL (which could end the line early and inject
    fields of its own).
    """
    return (
        _nameList.fullmatch(b":".join(names)) is not None
        and _fieldBlock.fullmatch(block) is not None
        and block.count(b"\n") == count
    )


def _joinChecked(names: list[bytes], lines: list[bytes]) -> bytes:
    block = b"".join(lines)
    if not _checkBlock(names, block, len(lines)):
        raise ValueError("a header field cannot be written as it is")
    return block


def receivedFieldLines(items, dropped: frozenset[bytes]) -> bytes:
    """
    The field lines C{name: value CRLF} of C{items}, the C{(lowercased
    name, name, value)} triples of a header block llhttp accepted in
    strict mode, except those whose lowercased name is in C{dropped}.

    They are written without a second check: llhttp refuses a name that
    is not a token and a value with CR, LF or another CTL (HTAB aside),
    and the parser trims the whitespace around values, so each line is
    what L{HeadWriter} would accept (the tests hold llhttp to this for
    every byte value).
    """
    return b"".join(
        [b"%s: %s\r\n" % (name, value) for lowered, name, value in items if lowered not in dropped]
    )


def checkedRequestHeadBytes(
    method: bytes,
    target: bytes,
    fields: bytes,
    bodyKind: BodyKind,
    contentLength: int | None,
) -> bytes:
    """
    An HTTP/1.1 request head from values the parser checked already (a
    head whose L{lbproxy.http.message.RequestHead.checked} is true: a
    method llhttp accepted, an origin-form target that can be written as
    it is) and field lines built from received fields (see
    L{receivedFieldLines}) or by L{HeadWriter.fieldBlock}; framing as for
    L{HeadWriter.requestHead}.
    """
    if bodyKind is BodyKind.CHUNKED:
        return b"%s %s HTTP/1.1\r\n%sTransfer-Encoding: chunked\r\n\r\n" % (
            method,
            target,
            fields,
        )
    if bodyKind is BodyKind.LENGTH:
        return b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (
            method,
            target,
            fields,
            contentLength,
        )
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, fields)


def _responseHead(
    status: int, reason: bytes, fields: bytes, bodyKind: BodyKind, contentLength: int | None
) -> bytes:
    if bodyKind is BodyKind.CHUNKED:
        return b"HTTP/1.1 %d %s\r\n%sTransfer-Encoding: chunked\r\n\r\n" % (
            status,
            reason,
            fields,
        )
    if contentLength is None or bodyKind is BodyKind.UNTIL_CLOSE:
        return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, fields)
    return b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\n\r\n" % (
        status,
        reason,
        fields,
        contentLength,
    )


class HeadWriter:
    """
    Writes the heads of one listener's messages, remembering what comes
    back message after message.

    Names (of fields, and methods: tokens too) and whole field lines that
    passed the check once are kept: the same ones come back (Server,
    Content-Type, the forwarding fields of a client...), and a set lookup
    costs less than checking them byte by byte again. A line C{name: value
    CRLF} whose name is a token splits only one way, so a known line with
    a known name is the same field that passed before. Only what is at
    most C{maxSize} bytes long is kept, and each set is emptied when it
    holds C{maxEntries}: values (dates, addresses) keep changing, and a
    peer sending new ones only costs the check again.

    Response heads with a length written from checked field lines are kept
    too, by status, reason, fields and length (a backend's fields change
    with its Date, once a second): at most C{maxHeads}, each from at most
    C{maxHeadFields} bytes of field lines, emptied when full.
    """

    __slots__ = ("maxEntries", "maxSize", "maxHeads", "maxHeadFields", "_names", "_lines", "_lengthHeads")

    def __init__(
        self,
        maxEntries: int = 4096,
        maxSize: int = 256,
        maxHeads: int = 256,
        maxHeadFields: int = 1024,
    ) -> None:
        self.maxEntries = maxEntries
        self.maxSize = maxSize
        self.maxHeads = maxHeads
        self.maxHeadFields = maxHeadFields
        self._names: set[bytes] = set()
        self._lines: set[bytes] = set()
        self._lengthHeads: dict[tuple, bytes] = {}

    def _checked(self, names: list[bytes], lines: list[bytes]) -> bytes:
        """
        Join field lines, refusing any that cannot be written as it is.
        """
        knownNames = self._names
        knownLines = self._lines
        if knownNames.issuperset(names) and knownLines.issuperset(lines):
            return b"".join(lines)
        block = _joinChecked(names, lines)
        if len(knownLines) > self.maxEntries or len(knownNames) > self.maxEntries:
            knownLines.clear()
            knownNames.clear()
        maxSize = self.maxSize
        knownNames.update(name for name in names if len(name) <= maxSize)
        knownLines.update(line for line in lines if len(line) <= maxSize)
        return block

    def fieldBlock(self, fields) -> bytes:
        """
        The field lines C{name: value CRLF} of C{fields}, C{(lowercased
        name, name, value)} triples, checked as L{requestHead} checks
        fields: for blocks the caller writes many times as they are.

        @raise ValueError: a field cannot be written safely.
        """
        return self._checked(
            [name for _, name, _ in fields],
            [b"%s: %s\r\n" % (name, value) for _, name, value in fields],
        )

    def _fieldLines(
        self, headers: Headers, bodyKind: BodyKind, contentLength: int | None
    ) -> bytes:
        names = []
        lines = []
        for lowered, name, value in headers._items:
            if lowered not in FRAMING:
                names.append(name)
                lines.append(b"%s: %s\r\n" % (name, value))
        if bodyKind is BodyKind.CHUNKED:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif contentLength is not None and bodyKind is not BodyKind.UNTIL_CLOSE:
            lines.append(b"Content-Length: %d\r\n" % (contentLength,))
        return self._checked(names, lines)

    def requestHead(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        bodyKind: BodyKind = BodyKind.NONE,
        contentLength: int | None = None,
    ) -> bytes:
        """
        An HTTP/1.1 request line and header block.

        @param bodyKind: the framing of the body that follows: C{LENGTH}
            writes C{Content-Length: contentLength}, C{CHUNKED} writes
            C{Transfer-Encoding: chunked} (the body must then be framed
            with L{encodeChunk} and L{lastChunk}), C{NONE} writes neither.
        @raise ValueError: the method, target or a field cannot be written
            safely.
        """
        if method not in self._names:
            if _token.fullmatch(method) is None:
                raise ValueError("the request line cannot be written as it is")
            if len(method) <= self.maxSize:
                self._names.add(method)
        if WRITABLE_TARGET.fullmatch(target) is None:
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
            self._fieldLines(headers, bodyKind, contentLength),
        )

    def responseHead(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        bodyKind: BodyKind = BodyKind.NONE,
        contentLength: int | None = None,
    ) -> bytes:
        """
        An HTTP/1.1 status line and header block.

        Framing as for L{requestHead}; in addition, with C{NONE} a given
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
            self._fieldLines(headers, bodyKind, contentLength),
        )

    def checkedResponseHead(
        self,
        status: int,
        reason: bytes,
        fields: bytes,
        bodyKind: BodyKind,
        contentLength: int | None,
    ) -> bytes:
        """
        An HTTP/1.1 status line and header block from a status and reason
        the parser checked and field lines built from checked values
        (L{lbproxy.http.message.ResponseHead.fields}); framing as for
        L{responseHead}.
        """
        if bodyKind is BodyKind.CHUNKED or contentLength is None or bodyKind is BodyKind.UNTIL_CLOSE:
            return _responseHead(status, reason, fields, bodyKind, contentLength)
        key = (status, reason, fields, contentLength)
        heads = self._lengthHeads
        head = heads.get(key)
        if head is None:
            head = _responseHead(status, reason, fields, bodyKind, contentLength)
            if len(fields) <= self.maxHeadFields:
                if len(heads) >= self.maxHeads:
                    heads.clear()
                heads[key] = head
        return head


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
    block = _joinChecked(names, [b"%s: %s\r\n" % (name, value) for name, value in trailers])
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
