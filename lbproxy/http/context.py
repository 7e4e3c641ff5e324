"""
What an HTTP request offers to routing rules and hashing selectors.

L{HTTPFlowContext} is the selection context of one request: the TCP keys of
L{lbproxy.core.context.FlowContext} plus the request's own (listed in
L{lbproxy.http.mode.HTTPMode.selectionKeys}):

  - C{"uri"}: the target's path and query as the backend sees them in
    origin form (for an absolute-form target, what follows the authority,
    C{"/"} when the path is empty);
  - C{"path"}: the same without the query (everything before C{"?"});
  - C{"host"}: the lower-case host of the request (the Host field, or the
    authority of an absolute-form target, which the parser has already
    checked to agree) without port and without a trailing dot; an IPv6
    literal keeps its brackets;
  - C{"header:NAME"}: the first value of field NAME (any case);
  - C{"cookie:NAME"}: the value of the first cookie called NAME in the
    Cookie fields (names are case-sensitive; a value in double quotes is
    returned without them);
  - C{"url_param:NAME"}: the value of the first query parameter NAME
    (C{b""} for a parameter without C{"="}).

Every value is bytes of the request as the backend receives it: the path
in its normal form when the listener normalises paths (see
L{lbproxy.http.paths}: unreserved characters decoded, dot segments and
repeated slashes removed; the query as received), else as received. The
same request always gives the same key, and spellings of one path give
one key. A key the request does not have is L{None};
asterisk-form (C{OPTIONS *}) has path and uri C{b"*"}, authority-form
(C{CONNECT}) has neither.

The helpers L{requestHost}, L{requestPath}, L{requestURI} and
L{parseCookies} are shared with L{lbproxy.http.routing} and
L{lbproxy.http.persistence} so that all three read a request the same way.
"""

from __future__ import annotations

import re

from twisted.internet.interfaces import IAddress

from lbproxy.core.context import FlowContext
from lbproxy.http.message import RequestHead
from lbproxy.http.syntax import parseHostPort

#: cookie-pair (RFC 6265 §4.1.1): a token, "=", and a cookie-value, either
#: bare cookie-octets or those in double quotes. Surrounding spaces and tabs
#: (around the pair and around "=") are tolerated, as user agents send them.
_COOKIE_PAIR = re.compile(
    rb"[\t ]*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[\t ]*=[\t ]*"
    rb'("[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"|[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*)'
    rb"[\t ]*"
)


def requestHost(head: RequestHead) -> bytes | None:
    """
    The lower-case host a request is for, without port or trailing dot; or
    L{None} when it names none (HTTP/1.0 without Host).
    """
    authority = head.authority
    if authority is None:
        return None
    parsed = parseHostPort(authority)
    if parsed is None or not parsed[0]:
        return None
    host = parsed[0].lower()
    if host.endswith(b".") and len(host) > 1:
        host = host[:-1]
    return host


def requestURI(head: RequestHead) -> bytes | None:
    """
    The path and query of the target in origin form (see the module
    docstring), or L{None} for an authority-form target.
    """
    form = head.targetForm
    target = head.target
    if form == "origin" or form == "asterisk":
        return target
    if form == "absolute":
        start = target.index(b"://") + 3
        for index in range(start, len(target)):
            if target[index] in b"/?":
                rest = target[index:]
                return rest if rest[:1] == b"/" else b"/" + rest
        return b"/"
    return None


def requestPath(head: RequestHead) -> bytes | None:
    """
    The path of the target (before any C{"?"}) in origin form, or L{None}
    for an authority-form target.
    """
    if head.targetForm == "origin":
        target = head.target
        end = target.find(b"?")
        return target if end < 0 else target[:end]
    uri = requestURI(head)
    if uri is None:
        return None
    return uri.partition(b"?")[0]


def parseCookies(value: bytes) -> list[tuple[bytes, bytes]]:
    """
    The C{(name, value)} pairs of one Cookie field value, in order.

    Pairs are separated by C{";"}; a piece that is not a well-formed
    cookie-pair (no C{"="}, a name that is not a token, forbidden bytes in
    the value) is skipped rather than guessed at. Quotes around a value are
    removed.
    """
    pairs = []
    for piece in value.split(b";"):
        match = _COOKIE_PAIR.fullmatch(piece)
        if match is None:
            continue
        cookie = match.group(2)
        if cookie[:1] == b'"':
            cookie = cookie[1:-1]
        pairs.append((match.group(1), cookie))
    return pairs


def parseQuery(query: bytes) -> dict[bytes, bytes]:
    """
    The first value of every parameter of a query string (C{&}-separated,
    raw bytes, C{b""} for a parameter without C{"="}).
    """
    params: dict[bytes, bytes] = {}
    for piece in query.split(b"&"):
        if not piece:
            continue
        name, _, value = piece.partition(b"=")
        params.setdefault(name, value)
    return params


class HTTPFlowContext(FlowContext):
    """
    Selection context of one HTTP request.

    Cookies and query parameters are parsed once, on the first key that
    needs them.

    @ivar head: the request being placed.
    """

    protocol = "tcp"

    def __init__(self, client: IAddress, local: IAddress, head: RequestHead) -> None:
        # FlowContext.__init__, written out: this runs per request.
        self.client = client
        self.local = local
        self.excluded = set()
        self.head = head
        self._cookies: dict[bytes, bytes] | None = None
        self._query: dict[bytes, bytes] | None = None

    def key(self, spec: str) -> bytes | None:
        kind, sep, argument = spec.partition(":")
        if sep:
            if not argument:
                return None
            if kind == "header":
                return self.head.headers.get(argument.encode("utf-8"))
            if kind == "cookie":
                return self.cookies().get(argument.encode("utf-8"))
            if kind == "url_param":
                return self.queryParameters().get(argument.encode("utf-8"))
            return None
        if spec == "uri":
            return requestURI(self.head)
        if spec == "path":
            return requestPath(self.head)
        if spec == "host":
            return requestHost(self.head)
        return super().key(spec)

    def cookies(self) -> dict[bytes, bytes]:
        """
        The first value of every cookie the request carries, by name.
        """
        if self._cookies is None:
            cookies: dict[bytes, bytes] = {}
            for value in self.head.headers.getAll(b"cookie"):
                for name, cookie in parseCookies(value):
                    cookies.setdefault(name, cookie)
            self._cookies = cookies
        return self._cookies

    def queryParameters(self) -> dict[bytes, bytes]:
        """
        The first value of every query parameter, by raw name.
        """
        if self._query is None:
            uri = requestURI(self.head)
            query = b""
            if uri is not None:
                query = uri.partition(b"?")[2]
            self._query = parseQuery(query)
        return self._query
