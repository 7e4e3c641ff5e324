"""
The settings of an HTTP listener (C{mode = "http"}): routes, forwarding,
the access log, limits, path normalisation, timeouts, and redirecting to
https instead of proxying.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lbproxy.config import ListenerConfig
from lbproxy.config.table import HOST_PATTERN, Table, oneOf, show
from lbproxy.errors import ConfigError
from lbproxy.http.errors import HTTPParseError
from lbproxy.http.paths import PathsConfig, normalizePath
from lbproxy.http.syntax import isFieldValue

#: Which requests an HTTP listener's access log gets a line for.
LOG_REQUESTS = ("all", "errors")
_ROUTE_PATH = re.compile(r"/[\x21-\x22\x24-\x3e\x40-\x7e]*")


@dataclass(frozen=True)
class RouteConfig:
    """
    One routing rule of an HTTP listener: every condition given must match.

    @ivar host: exact host (lower case, no port) or a C{*.example.com}
        wildcard matching any subdomain.
    @ivar pathRegex: a pattern compiled from bytes, searched in the path
        (normalised unless the listener turns that off; see
        L{lbproxy.http.routing}).
    @ivar header: C{(name, value)}: the request has the header (lower-case
        name), with exactly this value unless the value is None.
    """

    pool: str
    host: str | None = None
    pathPrefix: str | None = None
    pathRegex: re.Pattern | None = None
    header: tuple[bytes, bytes | None] | None = None
    methods: frozenset[bytes] = frozenset()


@dataclass(frozen=True)
class HTTPLimits:
    requestLine: int = 8192
    headerSize: int = 32768
    headerCount: int = 100
    #: Largest request body in bytes, 0 for no limit.
    bodySize: int = 0


@dataclass(frozen=True)
class HTTPListenerConfig(ListenerConfig):
    """
    An HTTP listener: what it adds to every listener's settings.
    """

    mode: str = "http"
    routes: tuple[RouteConfig, ...] = ()
    #: Clients whose X-Forwarded-For / Forwarded values are kept.
    trustedProxies: tuple = ()
    #: Also send the RFC 7239 Forwarded header.
    forwarded: bool = False
    #: File the access log is appended to; None: the daemon's log.
    accessLog: str | None = None
    #: "all" requests, or only "errors": those answered by lbproxy itself
    #: or by the server with a status of 500 or above, or that ended
    #: abnormally (a termination state other than "--"), as HAProxy's
    #: C{option dontlog-normal}.
    logRequests: str = "all"
    limits: HTTPLimits = HTTPLimits()
    #: Path normalisation before routing (L{lbproxy.http.paths}).
    paths: PathsConfig = PathsConfig()
    #: Time a client has to send a complete request head (408).
    requestTimeout: float = 10.0
    #: Idle time allowed between two requests of a keep-alive client.
    keepaliveTimeout: float = 60.0
    #: Idle time of an upgraded (WebSocket) tunnel.
    tunnelTimeout: float = 3600.0
    #: Answer every request with a redirect to https on this port instead
    #: of proxying it (the listener has no pool then).
    redirectHttps: int | None = None
    #: HTTP/2 to clients (L{lbproxy.http2.config.HTTP2Settings}), or None.
    http2: object | None = None

    def poolsUsed(self) -> set[str]:
        used = super().poolsUsed()
        used.update(route.pool for route in self.routes)
        return used


def parseHTTPListener(t: Table, timeouts: Table, common: dict, pools: dict) -> HTTPListenerConfig:
    """
    Validate the HTTP keys of a listener table; C{common} holds the
    settings every listener has.
    """
    if "redirect_https" in t.data:
        common["redirectHttps"] = t.integer("redirect_https", 1, 65535, 443)
        for key in ("pool", "routes", "tls"):
            if key in t.data:
                t.fail(key, "expected no pool, routes or tls with redirect_https (every request is redirected)")
        for key in ("trusted_proxies", "forwarded"):
            if key in t.data:
                t.fail(key, "expected no forwarding settings with redirect_https (no request is forwarded)")
        if "paths" in t.data:
            t.fail("paths", "expected no paths table with redirect_https (no request is routed or forwarded)")
        if "tunnel" in timeouts.data:
            timeouts.fail("tunnel", "expected no tunnel timeout with redirect_https (no request is forwarded)")
        if "http2" in t.data:
            t.fail("http2", "expected no http2 table with redirect_https (redirects are answered in HTTP/1.1)")
    elif not common["pool"]:
        t.fail("pool", "required key is missing")
    from lbproxy.http2.config import parseHTTP2

    http2 = parseHTTP2(t.table("http2"), t.table("tls"), common)
    limits = t.table("limits")
    routes = tuple(parseRoute(t.tableAt("routes", index, item), pools) for index, item in enumerate(t.list("routes")))
    listener = HTTPListenerConfig(
        **common,
        routes=routes,
        trustedProxies=t.networks("trusted_proxies"),
        forwarded=t.boolean("forwarded", False),
        accessLog=t.string("access_log", default=None),
        logRequests=t.choice("log_requests", LOG_REQUESTS, "all"),
        limits=HTTPLimits(
            requestLine=limits.integer("request_line", 256, 1 << 20, 8192),
            headerSize=limits.integer("header_size", 1024, 1 << 22, 32768),
            headerCount=limits.integer("header_count", 8, 10000, 100),
            bodySize=limits.integer("body_size", 0, 1 << 62, 0),
        ),
        requestTimeout=timeouts.duration("request", 10.0),
        keepaliveTimeout=timeouts.duration("keepalive", 60.0),
        tunnelTimeout=timeouts.duration("tunnel", 3600.0),
        paths=parsePaths(t.table("paths")),
        http2=http2,
    )
    limits.done()
    checkRoutePaths(t, listener.routes, listener.paths)
    if listener.accessLog is not None and not listener.accessLog:
        t.fail("access_log", "expected a file path, got ''")
    return listener


def parseRoute(t: Table, pools: dict) -> RouteConfig:
    pool = t.string("pool", required=True)
    if pool not in pools:
        t.fail("pool", f"expected the name of a pool ({oneOf(pools)}), got {pool!r}")
    if "sni" in t.data:
        t.fail("sni", 'expected only in routes of a mode = "tcp" listener (HTTP routes match host)')
    host = t.string("host", default=None)
    if host is not None:
        if not HOST_PATTERN.fullmatch(host.lower()):
            t.fail("host", f'expected a host name such as "www.example.com" or "*.example.com", got {host!r}')
        host = host.lower()
    prefix = t.string("path_prefix", default=None)
    if prefix is not None and not _ROUTE_PATH.fullmatch(prefix):
        t.fail(
            "path_prefix",
            "expected a path starting with / of visible ASCII characters without ? or # "
            f"(percent-encode others, as clients send them), got {prefix!r}",
        )
    regex = t.string("path_regex", default=None)
    pattern = None
    if regex is not None:
        # Paths are bytes (normalised, never fully decoded): compile to match bytes.
        try:
            pattern = re.compile(regex.encode("utf-8"))
        except re.error as e:
            t.fail("path_regex", f"expected a regular expression, got {regex!r} ({e})")
        if pattern.search(b"") is not None:
            t.fail("path_regex", f"expected a regular expression that does not match every path, got {regex!r}")
    header = None
    headerTable = t.table("header")
    if headerTable.present:
        headerName = headerTable.string("name", required=True)
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", headerName):
            headerTable.fail("name", f"expected a header name, got {headerName!r}")
        value = headerTable.string("value", default=None)
        if value is not None and not isFieldValue(value.encode("utf-8")):
            headerTable.fail(
                "value",
                "expected a header value without control characters or surrounding "
                f"whitespace (it would never match), got {value!r}",
            )
        header = (headerName.lower().encode("ascii"), value.encode("utf-8") if value is not None else None)
        headerTable.done()
    methods = t.list("methods")
    for index, method in enumerate(methods):
        if not isinstance(method, str) or not re.fullmatch(r"[A-Z]+", method):
            raise ConfigError(t.source, f"{t._key('methods')}[{index}]", f'expected a method such as "GET", got {show(method)}')
    t.done()
    route = RouteConfig(
        pool=pool,
        host=host,
        pathPrefix=prefix,
        pathRegex=pattern,
        header=header,
        methods=frozenset(m.encode("ascii") for m in methods),
    )
    if route == RouteConfig(pool=pool):
        raise ConfigError(
            t.source,
            t.path,
            "expected at least one condition (host, path_prefix, path_regex, header, methods) besides pool",
        )
    return route


#: The keys that let something through unnormalised, by PathsConfig field.
_ALLOW_KEYS = (
    ("allow_encoded_slash", "allowEncodedSlash"),
    ("allow_backslash", "allowBackslash"),
    ("allow_encoded_control", "allowEncodedControl"),
)


def parsePaths(t: Table) -> PathsConfig:
    """
    The C{paths} table of an HTTP listener.
    """
    normalize = t.boolean("normalize", True)
    allowed = {field: t.boolean(key, False) for key, field in _ALLOW_KEYS}
    if not normalize:
        for key, _ in _ALLOW_KEYS:
            if key in t.data:
                t.fail(key, "expected only with normalize = true (without it every path passes as received)")
    t.done()
    return PathsConfig(normalize=normalize, **allowed)


def checkRoutePaths(t: Table, routes, paths: PathsConfig) -> None:
    """
    Refuse a route's C{path_prefix} that no normalised path can start with:
    one that is not in the normal form itself (C{/%7Euser}, C{/a//b}), or
    that normalisation refuses.

    @param t: the listener's table (for the key path of the error).
    """
    if not paths.normalize:
        return
    for index, route in enumerate(routes):
        prefix = route.pathPrefix
        if prefix is None:
            continue
        key = f"{t._key('routes')}[{index}].path_prefix"
        try:
            normal = normalizePath(prefix.encode("ascii"), paths)
        except HTTPParseError as e:
            raise ConfigError(
                t.source,
                key,
                f"expected a path that normalisation accepts, got {prefix!r} ({e.reason})",
            )
        if normal != prefix.encode("ascii"):
            raise ConfigError(
                t.source,
                key,
                f"expected a path in normal form (requests are matched after "
                f"normalisation), {normal.decode('ascii')!r}, got {prefix!r}",
            )
