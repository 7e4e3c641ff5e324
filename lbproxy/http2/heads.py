"""
HTTP/2 field blocks to and from the heads the HTTP front works with.

A request's header list (checked already by the h2 library: lowercase
names, no connection-specific fields, C{te} only C{trailers}, pseudo-fields
first and once, C{:authority} matching C{host}) becomes the
L{RequestHead} an HTTP/1.1 request would have been, so routing,
persistence, rewriting and the access log take it as they are: C{Host}
from C{:authority} (RFC 9113 §8.3.1), the cookie crumbs joined with
C{"; "} (§8.2.3), version C{(2, 0)} (the access log says C{HTTP/2.0}).

A server's L{ResponseHead} becomes a response header list: its
hop-by-hop fields removed (§8.2.2), names lowercased, C{:status} first.
"""

from __future__ import annotations

from http import HTTPStatus

from lbproxy.http.errors import HTTPParseError
from lbproxy.http.message import BodyKind, Headers, RequestHead, ResponseHead
from lbproxy.http.rewrite import stripHopByHop

_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})


def requestHead(fields, endStream: bool, maxHeaders: int) -> RequestHead:
    """
    The L{RequestHead} of an HTTP/2 request.

    @param fields: the header list, C{(name, value)} bytes pairs.
    @param endStream: the HEADERS frame ended the stream (no body).
    @param maxHeaders: most fields a request may have (431 beyond).
    @raise HTTPParseError: the request cannot be served: 431 with too many
        fields, 501 for CONNECT, 400 for a target or authority the proxy
        cannot forward.
    """
    method = path = authority = host = None
    cookies = []
    items = []
    contentLength = None
    for name, value in fields:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name not in _PSEUDO:
                raise HTTPParseError(400, f"unknown pseudo-header {name!r}")
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            host = value
            continue
        if name == b"content-length":
            if not value.isdigit() or contentLength is not None:
                raise HTTPParseError(400, "invalid content-length")
            contentLength = int(value)
        items.append((name, name, value))
    if len(items) + len(cookies) + 1 > maxHeaders:
        raise HTTPParseError(431, "too many header fields")
    if method == b"CONNECT":
        raise HTTPParseError(501, "CONNECT is not supported")
    if authority is None:
        authority = host
    if not authority:
        raise HTTPParseError(400, "no :authority and no host")
    if path == b"*":
        if method != b"OPTIONS":
            raise HTTPParseError(400, "asterisk target on a method other than OPTIONS")
        form = "asterisk"
    elif path is None or path[:1] != b"/":
        raise HTTPParseError(400, "request target not in origin form")
    else:
        form = "origin"
    items.insert(0, (b"host", b"Host", authority))
    if cookies:
        items.append((b"cookie", b"cookie", b"; ".join(cookies)))
    if endStream:
        kind = BodyKind.NONE
        contentLength = None
    elif contentLength is not None:
        kind = BodyKind.LENGTH
    else:
        kind = BodyKind.CHUNKED
    return RequestHead(
        method=method,
        target=path,
        version=(2, 0),
        headers=Headers._fromLowered(items),
        bodyKind=kind,
        contentLength=contentLength,
        keepAlive=True,
        targetForm=form,
        authority=authority,
    )


def refusedHead(fields) -> RequestHead:
    """
    What the access log shows of a request L{requestHead} refused: its
    method and target (or authority, for CONNECT), as HTTP/2.0.
    """
    pseudo = {name: value for name, value in fields if name[:1] == b":"}
    method = pseudo.get(b":method", b"")
    target = pseudo.get(b":path") or pseudo.get(b":authority") or b""
    return RequestHead(method=method, target=target, version=(2, 0), headers=Headers())


def responseFields(head: ResponseHead) -> list[tuple[bytes, bytes]]:
    """
    The HTTP/2 header list of a server's response head (whose hop-by-hop
    fields the caller may already have removed).
    """
    headers = head.headers
    stripHopByHop(headers, head.connection)
    fields = [(b":status", b"%d" % (head.status,))]
    for lowered, _, value in headers._items:
        if lowered == b"content-length":
            continue
        fields.append((lowered, value))
    if head.contentLength is not None and head.status >= 200 and head.status != 204:
        # The body's length, or for HEAD and 304 the representation's.
        fields.append((b"content-length", b"%d" % (head.contentLength,)))
    return fields


def serverResponseHead(fields, bodyKind: BodyKind, version: tuple[int, int] = (2, 0)) -> ResponseHead:
    """
    The L{ResponseHead} of an HTTP/2 server's response header list
    (checked by the h2 library), whose body is C{bodyKind}: pseudo-fields
    left out, C{Content-Length} read when it is one. For C{version}
    C{(1, 1)}, as an HTTP/1.1 client is answered, it carries the status's
    standard reason phrase.
    """
    status = 0
    items = []
    contentLength = None
    for name, value in fields:
        if name == b":status":
            status = int(value)
        elif name[:1] != b":":
            items.append((name, value))
            if name == b"content-length" and value.isdigit():
                contentLength = int(value)
    reason = b""
    if version < (2, 0):
        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            pass
    return ResponseHead(
        status=status,
        reason=reason,
        version=version,
        headers=Headers(items),
        bodyKind=bodyKind,
        contentLength=contentLength,
    )


def trailerFields(trailers: Headers | None) -> list[tuple[bytes, bytes]]:
    """
    The trailer fields of a chunked response body, for a HEADERS frame
    ending the stream (pseudo-fields and hop-by-hop fields left out).
    """
    if not trailers:
        return []
    stripHopByHop(trailers)
    return [(lowered, value) for lowered, _, value in trailers._items if lowered[:1] != b":"]


#: Fields HTTP/2 does not carry (RFC 9113 §8.2.2); C{host} becomes
#: C{:authority}, C{te} is kept only as C{trailers}.
_NOT_FORWARDED = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host", b"te"}
)


def upstreamRequestFields(headBytes: bytes, scheme: bytes, te: bytes | None) -> list[tuple[bytes, bytes]]:
    """
    The HTTP/2 header list for a server of a request whose head the
    rewriter wrote (C{headBytes}: its forwarding fields and header rules
    applied, as HTTP/1.1 would have sent it): C{:method}, C{:scheme},
    C{:authority} (from C{Host}) and C{:path} first, names lowercased,
    connection-specific fields (and those C{Connection} names) left out.

    @param scheme: C{b"http"} or C{b"https"}, as the server is reached.
    @param te: the client's C{te} field: kept when it is C{trailers}
        (gRPC servers require it).
    """
    lines = headBytes.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    authority = b""
    named: set[bytes] = set()
    items = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        if name == b"host":
            authority = value
        elif name == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
        elif name not in _NOT_FORWARDED:
            items.append((name, value))
    fields = [(b":method", method), (b":scheme", scheme), (b":authority", authority), (b":path", target)]
    fields += [(name, value) for name, value in items if name not in named]
    if te is not None and te.strip().lower() == b"trailers":
        fields.append((b"te", b"trailers"))
    return fields
