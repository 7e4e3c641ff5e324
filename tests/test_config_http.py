"""
Tests for the HTTP part of L{lbproxy.config}: listener routes, limits,
timeouts, forwarding and access log; pool cookie persistence, backend
connection reuse and HTTP timeouts. Every error is one exact line.
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from lbproxy.config import (
    CookieConfig,
    PoolConfig,
    ServerConfig,
    loadBytes,
)
from lbproxy.http.config import HTTPLimits, HTTPListenerConfig, RouteConfig
from lbproxy.errors import ConfigError

HTTP = """\
[listeners.web]
bind = "tcp:8080:interface=127.0.0.1"
pool = "web"
mode = "http"

[pools.web]
servers = [{ name = "a", address = "127.0.0.1:8081" }]

[pools.api]
servers = [{ name = "b", address = "127.0.0.1:8082" }]
"""

TCP = HTTP.replace('mode = "http"\n', "")


def load(text: str):
    return loadBytes(text.encode("utf-8"), "lb.toml")


def loadError(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("lb.toml: ")
    return message[len("lb.toml: "):]


def listener(extra: str, base: str = HTTP) -> str:
    """
    C{base} with C{extra} lines added to the [listeners.web] table.
    """
    return base.replace('pool = "web"\n', 'pool = "web"\n' + extra, 1)


def route(body: str) -> str:
    """
    The HTTP config with one route whose inline table body is C{body}.
    """
    return listener(f"routes = [{{ {body} }}]\n")


def pool(extra: str, base: str = HTTP) -> str:
    """
    C{base} with C{extra} lines added after the [pools.web] table.
    """
    return base.replace(
        '[pools.web]\nservers = [{ name = "a", address = "127.0.0.1:8081" }]\n',
        '[pools.web]\nservers = [{ name = "a", address = "127.0.0.1:8081" }]\n' + extra,
        1,
    )


DURATION = 'expected a duration in seconds or a string such as "500ms", "5s", "2m"'
ONLY_HTTP = 'expected only with mode = "http"'
POOL_ONLY_HTTP = 'expected only in a pool used by a mode = "http" listener (no listener using this pool applies it)'
HOST = 'expected a host name such as "www.example.com" or "*.example.com"'
PREFIX = (
    "expected a path starting with / of visible ASCII characters without ? or # "
    "(percent-encode others, as clients send them)"
)
CONDITION = "expected at least one condition (host, path_prefix, path_regex, header, methods) besides pool"


# Valid configurations


def test_httpDefaults():
    config = load(HTTP)
    assert config.listeners["web"] == HTTPListenerConfig(
        name="web", bind="tcp:8080:interface=127.0.0.1", pool="web", mode="http"
    )
    web = config.listeners["web"]
    assert (web.routes, web.trustedProxies, web.forwarded, web.accessLog) == ((), (), False, None)
    assert web.limits == HTTPLimits(8192, 32768, 100, 0)
    assert (web.requestTimeout, web.keepaliveTimeout, web.tunnelTimeout, web.idleTimeout) == (
        10.0, 60.0, 3600.0, 300.0,
    )
    webPool = config.pools["web"]
    assert webPool.cookie is None
    assert (webPool.reuseMaxIdle, webPool.reuseIdleTimeout, webPool.reuseMode) == (16, 15.0, "safe")
    assert (webPool.responseTimeout, webPool.serverTimeout) == (30.0, 60.0)


def test_everyHTTPKeySet():
    text = """\
[listeners.web]
bind = "tcp:8080:interface=127.0.0.1"
pool = "web"
mode = "http"
trusted_proxies = ["10.0.0.0/8", "::1"]
forwarded = true
access_log = "access.log"
routes = [
    { pool = "api", host = "API.Example.com", path_prefix = "/v1/", methods = ["GET", "POST"] },
    { pool = "api", path_regex = "\\\\.json$", header = { name = "X-Tenant", value = "blue" } },
    { pool = "web", host = "*.example.com", header = { name = "X-Debug" } },
]

[listeners.web.limits]
request_line = 4096
header_size = 16384
header_count = 50
body_size = 1048576

