"""
Tests for L{lbproxy.http.routing}: ordered rules, every condition kind,
and that routing only ever yields configured pools.
"""

from __future__ import annotations

import re

import pytest

from lbproxy.config import loadBytes
from lbproxy.http.config import HTTPListenerConfig, RouteConfig
from lbproxy.http.message import Headers, RequestHead
from lbproxy.http.routing import Router
from lbproxy.core.pool import Pool, Server
from lbproxy.core.model import Balancer

from test_http_context import request


def pools(*names: str) -> dict[str, Pool]:
    return {name: Pool(name, [Server(name + "1", "tcp:127.0.0.1:1")], None) for name in names}


def router(*routes: RouteConfig, default: str = "default") -> Router:
    names = {default} | {route.pool for route in routes}
    listener = HTTPListenerConfig(
        name="web", bind="tcp:0", pool=default, mode="http", routes=routes
    )
    return Router(listener, pools(*sorted(names)))


def routed(r: Router, *args, **kwargs) -> str:
    return r.route(request(*args, **kwargs)).name


def test_noRoutes():
    r = router()
    assert routed(r, b"/", b"Host: a") == "default"
    assert r.route(request(b"/", b"Host: a")) is r.default


def test_missingPoolIsKeyError():
    listener = HTTPListenerConfig(
        name="web", bind="tcp:0", pool="default", mode="http",
        routes=(RouteConfig(pool="gone", methods=frozenset({b"GET"})),),
    )
    with pytest.raises(KeyError):
        Router(listener, pools("default"))


@pytest.mark.parametrize(
    "host, expected",
    [
        (b"www.example.com", "www"),
        (b"WWW.Example.COM", "www"),
        (b"www.example.com:8080", "www"),
        (b"www.example.com.", "www"),
        (b"www.example.org", "default"),
        (b"xwww.example.com", "default"),
        (b"www.example.com.evil", "default"),
    ],
)
def test_exactHost(host, expected):
    r = router(RouteConfig(pool="www", host="www.example.com"))
    assert routed(r, b"/", b"Host: " + host) == expected


@pytest.mark.parametrize(
    "host, expected",
    [
        (b"a.example.com", "sub"),
        (b"a.b.example.com", "sub"),
        (b"A.Example.Com:443", "sub"),
        (b"example.com", "default"),
        (b"badexample.com", "default"),
        (b"example.com.evil", "default"),
        (b".example.com", "default"),
    ],
)
def test_wildcardHost(host, expected):
    r = router(RouteConfig(pool="sub", host="*.example.com"))
    if host == b".example.com":
        # Not a valid Host: check the rule directly on a hand-built head.
        head = RequestHead(b"GET", b"/", (1, 1), Headers([(b"Host", host)]), authority=host)
        assert r.route(head).name == expected
        return
    assert routed(r, b"/", b"Host: " + host) == expected


def test_hostFromAbsoluteTarget():
    r = router(RouteConfig(pool="www", host="www.example.com"))
    assert routed(r, b"http://www.example.com/x", b"Host: www.example.com") == "www"


def test_absoluteTargetCannotPickAnUpstream():
    """
    An absolute-form target naming a host no rule knows goes to the
    listener's pool: routing never invents a destination.
    """
    r = router(RouteConfig(pool="www", host="www.example.com"))
    configured = set(pools("www", "default"))
    for target, host in [
        (b"http://169.254.169.254/latest/meta-data/", b"169.254.169.254"),
        (b"http://127.0.0.1:22/", b"127.0.0.1:22"),
        (b"https://internal.example.net/admin", b"internal.example.net"),
    ]:
        pool = r.route(request(target, b"Host: " + host))
        assert pool.name == "default"
        assert pool.name in configured


def test_noHostMatchesNoHostRule():
    r = router(RouteConfig(pool="www", host="www.example.com"))
    assert routed(r, b"/", version=b"1.0") == "default"


@pytest.mark.parametrize(
    "target, expected",
    [
        (b"/api", "api"),
        (b"/api/v1/users", "api"),
        (b"/apiary", "api"),
        (b"/api?x=1", "api"),
        (b"/x?/api", "default"),
        (b"/API/v1", "default"),
        (b"/%61pi/v1", "default"),
        (b"/static/../api/v1", "default"),
        (b"http://a/api/v1", "api"),
    ],
)
def test_pathPrefixIsRaw(target, expected):
    r = router(RouteConfig(pool="api", pathPrefix="/api"))
    assert routed(r, target, b"Host: a") == expected


@pytest.mark.parametrize(
    "target, expected",
    [
        (b"/img/a.png", "img"),
        (b"/deep/x/b.PNG", "img"),
        (b"/a.png?x=1", "img"),
        (b"/a.pngx", "default"),
        (b"/a?f=b.png", "default"),
    ],
)
def test_pathRegex(target, expected):
    r = router(RouteConfig(pool="img", pathRegex=re.compile(rb"(?i)\.png$")))
    assert routed(r, target, b"Host: a") == expected


def test_pathRegexSearchesAnywhere():
    r = router(RouteConfig(pool="v", pathRegex=re.compile(rb"/v[0-9]+/")))
    assert routed(r, b"/api/v2/x", b"Host: a") == "v"
    assert routed(r, b"/api/vx/x", b"Host: a") == "default"


def test_pathRegexGivenAsText():
    """
    A RouteConfig built by hand with a str pattern still matches the bytes
    path.
    """
    r = router(RouteConfig(pool="v", pathRegex=re.compile(r"^/v[0-9]+/")))
    assert routed(r, b"/v2/x", b"Host: a") == "v"


