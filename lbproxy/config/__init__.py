"""
The TOML configuration: loading, validation and the resulting model.

Every problem becomes one L{ConfigError} whose text names the file, the key
path and what was expected, e.g.::

    lb.toml: pools.web.servers[1].weight: expected an integer from 0 to 256, got "x"

The model is plain frozen dataclasses; L{lbproxy.runtime} turns it into
live pools and servers.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from lbproxy.context import KEYS, keySupported
from lbproxy.errors import ConfigError, OptionError
from lbproxy.http.syntax import isFieldValue
from lbproxy.selectors import findSelector, selectorNames
from lbproxy.sockets import tcpBind
from lbproxy.config.mail import (
    CLIENT_ADDRESS,
    MAIL_IDLE_TIMEOUT,
    MAIL_MODES,
    MailListenerConfig,
    parseMailListener,
)
from lbproxy.config.ha import HAConfig, parseHA
from lbproxy.config.table import Table, oneOf, show
from lbproxy.config.tls import (
    BackendTLSConfig,
    ListenerTLSConfig,
    parseBackendTLS,
    parseListenerTLS,
)

MODES = ("tcp", "http", "imap", "pop3")
SNI_FALLBACK = ("default", "reject")
#: Which requests an HTTP listener's access log gets a line for.
LOG_REQUESTS = ("all", "errors")
PROXY_PROTOCOL_VERSIONS = ("none", "v1", "v2")
HEALTH_TYPES = ("tcp", "http", "banner")
HTTP_METHODS = ("GET", "HEAD", "OPTIONS")
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_COOKIE_ATTRIBUTE = re.compile(r"[\x21-\x3a\x3c-\x7e]{1,256}")
_ROUTE_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
_ROUTE_PATH = re.compile(r"/[\x21-\x22\x24-\x3e\x40-\x7e]*")


@dataclass(frozen=True)
class HealthConfig:
    """
    Active and passive health checking of a pool's servers.
    """

    type: str = "tcp"
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    passiveFall: int = 3
    # http
    method: str = "GET"
    path: str = "/"
    host: str | None = None
    expectStatus: tuple[tuple[int, int], ...] = ((200, 399),)
    # banner
    expect: bytes = b""
    send: bytes = b""
    #: Check over TLS with the pool's [tls] settings (the default for a
    #: pool with TLS).
    tls: bool = False


@dataclass(frozen=True)
class ServerConfig:
    name: str
    address: str
    weight: int = 1
    backup: bool = False
    maxconn: int = 0
    #: Value of the persistence cookie naming this server (HTTP); the
    #: server's name unless configured. Never derived from its address.
    cookie: str = ""


@dataclass(frozen=True)
class CookieConfig:
    """
    HTTP persistence by an inserted cookie (HAProxy's C{cookie NAME insert}).
    """

    name: str
    indirect: bool = True
    nocache: bool = True
    httponly: bool = True
    secure: bool = False
    path: str = "/"
    domain: str | None = None
    maxidle: float | None = None
    maxlife: float | None = None


@dataclass(frozen=True)
class RouteConfig:
    """
    One routing rule of an HTTP listener: every condition given must match.

    @ivar host: exact host (lower case, no port) or a C{*.example.com}
        wildcard matching any subdomain.
    @ivar pathRegex: a pattern compiled from bytes, searched in the raw
        path (see L{lbproxy.http.routing}).
    @ivar header: C{(name, value)}: the request has the header (lower-case
        name), with exactly this value unless the value is None.
    """

    pool: str
    host: str | None = None
    pathPrefix: str | None = None
    pathRegex: re.Pattern | None = None
    header: tuple[bytes, bytes | None] | None = None
    methods: frozenset[bytes] = frozenset()
    #: TCP listeners: server names (exact or C{*.example.com}, lower case)
    #: matched against the SNI of the client's TLS ClientHello, read
    #: without terminating TLS.
    sni: tuple[str, ...] = ()


@dataclass(frozen=True)
class HTTPLimits:
    requestLine: int = 8192
    headerSize: int = 32768
    headerCount: int = 100
    #: Largest request body in bytes, 0 for no limit.
    bodySize: int = 0


@dataclass(frozen=True)
class PoolConfig:
    name: str
    servers: tuple[ServerConfig, ...]
    selector: str = "roundrobin"
    selectorOptions: dict = field(default_factory=dict)
    retries: int = 2
    connectTimeout: float = 5.0
    #: How long a flow finding every usable server at its maxconn waits
    #: for one to free a slot; 0: no queue, refused at once.
    queueTimeout: float = 5.0
    #: Most flows waiting at once; 0: no limit but the listeners' maxconn.
    maxQueue: int = 0
    sendProxy: str = "none"
    health: HealthConfig | None = None
    # HTTP
    cookie: CookieConfig | None = None
    #: Idle keep-alive connections kept per server; 0 disables reuse.
    reuseMaxIdle: int = 16
    #: How long an idle backend connection is kept (shorter than the
    #: backend's own keep-alive timeout).
    reuseIdleTimeout: float = 15.0
    #: Time from the request sent to the response head received (504).
    responseTimeout: float = 30.0
    #: Longest silence from the server while a response body streams.
    serverTimeout: float = 60.0
    #: TLS to the servers; None: plaintext.
    tls: BackendTLSConfig | None = None
    #: Mail: how servers learn the client's address ("none", IMAP "id",
    #: POP3 "xclient"); the PROXY protocol is C{sendProxy}.
    clientAddress: str = "none"


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    bind: str
    pool: str
    mode: str = "tcp"
    maxconn: int = 10000
    idleTimeout: float = 300.0
    acceptProxy: tuple = ()
    # HTTP
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
    #: Time a client has to send a complete request head (408).
    requestTimeout: float = 10.0
    #: Idle time allowed between two requests of a keep-alive client.
    keepaliveTimeout: float = 60.0
    #: Idle time of an upgraded (WebSocket) tunnel.
    tunnelTimeout: float = 3600.0
    #: TLS termination; None: plaintext (or, for TCP listeners with SNI
    #: routes, TLS passed through untouched).
    tls: ListenerTLSConfig | None = None
    #: HTTP: answer every request with a redirect to https on this port
    #: instead of proxying it (the listener has no pool then).
    redirectHttps: int | None = None
    #: TCP with SNI routes: what a connection whose ClientHello is
    #: malformed or carries no server name gets: "default" (the listener's
    #: pool) or "reject" (closed).
    sniFallback: str = "default"
    #: TCP with SNI routes: time a client has to send its ClientHello.
    helloTimeout: float = 5.0
    #: IMAP and POP3 listeners only.
    mail: MailListenerConfig | None = None
    #: Listen with IP_FREEBIND (L{lbproxy.sockets}): on by default for a
    #: listener bound to a virtual address of C{[ha]}.
    freebind: bool = False

    def poolsUsed(self) -> set[str]:
        """
        The names of every pool this listener can send flows to.
        """
        used = {route.pool for route in self.routes}
        if self.pool:
            used.add(self.pool)
        if self.mail is not None:
            used.update(pool for _, pool in self.mail.userPools)
        return used

    def trustsProxyFrom(self, host: str) -> bool:
        """
        Whether a PROXY protocol header is expected from C{host}.
        """
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.acceptProxy)


@dataclass(frozen=True)
class Config:
    source: str
    listeners: dict[str, ListenerConfig]
    pools: dict[str, PoolConfig]
    #: C{[ha]}: this node's part in an active/passive pair; None: alone.
    ha: HAConfig | None = None


def loadFile(path: str) -> Config:
    """
    Read and validate the config file at C{path}.

    @raise ConfigError: for any problem, with a one-line message.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(path, "", f"cannot read config file: {e.strerror}")
    return loadBytes(raw, path)


def loadBytes(raw: bytes, source: str) -> Config:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(source, "", f"expected UTF-8 text, got {e.reason}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "", f"TOML syntax error: {e}")
    return parse(data, source)


def parse(data: dict, source: str) -> Config:
    """
    Validate an already-decoded TOML document.
    """
    root = Table(data, "", source)
    poolsTable = root.table("pools", required=True)
    pools = {}
    for name in poolsTable.keys():
        pools[name] = _parsePool(poolsTable.table(name, required=True), name)
    if not pools:
        raise ConfigError(source, "pools", "expected at least one pool")
    haTable = root.table("ha")
    ha = parseHA(haTable, pools) if haTable.present else None
    listenersTable = root.table("listeners", required=True)
    listeners = {}
    for name in listenersTable.keys():
        listeners[name] = _parseListener(
            listenersTable.table(name, required=True), name, pools, ha
        )
    if not listeners:
        raise ConfigError(source, "listeners", "expected at least one listener")
    _checkHTTPPoolSettings(source, pools, listeners)
    root.done()
    return Config(source=source, listeners=listeners, pools=pools, ha=ha)


#: Listener keys each mode takes beyond bind, pool, mode, maxconn,
#: accept_proxy, tls and timeouts.idle.
_MODE_KEYS = {
    "tcp": ("routes", "sni_fallback"),
    "http": ("routes", "trusted_proxies", "forwarded", "access_log", "log_requests", "limits", "redirect_https"),
    "imap": ("tls_required", "user_pools", "user_domain", "limits", "auth"),
    "pop3": ("tls_required", "user_pools", "user_domain", "limits", "auth"),
}
_MODE_TIMEOUTS = {
    "tcp": ("hello",),
    "http": ("request", "keepalive", "tunnel"),
    "imap": ("login",),
    "pop3": ("login",),
}


def _modesTaking(key: str, table: dict) -> str:
    modes = [f'"{mode}"' for mode in MODES if key in table[mode]]
    return " or ".join(modes)


def _parseListener(t: Table, name: str, pools: dict, ha: HAConfig | None = None) -> ListenerConfig:
    t.checkName(name)
    bind = t.endpoint("bind", server=True, required=True)
    tcp = tcpBind(bind)
    freebind = t.boolean("freebind", tcp is not None and ha is not None and ha.isVirtual(tcp[1]))
    if freebind and tcp is None:
        t.fail("freebind", f'expected only on a "tcp:" or "tcp6:" listener, got bind = {bind!r}')
    mode = t.choice("mode", MODES, "tcp")
    for key in sorted(set().union(*_MODE_KEYS.values()) - set(_MODE_KEYS[mode])):
        if key in t.data:
            t.fail(key, f"expected only with mode = {_modesTaking(key, _MODE_KEYS)}")
    timeouts = t.table("timeouts")
    for key in sorted(set().union(*_MODE_TIMEOUTS.values()) - set(_MODE_TIMEOUTS[mode])):
        if key in timeouts.data:
            timeouts.fail(key, f"expected only with mode = {_modesTaking(key, _MODE_TIMEOUTS)}")
    redirect = None
    if "redirect_https" in t.data:
        redirect = t.integer("redirect_https", 1, 65535, 443)
        for key in ("pool", "routes", "tls"):
            if key in t.data:
                t.fail(key, "expected no pool, routes or tls with redirect_https (every request is redirected)")
        for key in ("trusted_proxies", "forwarded"):
            if key in t.data:
                t.fail(key, "expected no forwarding settings with redirect_https (no request is forwarded)")
        if "tunnel" in timeouts.data:
            timeouts.fail("tunnel", "expected no tunnel timeout with redirect_https (no request is forwarded)")
        pool = ""
    else:
        pool = t.string("pool", required=True)
        if pool not in pools:
            t.fail("pool", f"expected the name of a pool ({oneOf(pools)}), got {pool!r}")
    tlsTable = t.table("tls")
    tls = parseListenerTLS(tlsTable, mode) if tlsTable.present else None
    kwargs: dict[str, Any] = dict(
        name=name,
        bind=bind,
        pool=pool,
        mode=mode,
        maxconn=t.integer("maxconn", 0, 1_000_000, 10000),
        idleTimeout=timeouts.duration("idle", MAIL_IDLE_TIMEOUT if mode in MAIL_MODES else 300.0),
        acceptProxy=t.networks("accept_proxy"),
        tls=tls,
        redirectHttps=redirect,
        freebind=freebind,
    )
    if mode in ("tcp", "http"):
        kwargs["routes"] = tuple(
            _parseRoute(t.tableAt("routes", index, item), pools, mode)
            for index, item in enumerate(t.list("routes"))
        )
    if mode == "tcp":
        if kwargs["routes"] and tls is not None:
            t.fail("routes", "expected either SNI routes (TLS passed through) or a [tls] table (TLS terminated), not both")
        if "sni_fallback" in t.data and not kwargs["routes"]:
            t.fail("sni_fallback", "expected only with SNI routes")
        if "hello" in timeouts.data and not kwargs["routes"]:
            timeouts.fail("hello", "expected only with SNI routes")
        kwargs.update(
            sniFallback=t.choice("sni_fallback", SNI_FALLBACK, "default"),
            helloTimeout=timeouts.duration("hello", 5.0),
        )
    elif mode == "http":
        limits = t.table("limits")
        kwargs.update(
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
        )
        limits.done()
        if kwargs["accessLog"] is not None and not kwargs["accessLog"]:
            t.fail("access_log", "expected a file path, got ''")
    else:
        kwargs["mail"] = parseMailListener(
            t, timeouts, pools, None if tls is None else tls.starttls
        )
    listener = ListenerConfig(**kwargs)
    for used in sorted(listener.poolsUsed()):
        _checkPoolFits(t, used, pools[used], mode)
        if mode == "tcp" and not listener.routes and pools[used].selectorOptions.get("key") == "sni":
            t.fail(
                "pool",
                f"pool {used!r} hashes on key 'sni', which only a TCP listener with "
                "SNI routes provides",
            )
    timeouts.done()
    t.done()
    return listener


#: Pool settings only the HTTP data path applies: (key path, PoolConfig field).
_HTTP_POOL_SETTINGS = (
    ("reuse.max_idle", "reuseMaxIdle"),
    ("reuse.idle_timeout", "reuseIdleTimeout"),
    ("timeouts.response", "responseTimeout"),
    ("timeouts.server", "serverTimeout"),
)


def _checkHTTPPoolSettings(source: str, pools: dict, listeners: dict) -> None:
    """
    Refuse HTTP-only settings on a pool that only TCP listeners use, where
    they would do nothing.
    """
    httpPools = set()
    tcpPools = set()
    for listener in listeners.values():
        used = listener.poolsUsed()
        (httpPools if listener.mode == "http" else tcpPools).update(used)
    defaults = PoolConfig.__dataclass_fields__
    for name in sorted(tcpPools - httpPools):
        for key, attribute in _HTTP_POOL_SETTINGS:
            if getattr(pools[name], attribute) != defaults[attribute].default:
                raise ConfigError(
                    source,
                    f"pools.{name}.{key}",
                    'expected only in a pool used by a mode = "http" listener '
                    "(TCP listeners do not apply it)",
                )


def _checkPoolFits(t: Table, name: str, pool: PoolConfig, mode: str) -> None:
    """
    Refuse a pool whose settings a listener of C{mode} cannot apply.
    """
    key = pool.selectorOptions.get("key")
    if isinstance(key, str) and not keySupported(mode, key):
        t.fail(
            "pool",
            f"pool {name!r} hashes on key {key!r}, which a {mode} listener "
            f"cannot provide; expected {oneOf(KEYS.get(mode, ()))}",
        )
    if mode == "http" and pool.sendProxy != "none" and pool.reuseMaxIdle:
        t.fail(
            "pool",
            f"pool {name!r} sends the PROXY protocol on reused backend connections, "
            "which would announce one client's address for another's requests; "
            "expected reuse.max_idle = 0 or send_proxy = \"none\"",
        )
    if pool.tls is not None and pool.tls.starttls and mode not in MAIL_MODES:
        t.fail(
            "pool",
            f"pool {name!r} upgrades server connections with STARTTLS, which only "
            'IMAP and POP3 listeners do; expected mode = "imap" or "pop3"',
        )
    if pool.clientAddress not in CLIENT_ADDRESS.get(mode, ("none",)):
        t.fail(
            "pool",
            f"pool {name!r} passes the client address with {pool.clientAddress!r}, "
            f"which a {mode} listener cannot send; expected "
            + oneOf(CLIENT_ADDRESS.get(mode, ("none",))),
        )
    if mode != "http" and pool.cookie is not None:
        t.fail(
            "pool",
            f"pool {name!r} has cookie persistence, which only an HTTP listener "
            'can apply; expected mode = "http" or a pool without cookie',
        )


def _parseRoute(t: Table, pools: dict, mode: str) -> RouteConfig:
    pool = t.string("pool", required=True)
    if pool not in pools:
        t.fail("pool", f"expected the name of a pool ({oneOf(pools)}), got {pool!r}")
    if mode == "tcp":
        return _parseSNIRoute(t, pool)
    if "sni" in t.data:
        t.fail("sni", 'expected only in routes of a mode = "tcp" listener (HTTP routes match host)')
    host = t.string("host", default=None)
    if host is not None:
        if not _ROUTE_HOST.fullmatch(host.lower()):
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
        # Paths are bytes as received (never decoded): compile to match bytes.
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


def _parseSNIRoute(t: Table, pool: str) -> RouteConfig:
    for key in ("host", "path_prefix", "path_regex", "header", "methods"):
        if key in t.data:
            t.fail(key, 'expected only in routes of a mode = "http" listener (TCP routes match sni)')
    value = t.get("sni", required=True)
    names = value if isinstance(value, list) else [value]
    if not names:
        t.fail("sni", "expected at least one server name")
    for name in names:
        if not isinstance(name, str) or not _ROUTE_HOST.fullmatch(name.lower()):
            t.fail("sni", f'expected a server name such as "www.example.com" or "*.example.com", or an array of them, got {show(name)}')
    t.done()
    return RouteConfig(pool=pool, sni=tuple(name.lower() for name in names))


def _parsePool(t: Table, name: str) -> PoolConfig:
    t.checkName(name)
    selectorName, selectorOptions = _parseSelector(t)
    timeouts = t.table("timeouts")
    serversList = t.list("servers", required=True)
    servers = []
    names = set()
    for index, item in enumerate(serversList):
        st = t.tableAt("servers", index, item)
        server = _parseServer(st)
        if server.name in names:
            st.fail("name", f"expected a name unique in the pool, got {server.name!r} again")
        names.add(server.name)
        servers.append(server)
    if not servers:
        t.fail("servers", "expected at least one server")
    cookies = set()
    for index, server in enumerate(servers):
        if server.cookie in cookies:
            raise ConfigError(
                t.source,
                f"{t._key('servers')}[{index}].cookie",
                f"expected a cookie value unique in the pool, got {server.cookie!r} again",
            )
        cookies.add(server.cookie)
    health = t.table("health")
    cookie = t.table("cookie")
    reuse = t.table("reuse")
    tls = t.table("tls")
    backendTLS = parseBackendTLS(tls) if tls.present else None
    pool = PoolConfig(
        name=name,
        servers=tuple(servers),
        selector=selectorName,
        selectorOptions=selectorOptions,
        retries=t.integer("retries", 0, 100, 2),
        connectTimeout=timeouts.duration("connect", 5.0),
        queueTimeout=timeouts.duration("queue", timeouts.duration("connect", 5.0), allowZero=True),
        maxQueue=t.integer("max_queue", 0, 1_000_000, 0),
        sendProxy=t.choice("send_proxy", PROXY_PROTOCOL_VERSIONS, "none"),
        health=_parseHealth(health, backendTLS is not None) if health.present else None,
        cookie=_parseCookie(cookie) if cookie.present else None,
        reuseMaxIdle=reuse.integer("max_idle", 0, 10000, 16),
        reuseIdleTimeout=reuse.duration("idle_timeout", 15.0),
        responseTimeout=timeouts.duration("response", 30.0),
        serverTimeout=timeouts.duration("server", 60.0),
        tls=backendTLS,
        clientAddress=t.choice("client_address", ("none", "id", "xclient"), "none"),
    )
    if "idle_timeout" in reuse.data and not pool.reuseMaxIdle:
        reuse.fail("idle_timeout", "expected only with max_idle above 0 (no connection is kept idle)")
    reuse.done()
    timeouts.done()
    t.done()
    return pool


def _parseCookie(t: Table) -> CookieConfig:
    name = t.string("name", required=True)
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}", name):
        t.fail("name", f"expected a cookie name (letters, digits, and !#$%&'*+.^_`|~-), got {name!r}")
    path = t.string("path", default="/")
    if not path.startswith("/") or not _COOKIE_ATTRIBUTE.fullmatch(path):
        t.fail("path", f"expected a path starting with /, got {path!r}")
    domain = t.string("domain", default=None)
    if domain is not None and not re.fullmatch(r"\.?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", domain):
        t.fail("domain", f'expected a domain such as "example.com", got {domain!r}')
    cookie = CookieConfig(
        name=name,
        indirect=t.boolean("indirect", True),
        nocache=t.boolean("nocache", True),
        httponly=t.boolean("httponly", True),
        secure=t.boolean("secure", False),
        path=path,
        domain=domain,
        maxidle=t.optionalDuration("maxidle"),
        maxlife=t.optionalDuration("maxlife"),
    )
    for key in ("maxidle", "maxlife"):
        seconds = getattr(cookie, key)
        if seconds is not None and seconds < 1:
            t.fail(key, f"expected at least 1s (cookie dates are whole seconds), got {show(t.data[key])}")
    t.done()
    return cookie


def _parseSelector(t: Table) -> tuple[str, dict]:
    value = t.get("selector", "roundrobin")
    if isinstance(value, str):
        selectorName, options, keyPath = value, {}, "selector"
    elif isinstance(value, dict):
        options = dict(value)
        selectorName = options.pop("name", None)
        keyPath = "selector.name"
        if not isinstance(selectorName, str):
            t.fail(keyPath, f"expected a selector name, got {show(selectorName)}")
    else:
        t.fail("selector", f"expected a selector name or table, got {show(value)}")
    plugin = findSelector(selectorName)
    if plugin is None:
        t.fail(
            keyPath,
            f"expected a selector ({oneOf(selectorNames())}), got {selectorName!r}",
        )
    try:
        plugin.build(options)
    except OptionError as e:
        t.fail("selector" + (f".{e.key}" if e.key else ""), e.message)
    return selectorName, options


def _parseServer(t: Table) -> ServerConfig:
    name = t.string("name", required=True)
    t.checkName(name, "name")
    cookie = t.string("cookie", default=name)
    if not _COOKIE_VALUE.fullmatch(cookie):
        t.fail("cookie", f"expected a cookie value of letters, digits, '_', '.' or '-' (at most 64), got {cookie!r}")
    server = ServerConfig(
        name=name,
        address=t.endpoint("address", server=False, required=True),
        weight=t.integer("weight", 0, 256, 1),
        backup=t.boolean("backup", False),
        maxconn=t.integer("maxconn", 0, 1_000_000, 0),
        cookie=cookie,
    )
    t.done()
    return server


def _parseHealth(t: Table, poolTLS: bool) -> HealthConfig:
    kind = t.choice("type", HEALTH_TYPES, "tcp")
    tls = t.boolean("tls", poolTLS)
    if tls and not poolTLS:
        t.fail("tls", "expected false in a pool without a [tls] table (there are no TLS settings to check with)")
    kwargs: dict[str, Any] = dict(
        type=kind,
        tls=tls,
        interval=t.duration("interval", 2.0),
        timeout=t.duration("timeout", 1.0),
        rise=t.integer("rise", 1, 100, 2),
        fall=t.integer("fall", 1, 100, 3),
        passiveFall=t.integer("passive_fall", 0, 100, 3),
    )
    if kind == "http":
        kwargs.update(
            method=t.choice("method", HTTP_METHODS, "GET"),
            path=t.string("path", default="/"),
            host=t.string("host", default=None),
            expectStatus=t.statusRanges("expect_status", ((200, 399),)),
        )
        if not kwargs["path"].startswith("/") or any(
            c.isspace() for c in kwargs["path"]
        ):
            t.fail("path", f"expected a path starting with /, got {kwargs['path']!r}")
        if kwargs["host"] is not None and not re.fullmatch(r"[!-~]+", kwargs["host"]):
            t.fail("host", f'expected a host name such as "www.example.com", got {kwargs["host"]!r}')
    elif kind == "banner":
        kwargs.update(
            expect=t.string("expect", required=True).encode("utf-8"),
            send=t.string("send", default="").encode("utf-8"),
        )
    health = HealthConfig(**kwargs)
    if health.timeout > health.interval:
        t.fail("timeout", f"expected at most the interval ({health.interval:g}s), got {health.timeout:g}s")
    t.done()
    return health