[listeners.web.timeouts]
request = "5s"
keepalive = "30s"
tunnel = "10m"
idle = "2m"

[pools.web]
servers = [
    { name = "a", address = "127.0.0.1:8081", cookie = "s1" },
    { name = "b", address = "127.0.0.1:8082" },
]

[pools.web.cookie]
name = "SERVERID"
indirect = false
nocache = false
httponly = false
secure = true
path = "/app"
domain = ".example.com"
maxidle = "30m"
maxlife = "12h"

[pools.web.reuse]
max_idle = 4
idle_timeout = "5s"
mode = "never"

[pools.web.timeouts]
connect = "1s"
response = "20s"
server = "45s"

[pools.api]
servers = [{ name = "c", address = "127.0.0.1:8083" }]
"""
    config = load(text)
    web = config.listeners["web"]
    assert web == HTTPListenerConfig(
        name="web",
        bind="tcp:8080:interface=127.0.0.1",
        pool="web",
        mode="http",
        idleTimeout=120.0,
        routes=(
            RouteConfig(
                pool="api",
                host="api.example.com",
                pathPrefix="/v1/",
                methods=frozenset({b"GET", b"POST"}),
            ),
            RouteConfig(
                pool="api",
                pathRegex=re.compile(rb"\.json$"),
                header=(b"x-tenant", b"blue"),
            ),
            RouteConfig(pool="web", host="*.example.com", header=(b"x-debug", None)),
        ),
        trustedProxies=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")),
        forwarded=True,
        accessLog="access.log",
        limits=HTTPLimits(requestLine=4096, headerSize=16384, headerCount=50, bodySize=1048576),
        requestTimeout=5.0,
        keepaliveTimeout=30.0,
        tunnelTimeout=600.0,
    )
    assert web.routes[1].pathRegex.search(b"/x.json")
    assert config.pools["web"] == PoolConfig(
        name="web",
        servers=(
            ServerConfig(name="a", address="tcp:host=127.0.0.1:port=8081", cookie="s1"),
            ServerConfig(name="b", address="tcp:host=127.0.0.1:port=8082", cookie="b"),
        ),
        connectTimeout=1.0,
        queueTimeout=1.0,
        cookie=CookieConfig(
            name="SERVERID",
            indirect=False,
            nocache=False,
            httponly=False,
            secure=True,
            path="/app",
            domain=".example.com",
            maxidle=1800.0,
            maxlife=43200.0,
        ),
        reuseMaxIdle=4,
        reuseIdleTimeout=5.0,
        reuseMode="never",
        responseTimeout=20.0,
        serverTimeout=45.0,
    )


def test_cookieDefaults():
    cookie = load(pool('[pools.web.cookie]\nname = "SRV"\n')).pools["web"].cookie
    assert cookie == CookieConfig(name="SRV")
    assert (cookie.indirect, cookie.nocache, cookie.httponly, cookie.secure) == (True, True, True, False)
    assert (cookie.path, cookie.domain, cookie.maxidle, cookie.maxlife) == ("/", None, None, None)


def test_pathRegexMatchesBytes():
    [rule] = load(route('pool = "api", path_regex = "^/v[0-9]+/"')).listeners["web"].routes
    assert isinstance(rule.pathRegex.pattern, bytes)
    assert rule.pathRegex.search(b"/v2/x")


def test_nonAsciiHeaderValueIsUtf8():
    [rule] = load(route('pool = "api", header = { name = "X-N", value = "café" }')).listeners["web"].routes
    assert rule.header == (b"x-n", "café".encode("utf-8"))


def test_reuseDisabledAllowsSendProxy():
    config = load(pool('send_proxy = "v2"\n[pools.web.reuse]\nmax_idle = 0\n'))
    assert (config.pools["web"].sendProxy, config.pools["web"].reuseMaxIdle) == ("v2", 0)


def test_sendProxyOnTcpKeepsReuseDefault():
    config = load(pool('send_proxy = "v1"\n', base=TCP))
    assert config.pools["web"].sendProxy == "v1"


def test_httpPoolSettingsOnPoolSharedWithHttpListener():
    """
    A pool both a TCP and an HTTP listener use may carry HTTP settings.
    """
    text = pool("[pools.web.reuse]\nmax_idle = 2\n") + (
        '\n[listeners.raw]\nbind = "tcp:8090:interface=127.0.0.1"\npool = "web"\n'
    )
    config = load(text)
    assert config.pools["web"].reuseMaxIdle == 2
    assert config.listeners["raw"].mode == "tcp"


def test_httpPoolSettingsOnPoolOfRouteOnly():
    text = route('pool = "api", path_prefix = "/api"').replace(
        '[pools.api]\n', '[pools.api]\ntimeouts = { response = "5s" }\n'
    )
    assert load(text).pools["api"].responseTimeout == 5.0


def test_httpKeyOnHttpListenerPoolFits():
    config = load(pool('selector = { name = "hash", key = "cookie:sid" }\n'))
    assert config.pools["web"].selectorOptions == {"key": "cookie:sid"}


# Listener errors


@pytest.mark.parametrize(
    "key, value",
    [
        ("trusted_proxies", '["127.0.0.1"]'),
        ("forwarded", "true"),
        ("access_log", '"a.log"'),
        ("redirect_https", "443"),
    ],
)
def test_httpListenerKeyOnTcpListener(key, value):
    assert loadError(listener(f"{key} = {value}\n", base=TCP)) == f"listeners.web.{key}: {ONLY_HTTP}"


def test_httpLimitsOnTcpListener():
    text = listener("limits = { body_size = 10 }\n", base=TCP)
    assert loadError(text) == 'listeners.web.limits: expected only with mode = "http" or "imap" or "pop3"'


def test_httpRouteOnTcpListener():
    text = listener('routes = [{ pool = "api", path_prefix = "/a" }]\n', base=TCP)
    assert loadError(text) == (
        'listeners.web.routes[0].path_prefix: expected only in routes of a mode = "http" '
        "listener (TCP routes match sni)"
    )


@pytest.mark.parametrize("key", ["request", "keepalive", "tunnel"])
def test_httpTimeoutOnTcpListener(key):
    text = TCP + f'\n[listeners.web.timeouts]\n{key} = "5s"\n'
    assert loadError(text) == f"listeners.web.timeouts.{key}: {ONLY_HTTP}"


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("routes = 3\n", "listeners.web.routes: expected an array, got 3"),
        ('routes = ["x"]\n', "listeners.web.routes[0]: expected a table, got 'x'"),
        ("trusted_proxies = \"10.0.0.0/8\"\n", "listeners.web.trusted_proxies: expected an array, got '10.0.0.0/8'"),
        (
            'trusted_proxies = ["10.0.0.0/8", "nope"]\n',
            'listeners.web.trusted_proxies[1]: expected an address or network such as "127.0.0.1" or "10.0.0.0/8", got \'nope\'',
        ),
        (
            "trusted_proxies = [10]\n",
            'listeners.web.trusted_proxies[0]: expected an address or network such as "127.0.0.1" or "10.0.0.0/8", got 10',
        ),
        ('forwarded = "yes"\n', "listeners.web.forwarded: expected true or false, got 'yes'"),
        ("access_log = 1\n", "listeners.web.access_log: expected a string, got 1"),
        ('access_log = ""\n', "listeners.web.access_log: expected a file path, got ''"),
        ("limits = 5\n", "listeners.web.limits: expected a table, got 5"),
        ("limits = { request_line = 100 }\n", "listeners.web.limits.request_line: expected an integer from 256 to 1048576, got 100"),
        ("limits = { header_size = 512 }\n", "listeners.web.limits.header_size: expected an integer from 1024 to 4194304, got 512"),
        ("limits = { header_count = 10001 }\n", "listeners.web.limits.header_count: expected an integer from 8 to 10000, got 10001"),
        ("limits = { body_size = -1 }\n", "listeners.web.limits.body_size: expected an integer from 0 to 4611686018427387904, got -1"),
        ('limits = { body_size = "1M" }\n', "listeners.web.limits.body_size: expected an integer from 0 to 4611686018427387904, got '1M'"),
        ("limits = { header_lines = 5 }\n", "listeners.web.limits.header_lines: unknown key"),
        ('timeouts = { request = "soon" }\n', f"listeners.web.timeouts.request: {DURATION}, got 'soon'"),
        ("timeouts = { keepalive = 0 }\n", "listeners.web.timeouts.keepalive: expected a duration above 0 and at most 7 days, got 0"),
        ("timeouts = { tunnel = true }\n", f"listeners.web.timeouts.tunnel: {DURATION}, got true"),
        ("timeouts = { response = 5 }\n", "listeners.web.timeouts.response: unknown key"),
    ],
)
def test_listenerErrors(extra, expected):
    assert loadError(listener(extra)) == expected


# Route errors


@pytest.mark.parametrize(
    "body, expected",
    [
        ('path_prefix = "/a"', "listeners.web.routes[0].pool: required key is missing"),
        ('pool = 1, path_prefix = "/a"', "listeners.web.routes[0].pool: expected a string, got 1"),
        (
            'pool = "nope", path_prefix = "/a"',
            "listeners.web.routes[0].pool: expected the name of a pool (one of api, web), got 'nope'",
        ),
        ('pool = "api"', f"listeners.web.routes[0]: {CONDITION}"),
        ('pool = "api", methods = []', f"listeners.web.routes[0]: {CONDITION}"),
        ('pool = "api", path_prefx = "/a"', "listeners.web.routes[0].path_prefx: unknown key"),
        ('pool = "api", host = "www.example.com:8080"', f"listeners.web.routes[0].host: {HOST}, got 'www.example.com:8080'"),
        ('pool = "api", host = "*"', f"listeners.web.routes[0].host: {HOST}, got '*'"),
        ('pool = "api", host = "a.*.com"', f"listeners.web.routes[0].host: {HOST}, got 'a.*.com'"),
        ('pool = "api", host = "-a.com"', f"listeners.web.routes[0].host: {HOST}, got '-a.com'"),
        ('pool = "api", host = "Bad Host"', f"listeners.web.routes[0].host: {HOST}, got 'Bad Host'"),
        ('pool = "api", host = ""', f"listeners.web.routes[0].host: {HOST}, got ''"),
        ('pool = "api", host = 5', "listeners.web.routes[0].host: expected a string, got 5"),
        ('pool = "api", path_prefix = "api"', f"listeners.web.routes[0].path_prefix: {PREFIX}, got 'api'"),
        ('pool = "api", path_prefix = ""', f"listeners.web.routes[0].path_prefix: {PREFIX}, got ''"),
        ('pool = "api", path_prefix = "/a b"', f"listeners.web.routes[0].path_prefix: {PREFIX}, got '/a b'"),
        ('pool = "api", path_prefix = "/a?b=1"', f"listeners.web.routes[0].path_prefix: {PREFIX}, got '/a?b=1'"),
        ('pool = "api", path_prefix = "/a#x"', f"listeners.web.routes[0].path_prefix: {PREFIX}, got '/a#x'"),
        ('pool = "api", path_prefix = "/café"', f"listeners.web.routes[0].path_prefix: {PREFIX}, got '/café'"),
        ('pool = "api", path_prefix = "/a\\t"', f"listeners.web.routes[0].path_prefix: {PREFIX}, got '/a\\t'"),
        (
            'pool = "api", path_regex = "(unclosed"',
            "listeners.web.routes[0].path_regex: expected a regular expression, got '(unclosed' "
            "(missing ), unterminated subpattern at position 0)",
        ),
        (
            'pool = "api", path_regex = ".*"',
            "listeners.web.routes[0].path_regex: expected a regular expression that does not match every path, got '.*'",
        ),
        (
            'pool = "api", path_regex = "x|"',
            "listeners.web.routes[0].path_regex: expected a regular expression that does not match every path, got 'x|'",
        ),
        ('pool = "api", path_regex = 1', "listeners.web.routes[0].path_regex: expected a string, got 1"),
        ('pool = "api", header = "X-A"', "listeners.web.routes[0].header: expected a table, got 'X-A'"),
        ('pool = "api", header = {}', "listeners.web.routes[0].header.name: required key is missing"),
        ('pool = "api", header = { value = "1" }', "listeners.web.routes[0].header.name: required key is missing"),
        ('pool = "api", header = { name = "X A" }', "listeners.web.routes[0].header.name: expected a header name, got 'X A'"),
        ('pool = "api", header = { name = "X:A" }', "listeners.web.routes[0].header.name: expected a header name, got 'X:A'"),
        ('pool = "api", header = { name = "" }', "listeners.web.routes[0].header.name: expected a header name, got ''"),
        ('pool = "api", header = { name = "X-A", value = 1 }', "listeners.web.routes[0].header.value: expected a string, got 1"),
        ('pool = "api", header = { name = "X-A", nam = 1 }', "listeners.web.routes[0].header.nam: unknown key"),
        (
            'pool = "api", header = { name = "X-A", value = " padded" }',
            "listeners.web.routes[0].header.value: expected a header value without control characters "
            "or surrounding whitespace (it would never match), got ' padded'",
        ),
        (
            'pool = "api", header = { name = "X-A", value = "a\\nb" }',
            "listeners.web.routes[0].header.value: expected a header value without control characters "
            "or surrounding whitespace (it would never match), got 'a\\nb'",
        ),
        ('pool = "api", methods = "GET"', "listeners.web.routes[0].methods: expected an array, got 'GET'"),
        ('pool = "api", methods = ["get"]', "listeners.web.routes[0].methods[0]: expected a method such as \"GET\", got 'get'"),
        ('pool = "api", methods = ["GET", 1]', "listeners.web.routes[0].methods[1]: expected a method such as \"GET\", got 1"),
        ('pool = "api", methods = [""]', "listeners.web.routes[0].methods[0]: expected a method such as \"GET\", got ''"),
    ],
)
def test_routeErrors(body, expected):
    assert loadError(route(body)) == expected


def test_secondRouteErrorNamesItsIndex():
    text = listener('routes = [{ pool = "api", path_prefix = "/a" }, { pool = "api", host = "x y" }]\n')
    assert loadError(text) == f"listeners.web.routes[1].host: {HOST}, got 'x y'"


def test_routePoolMustFitTheMode():
    """
    A route's pool is checked like the listener's: its selector key and
    settings must be something an HTTP listener applies.
    """
    text = route('pool = "api", path_prefix = "/a"').replace(
        "[pools.api]\n", '[pools.api]\nsend_proxy = "v1"\n'
    )
    assert loadError(text).startswith("listeners.web.pool: pool 'api' sends the PROXY protocol")


# Pool errors


@pytest.mark.parametrize(
    "extra, expected",
    [
        ('cookie = "SRV"\n', "pools.web.cookie: expected a table, got 'SRV'"),
        ("[pools.web.cookie]\nindirect = true\n", "pools.web.cookie.name: required key is missing"),
        (
            '[pools.web.cookie]\nname = "S ID"\n',
            "pools.web.cookie.name: expected a cookie name (letters, digits, and !#$%&'*+.^_`|~-), got 'S ID'",
        ),
        (
            '[pools.web.cookie]\nname = "a=b"\n',
            "pools.web.cookie.name: expected a cookie name (letters, digits, and !#$%&'*+.^_`|~-), got 'a=b'",
        ),
        (
            '[pools.web.cookie]\nname = ""\n',
            "pools.web.cookie.name: expected a cookie name (letters, digits, and !#$%&'*+.^_`|~-), got ''",
        ),
        ('[pools.web.cookie]\nname = "S"\nindirect = "yes"\n', "pools.web.cookie.indirect: expected true or false, got 'yes'"),
        ('[pools.web.cookie]\nname = "S"\nnocache = 1\n', "pools.web.cookie.nocache: expected true or false, got 1"),
        ('[pools.web.cookie]\nname = "S"\nhttponly = "no"\n', "pools.web.cookie.httponly: expected true or false, got 'no'"),
        ('[pools.web.cookie]\nname = "S"\nsecure = 0\n', "pools.web.cookie.secure: expected true or false, got 0"),
        ('[pools.web.cookie]\nname = "S"\npath = "app"\n', "pools.web.cookie.path: expected a path starting with /, got 'app'"),
        ('[pools.web.cookie]\nname = "S"\npath = "/a;b"\n', "pools.web.cookie.path: expected a path starting with /, got '/a;b'"),
        ('[pools.web.cookie]\nname = "S"\npath = "/a b"\n', "pools.web.cookie.path: expected a path starting with /, got '/a b'"),
        (
            '[pools.web.cookie]\nname = "S"\ndomain = "exa mple.com"\n',
            "pools.web.cookie.domain: expected a domain such as \"example.com\", got 'exa mple.com'",
        ),
        (
            '[pools.web.cookie]\nname = "S"\ndomain = "a.com; Secure"\n',
            "pools.web.cookie.domain: expected a domain such as \"example.com\", got 'a.com; Secure'",
        ),
        ('[pools.web.cookie]\nname = "S"\nmaxidle = "long"\n', f"pools.web.cookie.maxidle: {DURATION}, got 'long'"),
        ('[pools.web.cookie]\nname = "S"\nmaxlife = 0\n', "pools.web.cookie.maxlife: expected a duration above 0 and at most 7 days, got 0"),
        (
            '[pools.web.cookie]\nname = "S"\nmaxidle = "500ms"\n',
            "pools.web.cookie.maxidle: expected at least 1s (cookie dates are whole seconds), got '500ms'",
        ),
        (
            '[pools.web.cookie]\nname = "S"\nmaxlife = 0.5\n',
            "pools.web.cookie.maxlife: expected at least 1s (cookie dates are whole seconds), got 0.5",
        ),
        ('[pools.web.cookie]\nname = "S"\nmode = "insert"\n', "pools.web.cookie.mode: unknown key"),
        ("reuse = 4\n", "pools.web.reuse: expected a table, got 4"),
        ("[pools.web.reuse]\nmax_idle = -1\n", "pools.web.reuse.max_idle: expected an integer from 0 to 10000, got -1"),
        ("[pools.web.reuse]\nmax_idle = 10001\n", "pools.web.reuse.max_idle: expected an integer from 0 to 10000, got 10001"),
        ('[pools.web.reuse]\nidle_timeout = "x"\n', f"pools.web.reuse.idle_timeout: {DURATION}, got 'x'"),
        (
            '[pools.web.reuse]\nmax_idle = 0\nidle_timeout = "5s"\n',
            "pools.web.reuse.idle_timeout: expected only with max_idle above 0 (no connection is kept idle)",
        ),
        ("[pools.web.reuse]\nmax_conns = 3\n", "pools.web.reuse.max_conns: unknown key"),
        (
            '[pools.web.reuse]\nmode = "aggressive"\n',
            "pools.web.reuse.mode: expected one of always, never, safe, got 'aggressive'",
        ),
        ("[pools.web.reuse]\nmode = true\n", "pools.web.reuse.mode: expected one of always, never, safe, got true"),
        (
            '[pools.web.reuse]\nmax_idle = 0\nmode = "always"\n',
            "pools.web.reuse.mode: expected only with max_idle above 0 (no connection is kept idle)",
        ),
        ('[pools.web.timeouts]\nresponse = "-1s"\n', f"pools.web.timeouts.response: {DURATION}, got '-1s'"),
        ("[pools.web.timeouts]\nserver = 0\n", "pools.web.timeouts.server: expected a duration above 0 and at most 7 days, got 0"),
        ('[pools.web.timeouts]\nserver = "8d"\n', f"pools.web.timeouts.server: {DURATION}, got '8d'"),
        ("[pools.web.timeouts]\nqueued = 1\n", "pools.web.timeouts.queued: unknown key"),
        (
            'send_proxy = "v2"\n',
            "listeners.web.pool: pool 'web' sends the PROXY protocol on reused backend connections, "
            "which would announce one client's address for another's requests; "
            'expected reuse.max_idle = 0 or send_proxy = "none"',
        ),
    ],
)
def test_poolErrors(extra, expected):
    assert loadError(pool(extra)) == expected


@pytest.mark.parametrize(
    "fields, expected",
    [
        (
            'name = "a", address = "127.0.0.1:8081", cookie = "a|b"',
            "pools.web.servers[0].cookie: expected a cookie value of letters, digits, '_', '.' or '-' "
            "(at most 64), got 'a|b'",
        ),
        (
            'name = "a", address = "127.0.0.1:8081", cookie = ""',
            "pools.web.servers[0].cookie: expected a cookie value of letters, digits, '_', '.' or '-' "
            "(at most 64), got ''",
        ),
        (
            'name = "a", address = "127.0.0.1:8081", cookie = 5',
            "pools.web.servers[0].cookie: expected a string, got 5",
        ),
        (
            'name = "a", address = "127.0.0.1:8081", cookie = "x" }, { name = "b", address = "127.0.0.1:8082", cookie = "x"',
            "pools.web.servers[1].cookie: expected a cookie value unique in the pool, got 'x' again",
        ),
        (
            'name = "a", address = "127.0.0.1:8081" }, { name = "b", address = "127.0.0.1:8082", cookie = "a"',
            "pools.web.servers[1].cookie: expected a cookie value unique in the pool, got 'a' again",
        ),
    ],
)
def test_serverCookieErrors(fields, expected):
    text = HTTP.replace('name = "a", address = "127.0.0.1:8081"', fields, 1)
    assert loadError(text) == expected


def test_cookiePoolBehindTcpListener():
    assert loadError(pool('[pools.web.cookie]\nname = "S"\n', base=TCP)) == (
        "listeners.web.pool: pool 'web' has cookie persistence (cookie), which a tcp listener "
        'does not do; expected mode = "http", or a pool without cookie'
    )


@pytest.mark.parametrize(
    "extra, key",
    [
        ("[pools.web.reuse]\nmax_idle = 2\n", "reuse.max_idle"),
        ('[pools.web.reuse]\nidle_timeout = "3s"\n', "reuse.idle_timeout"),
        ('[pools.web.reuse]\nmode = "never"\n', "reuse.mode"),
        ('[pools.web.timeouts]\nresponse = "3s"\n', "timeouts.response"),
        ('[pools.web.timeouts]\nserver = "3s"\n', "timeouts.server"),
    ],
)
def test_httpPoolSettingOnTcpOnlyPool(extra, key):
    assert loadError(pool(extra, base=TCP)) == f"pools.web.{key}: {POOL_ONLY_HTTP}"


@pytest.mark.parametrize("key", ["uri", "path", "host", "header:X-User", "cookie:sid", "url_param:id"])
def test_httpSelectorKeyOnTcpListener(key):
    message = loadError(pool(f'selector = {{ name = "hash", key = "{key}" }}\n', base=TCP))
    assert message.startswith(
        f"listeners.web.pool: pool 'web' hashes on key '{key}', which a tcp listener cannot provide; expected one of "
    )


def test_httpSelectorKeyWithoutArgument():
    message = loadError(pool('selector = { name = "hash", key = "header:" }\n'))
    assert message.startswith("pools.web.selector.key: expected a key such as")


def test_logRequests():
    assert load(listener('log_requests = "errors"\n')).listeners["web"].logRequests == "errors"
    assert load(listener("")).listeners["web"].logRequests == "all"
    assert loadError(listener('log_requests = "none"\n')) == (
        "listeners.web.log_requests: expected one of all, errors, got 'none'"
    )
    assert loadError(listener('log_requests = "all"\n', base=TCP)) == f"listeners.web.log_requests: {ONLY_HTTP}"


@pytest.mark.parametrize("mode", ["never", "safe", "always"])
def test_reuseModes(mode):
    config = load(pool(f'[pools.web.reuse]\nmode = "{mode}"\n'))
    assert config.pools["web"].reuseMode == mode
