"""
What a header block means: the one place where the framing rules are
written.

The parser (L{lbproxy.http.parser}) frames a header block and has llhttp
check its syntax and split its field lines; what follows is decided here,
once for requests and once for responses:

  - the exact request or status line (single spaces, HTTP/1.0 or HTTP/1.1
    only, no fragment, the request target's form per method, a status
    from 100 to 599);
  - the framing fields: one valid Content-Length, Transfer-Encoding only
    as exactly one final "chunked" and never with Content-Length or on
    HTTP/1.0, one valid Host matching an absolute target, Upgrade syntax;
  - what the message's body is (none, a length, chunked, until close),
    whether the connection persists, and whether the head can be written
    back out from its values without checking them again.

The result is a record (L{RequestRecord}, L{ResponseRecord}) that depends
on the head's bytes only, so that a L{lbproxy.http.headcache.HeadCache}
can keep it by those bytes: a head seen again gives the same record
without being parsed again, and each message gets a fresh head built from
it (L{RequestRecord.head}, L{ResponseRecord.head}). What a response's
framing owes to its request (HEAD, CONNECT, an allowed upgrade) is applied
when its head is built, every time.

Status choices: every problem in a request is 400, except a well-formed
Transfer-Encoding that ends with a single "chunked" but applies other
codings first (e.g. "gzip, chunked"), 501 (RFC 9112 §6.1). Odd forms
(",chunked", "chunked, chunked", parameters on chunked, bytes like 0xA0
around the value) are 400, as is a final coding other than chunked (RFC
9112 §6.3). Every problem in a response is 502.
"""

from __future__ import annotations

from lbproxy.http.errors import HTTPParseError
from lbproxy.http.message import (
    HOP_BY_HOP,
    BodyKind,
    FieldEntry,
    Headers,
    RequestHead,
    ResponseHead,
    persistentConnection,
)
from lbproxy.http.serialize import FRAMING, receivedFieldLines
from lbproxy.http.syntax import (
    CONTENT_LENGTH,
    REQUEST_LINE,
    STATUS_LINE,
    classifyTarget,
    isToken,
    parseCoding,
    parseHostPort,
    splitList,
    splitStrictList,
)

#: Fields the framing and routing checks look at.
SPECIAL = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"connection", b"upgrade"}
)

_DEFAULT_PORTS = {b"http": 80, b"https": 443}
#: A new instance without its constructor's call (see RequestRecord.head).
_new = object.__new__
_VERSIONS = {b"0": (1, 0), b"1": (1, 1)}
_NO_OPTIONS: frozenset[bytes] = frozenset()
#: What Connection cannot make the proxy drop: an HTTP/1.1 request without
#: Host is invalid at the backend.
_PROTECTED = frozenset({b"host"})
#: Fields a response's checked field lines leave out: the hop-by-hop ones
#: and the framing, which the proxy writes itself.
_NOT_FORWARDED = HOP_BY_HOP | FRAMING


