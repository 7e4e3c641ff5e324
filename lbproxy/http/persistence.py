"""
Cookie persistence: pinning a client to a server with an inserted cookie.

The semantics are HAProxy's C{cookie NAME insert [indirect] [nocache]
[httponly] [secure] [maxidle] [maxlife]}, configured per pool by
L{lbproxy.config.CookieConfig}:

  - insert: when a client has no valid cookie for the server that served
    it, the response gets C{Set-Cookie: NAME=VALUE} naming that server. The
    value is the server's cookie token (L{lbproxy.core.pool.Server.cookie}, the
    server's name unless configured), never its address.
  - indirect: the proxy's cookie is removed from the request's Cookie
    fields before the request reaches the server (the other cookies stay as
    they were; a Cookie field left empty is dropped). Without indirect the
    cookie passes through to the server.
  - nocache: a response that sets the cookie must not be stored by shared
    caches: its Cache-Control gets C{private}, any C{public} or other
    C{private} directive is removed, every other directive (C{max-age},
    C{no-store}, ...) is kept, all merged into one Cache-Control field.
  - httponly, secure: attributes of the Set-Cookie; C{Secure} is also set
    when the caller says the client connection is TLS.
  - maxidle, maxlife: the cookie is ignored (and the client redispatched)
    when it was last seen more than maxidle seconds ago, or first issued
    more than maxlife seconds ago.

The cookie is a session cookie (no Expires or Max-Age, as HAProxy sets
none): expiry is enforced by the proxy from dates carried in the value.
Without maxidle and maxlife the value is the bare token (C{web1}); with
either, it is C{TOKEN|FIRST|LAST}, where FIRST (issued) and LAST (last
refreshed) are whole seconds since the epoch in decimal, read from
C{reactor.seconds()} (C{web1|1795835520|1795835580}); C{|} and digits are
cookie-octets, and tokens cannot contain C{|}. A date-less cookie is
accepted and refreshed with dates when maxidle or maxlife is set, and a
cookie dated more than a day in the future is ignored (HAProxy does both).
The last-seen date is refreshed once it is older than half of maxidle,
not on every response. The dates are not signed: like the token, they only
steer persistence, they are not a security boundary.

When the server's response sets a cookie of the same name itself, the
proxy leaves it alone and inserts nothing.

Outcome codes, two characters as in HAProxy's termination state (the
access log's cookie field). The first, from L{CookiePersistence.inspect}:

  - C{N}: the request had no persistence cookie;
  - C{V}: valid: the request goes to the server it names;
  - C{D}: it names a server that cannot take the flow now (down,
    maintenance or at its maxconn): redispatched. A draining server still
    takes the clients pinned to it (L{lbproxy.core.pool.Server.pinnable});
    the selector sends it no others;
  - C{I}: invalid: unknown token, malformed value or date in the future:
    redispatched;
  - C{O}: old: issued more than maxlife ago: redispatched;
  - C{E}: expired: idle for more than maxidle: redispatched.

The second, from L{CookiePersistence.responseHeaders}:

  - C{N}: no cookie set (the client's cookie is valid for this server);
  - C{I}: a cookie was inserted (none, or one for another server, before);
  - C{U}: the client's valid cookie was updated (dates refreshed);
  - C{P}: the server provided a cookie of that name itself;
  - C{-}: no server served the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from lbproxy.config import CookieConfig
from lbproxy.core.pool import Pool, Server
from lbproxy.http.context import parseCookies
from lbproxy.http.message import Headers, RequestHead

#: How far in the future a cookie's dates may be before it is ignored.
_FUTURE_SLACK = 86400
_MAX_DATE_DIGITS = 12


@dataclass(frozen=True, slots=True)
class Stickiness:
    """
    What the request's persistence cookie says.

    @ivar server: the server to send the request to, or L{None} to let the
        pool's selector choose (no usable cookie).
    @ivar outcome: the request-side outcome code (see the module).
    @ivar firstSeen: when a valid cookie was first issued (epoch seconds),
        if it carried dates.
    @ivar lastSeen: when a valid cookie was last refreshed, likewise.
    @ivar refresh: a valid cookie must be rewritten on the response even if
        its dates are recent (it had none).
    """

    server: Server | None
    outcome: str
    firstSeen: int | None = None
    lastSeen: int | None = None
    refresh: bool = False


class CookiePersistence:
    """
    Cookie insertion and checking for one pool (C{pool.options.cookie}).
    """

    def __init__(self, config: CookieConfig, reactor) -> None:
        self.config = config
        self._reactor = reactor
        self._name = config.name.encode("ascii")
        self._dated = config.maxidle is not None or config.maxlife is not None
        self._tokens: dict[Pool, tuple[int, dict[bytes, Server]]] = {}
        attributes = [b"Path=" + config.path.encode("ascii")]
        if config.domain is not None:
            attributes.append(b"Domain=" + config.domain.encode("ascii"))
        if config.httponly:
            attributes.append(b"HttpOnly")
        self._attributes = b"; " + b"; ".join(attributes)

    def _serversByToken(self, pool: Pool) -> dict[bytes, Server]:
        cached = self._tokens.get(pool)
        if cached is None or cached[0] != pool.generation:
            # The pool's servers changed (added, removed, a cookie value).
            cached = self._tokens[pool] = (
                pool.generation,
                {server.cookie.encode("ascii"): server for server in pool.servers},
            )
        return cached[1]

    def inspect(self, head: RequestHead, pool: Pool) -> Stickiness:
        """
        Read the persistence cookie of C{head} (the first one, if several)
        and decide where it pins the request; with indirect, remove it from
        C{head.headers}.
        """
        headers = head.headers
        values = headers.getAll(b"cookie")
        if not values:
            return Stickiness(None, "N")
        found: bytes | None = None
        for value in values:
            for name, cookie in parseCookies(value):
                if name == self._name:
                    found = cookie
                    break
            if found is not None:
                break
        if found is None:
            return Stickiness(None, "N")
        if self.config.indirect:
            _removeCookie(headers, values, self._name)
        return self._check(found, pool)

    def _check(self, value: bytes, pool: Pool) -> Stickiness:
        parts = value.split(b"|")
        first = last = None
        if len(parts) == 3:
            dates = parts[1:]
            if not all(d.isdigit() and len(d) <= _MAX_DATE_DIGITS for d in dates):
                return Stickiness(None, "I")
            first, last = int(dates[0]), int(dates[1])
        elif len(parts) != 1:
            return Stickiness(None, "I")
        server = self._serversByToken(pool).get(parts[0])
        if server is None:
            return Stickiness(None, "I")
        refresh = False
        if self._dated:
            now = self._reactor.seconds()
            if first is None:
                refresh = True
            else:
                if first > last or last > now + _FUTURE_SLACK:
                    return Stickiness(None, "I")
                maxlife, maxidle = self.config.maxlife, self.config.maxidle
                if maxlife is not None and now - first > maxlife:
                    return Stickiness(None, "O")
                if maxidle is not None and now - last > maxidle:
                    return Stickiness(None, "E")
        if not server.pinnable:
            return Stickiness(None, "D")
        return Stickiness(server, "V", first, last, refresh)

    def responseHeaders(
        self,
        headers: Headers,
        server: Server | None,
        stickiness: Stickiness,
        secure: bool = False,
    ) -> str:
        """
        Add the persistence cookie to the headers of a final response when
        the client needs it, and return the two-character outcome.

        @param headers: the response headers going to the client.
        @param server: the server that served the request (L{None} when
            none did: nothing is set).
        @param stickiness: what L{inspect} said about the request.
        @param secure: the client connection is TLS (adds C{Secure}).
        """
        outcome = stickiness.outcome
        if server is None:
            return outcome + "-"
        for value in headers.getAll(b"set-cookie"):
            if value.partition(b"=")[0].strip(b" \t") == self._name:
                return outcome + "P"
        token = server.cookie.encode("ascii")
        if stickiness.outcome == "V" and stickiness.server is server:
            if not self._dated:
                return outcome + "N"
            now = int(self._reactor.seconds())
            if not stickiness.refresh and not self._idleRefreshDue(stickiness, now):
                return outcome + "N"
            first = stickiness.firstSeen if stickiness.firstSeen is not None else now
            code = "U"
        else:
            now = int(self._reactor.seconds()) if self._dated else 0
            first = now
            code = "I"
        if self._dated:
            token = b"%s|%d|%d" % (token, first, now)
        cookie = self._name + b"=" + token + self._attributes
        if self.config.secure or secure:
            cookie += b"; Secure"
        headers.add(b"Set-Cookie", cookie)
        if self.config.nocache:
            _makePrivate(headers)
        return outcome + code

    def _idleRefreshDue(self, stickiness: Stickiness, now: int) -> bool:
        maxidle = self.config.maxidle
        if maxidle is None or stickiness.lastSeen is None:
            return False
        return now - stickiness.lastSeen >= maxidle / 2


def _removeCookie(headers: Headers, values: list[bytes], name: bytes) -> None:
    """
    Remove every cookie called C{name} from the Cookie fields C{values} of
    C{headers}, keeping the other pieces as they were and dropping fields
    left empty.
    """
    kept = []
    for value in values:
        pieces = []
        for piece in value.split(b";"):
            pair = parseCookies(piece)
            if pair and pair[0][0] == name:
                continue
            piece = piece.strip(b" \t")
            if piece:
                pieces.append(piece)
        if pieces:
            kept.append(b"; ".join(pieces))
    headers.remove(b"cookie")
    for value in kept:
        headers.add(b"Cookie", value)


def splitDirectives(value: bytes) -> list[bytes]:
    """
    The comma-separated directives of a Cache-Control value, whitespace
    stripped, empty ones skipped, commas inside quoted strings kept.
    """
    directives = []
    start = 0
    quoted = escaped = False
    for index, byte in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and byte == 0x5C:
            escaped = True
        elif byte == 0x22:
            quoted = not quoted
        elif byte == 0x2C and not quoted:
            directives.append(value[start:index])
            start = index + 1
    directives.append(value[start:])
    return [d for d in (d.strip(b" \t") for d in directives) if d]


def _makePrivate(headers: Headers) -> None:
    """
    Merge the Cache-Control fields into one that says C{private}: C{public}
    and any other C{private} form (with field names, which would let a
    shared cache keep the rest) are removed, the other directives kept.
    """
    directives = [
        directive
        for value in headers.getAll(b"cache-control")
        for directive in splitDirectives(value)
        if directive.partition(b"=")[0].strip(b" \t").lower() not in (b"public", b"private")
    ]
    directives.append(b"private")
    headers.set(b"Cache-Control", b", ".join(directives))