def test_pathConditionsNeverMatchConnect():
    r = router(
        RouteConfig(pool="p", pathPrefix="/"),
        RouteConfig(pool="q", pathRegex=re.compile(rb".")),
    )
    head = request(b"a.example:443", b"Host: a.example:443", method=b"CONNECT")
    assert r.route(head).name == "default"


def test_asteriskTarget():
    r = router(RouteConfig(pool="p", pathPrefix="/"))
    assert routed(r, b"*", b"Host: a", method=b"OPTIONS") == "default"


def test_headerPresence():
    r = router(RouteConfig(pool="h", header=(b"x-canary", None)))
    assert routed(r, b"/", b"Host: a", b"X-Canary: yes") == "h"
    assert routed(r, b"/", b"Host: a", b"x-CANARY:") == "h"
    assert routed(r, b"/", b"Host: a") == "default"


def test_headerValue():
    r = router(RouteConfig(pool="h", header=(b"x-tenant", b"blue")))
    assert routed(r, b"/", b"Host: a", b"X-Tenant: blue") == "h"
    assert routed(r, b"/", b"Host: a", b"X-Tenant:   blue  ") == "h"
    assert routed(r, b"/", b"Host: a", b"X-Tenant: green", b"X-Tenant: blue") == "h"
    assert routed(r, b"/", b"Host: a", b"X-Tenant: Blue") == "default"
    assert routed(r, b"/", b"Host: a", b"X-Tenant: blue, green") == "default"
    assert routed(r, b"/", b"Host: a", b"X-Tenant: blueish") == "default"
    assert routed(r, b"/", b"Host: a") == "default"


def test_methods():
    r = router(RouteConfig(pool="w", methods=frozenset({b"POST", b"PUT"})))
    assert routed(r, b"/", b"Host: a", b"Content-Length: 0", method=b"POST") == "w"
    assert routed(r, b"/", b"Host: a", b"Content-Length: 0", method=b"PUT") == "w"
    assert routed(r, b"/", b"Host: a") == "default"
    assert routed(r, b"/", b"Host: a", method=b"HEAD") == "default"


def test_allConditionsMustMatch():
    r = router(
        RouteConfig(
            pool="all",
            host="api.example.com",
            pathPrefix="/v1/",
            pathRegex=re.compile(rb"/users"),
            header=(b"x-k", b"1"),
            methods=frozenset({b"GET"}),
        )
    )
    good = [b"/v1/users", b"Host: api.example.com", b"X-K: 1"]
    assert routed(r, *good) == "all"
    assert routed(r, b"/v1/users", b"Host: www.example.com", b"X-K: 1") == "default"
    assert routed(r, b"/v2/users", b"Host: api.example.com", b"X-K: 1") == "default"
    assert routed(r, b"/v1/groups", b"Host: api.example.com", b"X-K: 1") == "default"
    assert routed(r, b"/v1/users", b"Host: api.example.com", b"X-K: 2") == "default"
    assert routed(r, *good, method=b"HEAD") == "default"


def test_firstMatchWins():
    r = router(
        RouteConfig(pool="first", pathPrefix="/a"),
        RouteConfig(pool="second", pathPrefix="/a/b"),
        RouteConfig(pool="third", host="x.example"),
    )
    assert routed(r, b"/a/b", b"Host: x.example") == "first"
    assert routed(r, b"/c", b"Host: x.example") == "third"
    assert routed(r, b"/c", b"Host: y.example") == "default"


def test_routeReturnsLivePools():
    names = pools("default", "p")
    listener = HTTPListenerConfig(
        name="web", bind="tcp:0", pool="default", mode="http",
        routes=(RouteConfig(pool="p", pathPrefix="/p"),),
    )
    r = Router(listener, names)
    assert r.route(request(b"/p", b"Host: a")) is names["p"]
    assert r.route(request(b"/q", b"Host: a")) is names["default"]


def test_fromConfigFile():
    """
    Routes as the config loader builds them (bytes regex, lower-case host,
    header names) route as written.
    """
    config = loadBytes(
        b"""
[listeners.web]
bind = "tcp:8080:interface=127.0.0.1"
pool = "main"
mode = "http"
routes = [
    { pool = "api", host = "API.example.com", path_regex = "^/v[0-9]+/" },
    { pool = "static", path_prefix = "/static/", methods = ["GET", "HEAD"] },
    { pool = "beta", header = { name = "X-Beta", value = "on" } },
]

[pools.main]
servers = [{ name = "m", address = "127.0.0.1:9001" }]
[pools.api]
servers = [{ name = "a", address = "127.0.0.1:9002" }]
[pools.static]
servers = [{ name = "s", address = "127.0.0.1:9003" }]
[pools.beta]
servers = [{ name = "b", address = "127.0.0.1:9004" }]
""",
        "lb.toml",
    )
    balancer = Balancer(config)
    r = Router(config.listeners["web"], balancer.pools)
    assert routed(r, b"/v2/x", b"Host: api.example.com") == "api"
    assert routed(r, b"/x/v2/", b"Host: api.example.com") == "main"
    assert routed(r, b"/static/a.css", b"Host: a") == "static"
    assert routed(r, b"/static/a.css", b"Host: a", b"Content-Length: 0", method=b"POST") == "main"
    assert routed(r, b"/", b"Host: a", b"x-beta: on") == "beta"
    assert routed(r, b"/", b"Host: a", b"x-beta: off") == "main"