class FramingFields:
    """
    The fields of a header block, with the framing and routing ones picked
    out and duplicates refused.

    @ivar items: every field, in order.
    @ivar contentLength: the value of the one valid Content-Length, or
        L{None}.
    @ivar transferEncoding: the value of the one Transfer-Encoding, or
        L{None}.
    @ivar hosts: how many Host fields there were.
    @ivar host: the value of the last Host field, or L{None}.
    @ivar connection: the lowercased options of every Connection field.
    @ivar upgrade: the values of the Upgrade fields joined, or L{None}.
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

    def __init__(self, items: list[FieldEntry], special: list[FieldEntry], status: int) -> None:
        """
        @param items: every field, in order.
        @param special: those of C{items} whose name is in L{SPECIAL}, in
            order (the parser picks them out as they come).
        @param status: the status to refuse the block with.
        """
        contentLength = None
        transferEncoding = None
        hosts = 0
        host = None
        connection: set[bytes] = set()
        upgrade = None
        for lowered, _, value in special:
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
        self.items = items
        self.contentLength = contentLength
        self.transferEncoding = transferEncoding
        self.hosts = hosts
        self.host = host
        self.connection = frozenset(connection) if connection else _NO_OPTIONS
        self.upgrade = upgrade


class RequestRecord:
    """
    What a request head's bytes mean, as L{buildRequest} found: its parsed
    request line and the values of a L{RequestHead} (see there), and what
    each parser checks against its own limits before taking the record
    for a head seen again. A record is shared by every head made from it,
    and never changed: each head gets its own copy of C{items}, the
    fields.

    @ivar plain: HTTP goes on after the request by itself: it asks for no
        upgrade and is not CONNECT.
    @ivar lineBytes: the length of the request line, without CRLF.
    @ivar fieldCount: how many fields the head has.
    """

    __slots__ = (
        "method",
        "target",
        "version",
        "items",
        "bodyKind",
        "contentLength",
        "keepAlive",
        "upgrade",
        "targetForm",
        "authority",
        "connection",
        "checked",
        "plain",
        "lineBytes",
        "fieldCount",
    )

    def head(self) -> RequestHead:
        """
        A new head for one message with these values (its own field list,
        which the front may change).
        """
        # Every field set by name, without the constructor's call (this
        # runs once per request; the tests check that no field is left out).
        headers = _new(Headers)
        headers._items = list(self.items)
        head = _new(RequestHead)
        head.method = self.method
        head.target = self.target
        head.version = self.version
        head.headers = headers
        head.bodyKind = self.bodyKind
        head.contentLength = self.contentLength
        head.keepAlive = self.keepAlive
        head.upgrade = self.upgrade
        head.targetForm = self.targetForm
        head.authority = self.authority
        head.trailers = None
        head.connection = self.connection
        head.checked = self.checked
        head.rawTarget = None
        return head


def buildRequest(buf: bytes, start: int, lineEnd: int, fields: FramingFields) -> RequestRecord:
    """
    Decide what the request header block at C{buf[start:]}, whose syntax
    llhttp accepted and whose fields it split (C{fields}), means: request
    line (up to C{lineEnd}), Host, framing, upgrade.

    @raise HTTPParseError: 400, or 501 for a transfer coding other than
        chunked alone.
    """
    # The request line: single spaces, HTTP/1.0 or HTTP/1.1, a target of
    # the form its method takes (authority form for CONNECT only, asterisk
    # form for OPTIONS only, no fragment).
    match = REQUEST_LINE.fullmatch(buf, start, lineEnd)
    if match is None:
        raise HTTPParseError(400, "malformed request line")
    method, target, major, minor = match.groups()
    if major != b"1" or minor not in _VERSIONS:
        raise HTTPParseError(400, "unsupported HTTP version")
    version = _VERSIONS[minor]
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

    record = _new(RequestRecord)
    record.method = method
    record.target = target
    record.version = version
    record.items = items = fields.items
    record.bodyKind = bodyKind
    record.contentLength = contentLength
    record.keepAlive = persistentConnection(version, fields.connection)
    record.upgrade = upgrade
    record.targetForm = targetForm
    record.authority = authority
    record.connection = fields.connection
    # What llhttp accepted can be written as it is (see receivedFieldLines;
    # llhttp takes only visible ASCII in a target): an origin-form target
    # is written unchanged, any other rebuilt.
    record.checked = targetForm == "origin"
    record.plain = not upgrade and method != b"CONNECT"
    record.lineBytes = lineEnd - start
    record.fieldCount = len(items)
    return record


class ResponseRecord:
    """
    What a response head's bytes mean, as L{buildResponse} found: its
    parsed status line, fields and framing; what the request it answers
    changes is applied by L{head}. Shared and never changed, as a
    L{RequestRecord}.

    @ivar status: the status code, 100 to 599.
    @ivar reason: the reason phrase (may be empty).
    @ivar version: C{(1, 0)} or C{(1, 1)}.
    @ivar items: every field, in order (each head gets its own copy).
    @ivar contentLength: the value of Content-Length, or L{None}.
    @ivar chunked: the body is chunked (Transfer-Encoding checked to be
        exactly "chunked").
    @ivar persistent: the server lets the connection persist, as far as
        its version and Connection options say.
    @ivar connection: the lowercased Connection options.
    @ivar fields: the field lines the proxy writes for the response (see
        L{ResponseHead.fields}).
    @ivar lineBytes: the length of the status line, without CRLF.
    @ivar fieldCount: how many fields the head has.
    """

    __slots__ = (
        "status",
        "reason",
        "version",
        "items",
        "contentLength",
        "chunked",
        "persistent",
        "connection",
        "fields",
        "lineBytes",
        "fieldCount",
    )

    def head(self, method: bytes, upgradeAllowed: bool) -> ResponseHead:
        """
        A new head for one response with these values, answering a request
        with C{method}; C{upgradeAllowed} when that request asked for a
        protocol switch the front allows.

        No body for 1xx, 204, 304, a response to HEAD or a tunnel opening
        (101 to an allowed upgrade, 2xx to CONNECT); a response to HEAD and
        a 304 keep their Content-Length as the announced length. Without
        Content-Length or chunked framing, the body lasts until the server
        closes, and the connection ends with it.

        @raise HTTPParseError: 502 for a 101 no allowed upgrade asked for.
        """
        status = self.status
        contentLength = self.contentLength
        tunnel = False
        if status < 200:
            bodyKind = BodyKind.NONE
            contentLength = None
            if status == 101:
                if not upgradeAllowed:
                    raise HTTPParseError(502, "unexpected 101 Switching Protocols")
                tunnel = True
        elif method == b"CONNECT" and status < 300:
            tunnel = True
            bodyKind = BodyKind.NONE
            contentLength = None
        elif method == b"HEAD" or status == 304:
            bodyKind = BodyKind.NONE
        elif status == 204:
            bodyKind = BodyKind.NONE
            contentLength = None
        elif self.chunked:
            bodyKind = BodyKind.CHUNKED
        elif contentLength is not None:
            bodyKind = BodyKind.LENGTH
        else:
            bodyKind = BodyKind.UNTIL_CLOSE
        # Every field set by name (see RequestRecord.head).
        headers = _new(Headers)
        headers._items = list(self.items)
        head = _new(ResponseHead)
        head.status = status
        head.reason = self.reason
        head.version = self.version
        head.headers = headers
        head.bodyKind = bodyKind
        head.contentLength = contentLength
        head.keepAlive = self.persistent and bodyKind is not BodyKind.UNTIL_CLOSE
        head.tunnel = tunnel
        head.trailers = None
        head.connection = self.connection
        head.fields = self.fields
        return head


def buildResponse(buf: bytes, start: int, lineEnd: int, fields: FramingFields) -> ResponseRecord:
    """
    Decide what the response header block at C{buf[start:]}, whose syntax
    llhttp accepted and whose fields it split (C{fields}), means, as far
    as its bytes say (see L{ResponseRecord.head} for the rest): status
    line (up to C{lineEnd}), framing, the field lines written back.

    @raise HTTPParseError: 502.
    """
    # The status line: HTTP/1.0 or HTTP/1.1, a status from 100 to 599, a
    # reason phrase without CTLs other than HTAB (or none, with or without
    # its SP).
    match = STATUS_LINE.fullmatch(buf, start, lineEnd)
    if match is None:
        raise HTTPParseError(502, "malformed status line")
    major, minor, code, reason = match.groups()
    if major != b"1" or minor not in _VERSIONS:
        raise HTTPParseError(502, "unsupported HTTP version")
    status = int(code)
    if status < 100 or status > 599:
        raise HTTPParseError(502, "invalid status code")
    version = _VERSIONS[minor]
    contentLength = fields.contentLength
    chunked = fields.transferEncoding is not None
    if chunked:
        if version == (1, 0):
            raise HTTPParseError(502, "Transfer-Encoding in an HTTP/1.0 response")
        if contentLength is not None:
            raise HTTPParseError(502, "both Content-Length and Transfer-Encoding")
        _checkChunkedOnly(fields.transferEncoding, 502, 502)
    connection = fields.connection
    dropped = _NOT_FORWARDED
    if not connection <= dropped:
        dropped = dropped | (connection - _PROTECTED)
    record = _new(ResponseRecord)
    record.status = status
    record.reason = reason or b""
    record.version = version
    record.items = items = fields.items
    record.contentLength = contentLength
    record.chunked = chunked
    record.persistent = persistentConnection(version, connection)
    record.connection = connection
    record.fields = receivedFieldLines(items, dropped)
    record.lineBytes = lineEnd - start
    record.fieldCount = len(items)
    return record


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
