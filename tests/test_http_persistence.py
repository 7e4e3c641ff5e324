"""
Tests for L{lbproxy.http.persistence}: HAProxy's cookie insert semantics,
driven by a L{task.Clock}.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from lbproxy.config import CookieConfig, ServerConfig
from lbproxy.http.context import parseCookies
from lbproxy.http.message import Headers, RequestHead
from lbproxy.http.persistence import CookiePersistence, Stickiness, splitDirectives
from lbproxy.core.pool import Pool, Server, ServerState

NOW = 1_795_835_520


def makePool() -> Pool:
    return Pool(
        "web",
        [
            Server("web1", "tcp:127.0.0.1:1"),
            Server("web2", "tcp:127.0.0.1:2", cookie="b7"),
            Server("spare", "tcp:127.0.0.1:3", backup=True),
        ],
        None,
    )


def persistence(**options) -> tuple[CookiePersistence, Clock]:
    clock = Clock()
    clock.advance(NOW)
    return CookiePersistence(CookieConfig(name="SRV", **options), clock), clock


def head(*cookies: bytes) -> RequestHead:
    fields = [(b"Host", b"a")] + [(b"Cookie", value) for value in cookies]
    return RequestHead(b"GET", b"/", (1, 1), Headers(fields), authority=b"a")


def setCookies(headers: Headers) -> list[bytes]:
    return headers.getAll(b"set-cookie")


def cookieValue(setCookie: bytes) -> bytes:
    """
    The value of the first pair of a Set-Cookie field.
    """
    return setCookie.split(b";")[0].partition(b"=")[2]


# inspect


def test_noCookieHeader():
    p, _ = persistence()
    request = head()
    assert p.inspect(request, makePool()) == Stickiness(None, "N")
    assert request.headers.items() == [(b"Host", b"a")]


def test_otherCookiesOnly():
    p, _ = persistence()
    request = head(b"sid=1; theme=dark")
    assert p.inspect(request, makePool()) == Stickiness(None, "N")
    assert request.headers.getAll(b"cookie") == [b"sid=1; theme=dark"]


def test_cookieNameIsCaseSensitive():
    p, _ = persistence()
    assert p.inspect(head(b"srv=web1"), makePool()).outcome == "N"


def test_valid():
    p, _ = persistence()
    pool = makePool()
    stickiness = p.inspect(head(b"SRV=web1"), pool)
    assert stickiness.server is pool.server("web1")
    assert stickiness.outcome == "V"


def test_tokenIsTheServerCookieNotItsName():
    p, _ = persistence()
    pool = makePool()
    assert p.inspect(head(b"SRV=b7"), pool).server is pool.server("web2")
    assert p.inspect(head(b"SRV=web2"), pool) == Stickiness(None, "I")
    assert p.inspect(head(b"SRV=tcp:127.0.0.1:2"), pool) == Stickiness(None, "I")


def test_quotedValue():
    p, _ = persistence()
    pool = makePool()
    assert p.inspect(head(b'SRV="web1"'), pool).server is pool.server("web1")


def test_firstCookieWins():
    p, _ = persistence()
    pool = makePool()
    request = head(b"a=1; SRV=web1; SRV=b7", b"SRV=spare")
    assert p.inspect(request, pool).server is pool.server("web1")


@pytest.mark.parametrize(
    "cookies, remaining",
    [
        ((b"SRV=web1",), []),
        ((b"a=1; SRV=web1; b=2",), [b"a=1; b=2"]),
        ((b"SRV=web1; a=1",), [b"a=1"]),
        ((b"a=1;SRV=web1",), [b"a=1"]),
        ((b"a=1", b"SRV=web1"), [b"a=1"]),
        ((b"SRV=web1", b"b=2; SRV=b7"), [b"b=2"]),
        ((b"a=1;  SRV = web1 ;b=x",), [b"a=1; b=x"]),
        ((b"x; SRV=web1",), [b"x"]),
    ],
)
def test_indirectRemovesTheCookie(cookies, remaining):
    p, _ = persistence()
    request = head(*cookies)
    assert p.inspect(request, makePool()).outcome == "V"
    assert request.headers.getAll(b"cookie") == remaining
    assert request.headers.get(b"host") == b"a"


def test_indirectRemovesInvalidCookiesToo():
    p, _ = persistence()
    request = head(b"SRV=nobody; a=1")
    assert p.inspect(request, makePool()).outcome == "I"
    assert request.headers.getAll(b"cookie") == [b"a=1"]


def test_withoutIndirectTheCookiePasses():
    p, _ = persistence(indirect=False)
    request = head(b"a=1; SRV=web1")
    assert p.inspect(request, makePool()).outcome == "V"
    assert request.headers.getAll(b"cookie") == [b"a=1; SRV=web1"]


@pytest.mark.parametrize(
    "value",
    [b"nobody", b"", b"web1|", b"web1|1", b"web1|1|2|3", b"web1|x|1", b"web1|-1|2", b"|1|2"],
)
def test_invalid(value):
    p, _ = persistence()
    assert p.inspect(head(b"SRV=" + value), makePool()) == Stickiness(None, "I")


@pytest.mark.parametrize("state", [ServerState.DOWN, ServerState.MAINT])
def test_serverDownOrInMaintenanceIsRedispatched(state):
    p, _ = persistence()
    pool = makePool()
    pool.server("web1").setState(state)
    assert p.inspect(head(b"SRV=web1"), pool) == Stickiness(None, "D")


def test_drainingServerKeepsItsPinnedClients():
    """
    A draining server gets no new client from the selector, but a client
    pinned to it by its cookie still reaches it (HAProxy's drain); a full
    one does not.
    """
    p, _ = persistence()
    pool = makePool()
    server = pool.server("web1")
    server.setState(ServerState.DRAIN)
    assert server not in pool.eligible()
    assert p.inspect(head(b"SRV=web1"), pool).server is server
    server.maxconn = 1
    server.acquire()
    assert p.inspect(head(b"SRV=web1"), pool) == Stickiness(None, "D")


def test_removedAndAddedServers():
    """
    A cookie naming a server taken out of the pool is invalid (its client
    is redispatched); one naming a server added while running is valid.
    """
    p, _ = persistence()
    pool = makePool()
    assert p.inspect(head(b"SRV=web1"), pool).outcome == "V"
    pool.removeServer("web1")
    assert p.inspect(head(b"SRV=web1"), pool) == Stickiness(None, "I")
    added = pool.addServer(ServerConfig("web9", "tcp:127.0.0.1:9", cookie="w9"))
    assert p.inspect(head(b"SRV=w9"), pool).server is added


def test_fullServerIsRedispatched():
    p, _ = persistence()
    pool = makePool()
    server = pool.server("web1")
    server.maxconn = 1
    server.acquire()
    assert p.inspect(head(b"SRV=web1"), pool) == Stickiness(None, "D")
    server.release()
    assert p.inspect(head(b"SRV=web1"), pool).server is server


def test_weightZeroAndBackupKeepTheirClients():
    """
    As in HAProxy, persistence outlives a weight of 0 (soft stop) and
    applies to backup servers while they are up.
    """
    p, _ = persistence()
    pool = makePool()
    pool.server("web1").weight = 0
    assert p.inspect(head(b"SRV=web1"), pool).server is pool.server("web1")
    assert p.inspect(head(b"SRV=spare"), pool).server is pool.server("spare")


def test_tokensPerPool():
    p, _ = persistence()
    first = makePool()
    other = Pool("other", [Server("web1", "tcp:127.0.0.1:9")], None)
    assert p.inspect(head(b"SRV=web1"), first).server is first.server("web1")
    assert p.inspect(head(b"SRV=web1"), other).server is other.server("web1")
    assert p.inspect(head(b"SRV=b7"), other).outcome == "I"


# dates


def dated(token: bytes, first: int, last: int) -> bytes:
    return b"SRV=%s|%d|%d" % (token, first, last)


def test_datedValid():
    p, _ = persistence(maxidle=600.0, maxlife=3600.0)
    pool = makePool()
    stickiness = p.inspect(head(dated(b"web1", NOW - 1000, NOW - 10)), pool)
    assert stickiness == Stickiness(pool.server("web1"), "V", NOW - 1000, NOW - 10)


def test_maxidleExpired():
    p, _ = persistence(maxidle=600.0)
    pool = makePool()
    assert p.inspect(head(dated(b"web1", NOW - 700, NOW - 600)), pool).outcome == "V"
    assert p.inspect(head(dated(b"web1", NOW - 700, NOW - 601)), pool) == Stickiness(None, "E")


def test_maxlifeExpired():
    p, _ = persistence(maxlife=3600.0)
    pool = makePool()
    assert p.inspect(head(dated(b"web1", NOW - 3600, NOW)), pool).outcome == "V"
    assert p.inspect(head(dated(b"web1", NOW - 3601, NOW)), pool) == Stickiness(None, "O")


def test_maxlifeCheckedBeforeMaxidle():
    p, _ = persistence(maxidle=10.0, maxlife=100.0)
    assert p.inspect(head(dated(b"web1", NOW - 500, NOW - 500)), makePool()).outcome == "O"


def test_expiryFollowsTheClock():
    p, clock = persistence(maxidle=60.0)
    pool = makePool()
    request = dated(b"web1", NOW, NOW)
    assert p.inspect(head(request), pool).outcome == "V"
    clock.advance(60)
    assert p.inspect(head(request), pool).outcome == "V"
    clock.advance(1)
    assert p.inspect(head(request), pool).outcome == "E"


def test_datesInTheFarFutureAreInvalid():
    p, _ = persistence(maxidle=60.0)
    pool = makePool()
    assert p.inspect(head(dated(b"web1", NOW, NOW + 86400)), pool).outcome == "V"
    assert p.inspect(head(dated(b"web1", NOW, NOW + 86401)), pool) == Stickiness(None, "I")


def test_firstAfterLastIsInvalid():
    p, _ = persistence(maxlife=60.0)
    assert p.inspect(head(dated(b"web1", NOW, NOW - 1)), makePool()).outcome == "I"


def test_datelessCookieAcceptedAndRefreshed():
    p, _ = persistence(maxidle=60.0)
    pool = makePool()
    stickiness = p.inspect(head(b"SRV=web1"), pool)
    assert stickiness == Stickiness(pool.server("web1"), "V", None, None, refresh=True)
    headers = Headers()
    assert p.responseHeaders(headers, pool.server("web1"), stickiness) == "VU"
    assert cookieValue(setCookies(headers)[0]) == b"web1|%d|%d" % (NOW, NOW)


def test_datesIgnoredWithoutMaxidleOrMaxlife():
    p, _ = persistence()
    pool = makePool()
    stickiness = p.inspect(head(dated(b"web1", 1, 2)), pool)
    assert stickiness.server is pool.server("web1")
    headers = Headers()
    assert p.responseHeaders(headers, pool.server("web1"), stickiness) == "VN"
    assert setCookies(headers) == []


def test_expiredCookieIsReplaced():
    p, _ = persistence(maxidle=60.0)
    pool = makePool()
    stickiness = p.inspect(head(dated(b"web1", NOW - 1000, NOW - 100)), pool)
    headers = Headers()
    assert p.responseHeaders(headers, pool.server("web2"), stickiness) == "EI"
    assert cookieValue(setCookies(headers)[0]) == b"b7|%d|%d" % (NOW, NOW)


def test_maxidleRefreshAfterHalf():
    p, clock = persistence(maxidle=60.0)
    pool = makePool()
    server = pool.server("web1")
    first = NOW - 1000
    recent = p.inspect(head(dated(b"web1", first, NOW - 29)), pool)
    headers = Headers()
    assert p.responseHeaders(headers, server, recent) == "VN"
    assert setCookies(headers) == []
    due = p.inspect(head(dated(b"web1", first, NOW - 30)), pool)
    assert p.responseHeaders(headers, server, due) == "VU"
    # The first-issued date is kept, the last-seen date moves to now.
    assert cookieValue(setCookies(headers)[0]) == b"web1|%d|%d" % (first, NOW)


def test_maxlifeAloneNeverRefreshes():
    p, _ = persistence(maxlife=3600.0)
    pool = makePool()
    stickiness = p.inspect(head(dated(b"web1", NOW - 3000, NOW - 3000)), pool)
    headers = Headers()
    assert p.responseHeaders(headers, pool.server("web1"), stickiness) == "VN"


def test_issuedDatesRoundTrip():
    p, clock = persistence(maxidle=60.0, maxlife=3600.0)
    pool = makePool()
    headers = Headers()
    first = p.inspect(head(), pool)
    assert p.responseHeaders(headers, pool.server("web2"), first) == "NI"
    value = setCookies(headers)[0].split(b";")[0]
    clock.advance(50)
    again = p.inspect(head(value), pool)
    assert again == Stickiness(pool.server("web2"), "V", NOW, NOW)


# responseHeaders


def test_insertDefaults():
    p, _ = persistence()
    pool = makePool()
    headers = Headers([(b"Content-Type", b"text/plain")])
    assert p.responseHeaders(headers, pool.server("web2"), p.inspect(head(), pool)) == "NI"
    assert headers.items() == [
        (b"Content-Type", b"text/plain"),
        (b"Set-Cookie", b"SRV=b7; Path=/; HttpOnly"),
        (b"Cache-Control", b"private"),
    ]


def test_insertedCookieIsReadBack():
    p, _ = persistence()
    pool = makePool()
    headers = Headers()
    p.responseHeaders(headers, pool.server("web1"), p.inspect(head(), pool))
    [(name, value)] = parseCookies(setCookies(headers)[0].split(b";")[0])
    assert name == b"SRV"
    assert p.inspect(head(b"SRV=" + value), pool).server is pool.server("web1")


def test_attributes():
    p, _ = persistence(
        httponly=False, secure=True, path="/app", domain=".example.com", nocache=False
    )
    pool = makePool()
    headers = Headers()
    p.responseHeaders(headers, pool.server("web1"), Stickiness(None, "N"))
    assert headers.items() == [
        (b"Set-Cookie", b"SRV=web1; Path=/app; Domain=.example.com; Secure")
    ]


def test_secureForTLSClients():
    p, _ = persistence(nocache=False)
    pool = makePool()
    plain, tls = Headers(), Headers()
    p.responseHeaders(plain, pool.server("web1"), Stickiness(None, "N"))
    p.responseHeaders(tls, pool.server("web1"), Stickiness(None, "N"), secure=True)
    assert setCookies(plain) == [b"SRV=web1; Path=/; HttpOnly"]
    assert setCookies(tls) == [b"SRV=web1; Path=/; HttpOnly; Secure"]


def test_validCookieSetsNothing():
    p, _ = persistence()
    pool = makePool()
    headers = Headers([(b"Cache-Control", b"public, max-age=60")])
    stickiness = p.inspect(head(b"SRV=web1"), pool)
    assert p.responseHeaders(headers, pool.server("web1"), stickiness) == "VN"
    assert headers.items() == [(b"Cache-Control", b"public, max-age=60")]


def test_validCookieButAnotherServerServed():
    """
    The pinned server failed and the request was redispatched: the cookie
    is rewritten for the server that served.
    """
    p, _ = persistence()
    pool = makePool()
    headers = Headers()
    stickiness = p.inspect(head(b"SRV=web1"), pool)
    assert p.responseHeaders(headers, pool.server("web2"), stickiness) == "VI"
    assert cookieValue(setCookies(headers)[0]) == b"b7"


def test_downServerRedispatchedAndRewritten():
    p, _ = persistence()
    pool = makePool()
    pool.server("web1").setState(ServerState.DOWN)
    stickiness = p.inspect(head(b"SRV=web1"), pool)
    assert stickiness.server is None
    headers = Headers()
    assert p.responseHeaders(headers, pool.server("web2"), stickiness) == "DI"
    assert cookieValue(setCookies(headers)[0]) == b"b7"


def test_noServer():
    p, _ = persistence()
    headers = Headers()
    assert p.responseHeaders(headers, None, Stickiness(None, "N")) == "N-"
    assert headers.items() == []


@pytest.mark.parametrize(
    "existing",
    [b"SRV=mine; Path=/", b"SRV=", b" SRV =x"],
)
def test_serverSetsTheCookieItself(existing):
    p, _ = persistence()
    pool = makePool()
    headers = Headers([(b"Set-Cookie", existing)])
    assert p.responseHeaders(headers, pool.server("web1"), Stickiness(None, "N")) == "NP"
    assert headers.items() == [(b"Set-Cookie", existing)]


def test_serverSetsOtherCookies():
    p, _ = persistence(nocache=False)
    pool = makePool()
    headers = Headers([(b"Set-Cookie", b"SRVX=1"), (b"Set-Cookie", b"sid=2; SRV=3")])
    assert p.responseHeaders(headers, pool.server("web1"), Stickiness(None, "N")) == "NI"
    assert setCookies(headers)[-1] == b"SRV=web1; Path=/; HttpOnly"


@pytest.mark.parametrize(
    "fields, expected",
    [
        ([], b"private"),
        ([b"public"], b"private"),
        ([b"public, max-age=600"], b"max-age=600, private"),
        ([b"max-age=600", b"PUBLIC"], b"max-age=600, private"),
        ([b"no-store"], b"no-store, private"),
        ([b"private"], b"private"),
        ([b'private="Set-Cookie", max-age=5'], b"max-age=5, private"),
        ([b's-maxage=10, no-cache="a, public"'], b's-maxage=10, no-cache="a, public", private'),
        ([b" , public ,, must-revalidate "], b"must-revalidate, private"),
    ],
)
def test_nocacheMakesPrivate(fields, expected):
    p, _ = persistence()
    pool = makePool()
    headers = Headers([(b"Cache-Control", value) for value in fields] + [(b"X", b"y")])
    p.responseHeaders(headers, pool.server("web1"), Stickiness(None, "N"))
    assert headers.getAll(b"cache-control") == [expected]
    assert headers.get(b"x") == b"y"


def test_withoutNocacheCacheControlUntouched():
    p, _ = persistence(nocache=False)
    pool = makePool()
    headers = Headers([(b"Cache-Control", b"public")])
    p.responseHeaders(headers, pool.server("web1"), Stickiness(None, "N"))
    assert headers.getAll(b"cache-control") == [b"public"]


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"a, b", [b"a", b"b"]),
        (b'a="x, y", b', [b'a="x, y"', b"b"]),
        (b'a="x\\", y", b', [b'a="x\\", y"', b"b"]),
        (b"", []),
        (b" ,, ", []),
    ],
)
def test_splitDirectives(value, expected):
    assert splitDirectives(value) == expected
