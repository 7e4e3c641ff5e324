"""
The TOML configuration: loading, validation and the resulting model.

Every problem becomes one L{ConfigError} whose text names the file, the key
path and what was expected, e.g.::

    lb.toml: pools.web.servers[1].weight: expected an integer from 0 to 256, got "x"

The model is plain frozen dataclasses; L{lbproxy.core.model} turns it into
live pools and servers.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from lbproxy.config.admin import AdminConfig, DaemonConfig, parseAdmin, parseDaemon
from lbproxy.config.endpoints import checkOverlaps
from lbproxy.config.ha import HAConfig, parseHA
from lbproxy.config.stick import StickConfig, parseStick, settleReplication
from lbproxy.config.table import Table, oneOf, show
from lbproxy.config.workers import checkWorkerListeners, parseWorkers, settleWorkerStick
from lbproxy.config.tls import (
    BackendTLSConfig,
    ListenerTLSConfig,
    parseBackendTLS,
    parseListenerTLS,
)
from lbproxy.errors import ConfigError, OptionError
from lbproxy.selectors import findSelector, selectorNames
from lbproxy.sockets import tcpBind

PROXY_PROTOCOL_VERSIONS = ("none", "v1", "v2")
#: Which client connections an idle HTTP backend connection may serve
#: (HAProxy's http-reuse): only the one that used it, any but for a
#: client's first request, any.
REUSE_MODES = ("never", "safe", "always")
#: What an HTTP pool speaks to its servers: HTTP/1.1, or HTTP/2 ("h2":
#: prior knowledge in cleartext, ALPN h2 with the pool's TLS).
POOL_PROTOCOLS = ("http/1.1", "h2")
#: The most streams lbproxy opens at once on one HTTP/2 server connection
#: by default (fewer if the server's SETTINGS_MAX_CONCURRENT_STREAMS says so).
DEFAULT_MAX_STREAMS = 100
HEALTH_TYPES = ("tcp", "http", "banner", "grpc")
HTTP_METHODS = ("GET", "HEAD", "OPTIONS")
#: How a pool's servers learn the client's address besides the PROXY
#: protocol: IMAP's ID command, POP3's XCLIENT (see the mail fronts).
CLIENT_ADDRESSES = ("none", "id", "xclient")
#: What a mail pool's servers hold (its C{stores} key): by default each
#: user's mailbox on one of them ("distinct"), or every mailbox on every
#: one ("replicas", a shared or replicated store).
STORES_DISTINCT = "distinct"
STORES_REPLICAS = "replicas"
STORES = (STORES_DISTINCT, STORES_REPLICAS)
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_COOKIE_ATTRIBUTE = re.compile(r"[\x21-\x3a\x3c-\x7e]{1,256}")


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
    # grpc: the grpc.health.v1 service name asked about ("": the server);
    # host (above) is its :authority.
    service: str = ""
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
    #: Which client connections an idle one may serve (REUSE_MODES).
    reuseMode: str = "safe"
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
    #: Mail: "distinct" (each user's mailbox on one server, the default
    #: for a mail pool) or "replicas" (every mailbox on every server);
    #: None when not set.
    stores: str | None = None
    #: The stick table (L{lbproxy.config.stick}); None: none.
    stick: StickConfig | None = None
    #: HTTP: what the servers speak (POOL_PROTOCOLS).
    protocol: str = "http/1.1"
    #: HTTP/2 pools: most streams open at once on one server connection
    #: (the server's SETTINGS_MAX_CONCURRENT_STREAMS when lower).
    maxStreams: int = DEFAULT_MAX_STREAMS


@dataclass(frozen=True)
class ListenerConfig:
    """
    What every listener has, whatever its mode; each mode's front adds its
    own settings in a subclass (L{lbproxy.interfaces.IFrontPlugin}).

    @ivar pool: the pool its flows go to ("" for a listener without one).
    @ivar acceptProxy: the networks whose connections start with a PROXY
        protocol header.
    @ivar tls: TLS termination; None: plaintext.
    """

    name: str
    bind: str
    pool: str
    mode: str = "tcp"
    maxconn: int = 10000
    idleTimeout: float = 300.0
    acceptProxy: tuple = ()
    tls: ListenerTLSConfig | None = None
    #: Listen with IP_FREEBIND (L{lbproxy.sockets}): on by default for a
    #: listener bound to a virtual address of C{[ha]}.
    freebind: bool = False

    def poolsUsed(self) -> set[str]:
        """
        The names of every pool this listener can send flows to.
        """
        return {self.pool} if self.pool else set()

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
    #: C{[admin]}: the admin listener; None: off.
    admin: AdminConfig | None = None
    #: C{[daemon]}: how the daemon stops.
    daemon: DaemonConfig = DaemonConfig()
    #: C{workers}: the processes serving the listeners (L{lbproxy.workers});
    #: 1: this process alone.
    workers: int = 1


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
        # tomllib names a table as a Python tuple: ('pools', 'web').
        text = re.sub(r"\(((?:'[^']*', )*'[^']*'),?\)", lambda m: ".".join(re.findall(r"'([^']*)'", m.group(1))), str(e))
        raise ConfigError(source, "", f"TOML syntax error: {text}")
    return parse(data, source)


def parse(data: dict, source: str) -> Config:
    """
    Validate an already-decoded TOML document.
    """
    root = Table(data, "", source)
    workers = parseWorkers(root)
    poolsTable = root.table("pools", required=True)
    pools = {}
    for name in poolsTable.keys():
        pools[name] = _parsePool(poolsTable.table(name, required=True), name)
    if not pools:
        raise ConfigError(source, "pools", "expected at least one pool")
    haTable = root.table("ha")
    ha = parseHA(haTable, pools) if haTable.present else None
    pools = settleReplication(source, settleWorkerStick(source, workers, pools), ha)
    listenersTable = root.table("listeners", required=True)
    listeners = {}
    for name in listenersTable.keys():
        listeners[name] = _parseListener(
            listenersTable.table(name, required=True), name, pools, ha
        )
    if not listeners:
        raise ConfigError(source, "listeners", "expected at least one listener")
    adminTable = root.table("admin")
    admin = parseAdmin(adminTable) if adminTable.present else None
    daemon = parseDaemon(root.table("daemon"))
    binds = [(f"listeners.{name}.bind", listener.bind) for name, listener in listeners.items()]
    if admin is not None:
        binds.append(("admin.bind", admin.bind))
    checkOverlaps(source, binds)
    checkWorkerListeners(source, workers, listeners)
    _checkModePoolSettings(source, pools, listeners)
    root.done()
    return Config(
        source=source, listeners=listeners, pools=pools, ha=ha, admin=admin, daemon=daemon, workers=workers
    )


#: Keys every listener has; the rest of its table belongs to its mode.
COMMON_KEYS = ("bind", "mode", "pool", "maxconn", "accept_proxy", "freebind", "tls", "timeouts")


def _parseListener(t: Table, name: str, pools: dict, ha: HAConfig | None = None) -> ListenerConfig:
    from lbproxy.modes import allModes, keySpecIn, modesWhere

    t.checkName(name)
    modes = allModes()
    bind = t.endpoint("bind", server=True, required=True)
    tcp = tcpBind(bind)
    freebind = t.boolean("freebind", tcp is not None and ha is not None and ha.isVirtual(tcp[1]))
    if freebind and tcp is None:
        t.fail("freebind", f'expected only on a "tcp:" or "tcp6:" listener, got bind = {bind!r}')
    modeName = t.choice("mode", tuple(modes), "tcp")
    mode = modes[modeName]
    timeouts = t.table("timeouts")
    for key in sorted(set(t.data) - set(COMMON_KEYS) - set(mode.listenerKeys)):
        taking = modesWhere(lambda m: key in m.listenerKeys)
        if taking:
            t.fail(key, f"expected only with mode = {taking}")
    for key in sorted(set(timeouts.data) - {"idle"} - set(mode.timeoutKeys)):
        taking = modesWhere(lambda m: key in m.timeoutKeys)
        if taking:
            timeouts.fail(key, f"expected only with mode = {taking}")
    pool = t.string("pool", default="")
    if pool and pool not in pools:
        t.fail("pool", f"expected the name of a pool ({oneOf(pools)}), got {pool!r}")
    tlsTable = t.table("tls")
    common: dict[str, Any] = dict(
        name=name,
        bind=bind,
        pool=pool,
        mode=modeName,
        maxconn=t.integer("maxconn", 0, 1_000_000, 10000),
        idleTimeout=timeouts.duration("idle", mode.idleTimeout),
        acceptProxy=t.networks("accept_proxy"),
        freebind=freebind,
        tls=parseListenerTLS(tlsTable, mode.tlsRules, modeName) if tlsTable.present else None,
    )
    listener = mode.parseListener(t, timeouts, common, pools)
    for used in sorted(listener.poolsUsed()):
        poolConfig = pools[used]
        keys = (
            ("hashes on", poolConfig.selectorOptions.get("key")),
            ("sticks on", poolConfig.stick.on if poolConfig.stick is not None else None),
        )
        for what, key in keys:
            if isinstance(key, str) and not keySpecIn(mode.selectionKeys, key):
                kinds = sorted(k + "NAME" if k.endswith(":") else k for k in mode.selectionKeys)
                t.fail(
                    "pool",
                    f"pool {used!r} {what} key {key!r}, which a {modeName} listener "
                    f"cannot provide; expected {oneOf(kinds)}",
                )
        _checkStrictPoolSettings(t, modes, mode, used, poolConfig)
        mode.checkPool(t, listener, used, poolConfig)
    timeouts.done()
    t.done()
    return listener


def _poolSettings(modes) -> dict:
    """
    Every mode-specific pool setting by key: the setting and the modes that
    apply it.
    """
    settings: dict = {}
    for mode in modes.values():
        for setting in mode.poolSettings:
            settings.setdefault(setting.key, (setting, []))[1].append(mode.name)
    return settings


def _checkStrictPoolSettings(t: Table, modes, mode, name: str, pool: PoolConfig) -> None:
    """
    Refuse a pool with a strict setting (L{lbproxy.modes.PoolSetting}) that
    C{mode} does not apply: its listener would serve the pool wrongly.
    """
    own = {setting.key for setting in mode.poolSettings}
    for key, (setting, applying) in sorted(_poolSettings(modes).items()):
        if setting.strict and key not in own and setting.isSet(pool):
            expected = " or ".join(f'"{m}"' for m in sorted(applying))
            t.fail(
                "pool",
                f"pool {name!r} {setting.what or 'sets ' + key} ({key}), which a {mode.name} listener "
                f"does not do; expected mode = {expected}, or a pool without {key}",
            )


def _checkModePoolSettings(source: str, pools: dict, listeners: dict) -> None:
    """
    Refuse a mode-specific pool setting on a pool that no listener applying
    it uses, where it would do nothing.
    """
    from lbproxy.modes import allModes

    modes = allModes()
    applied: dict[str, set[str]] = {}
    for listener in listeners.values():
        keys = {setting.key for setting in modes[listener.mode].poolSettings}
        for used in listener.poolsUsed():
            applied.setdefault(used, set()).update(keys)
    for key, (setting, applying) in sorted(_poolSettings(modes).items()):
        expected = " or ".join(f'"{m}"' for m in sorted(applying))
        for name in sorted(pools):
            if setting.isSet(pools[name]) and key not in applied.get(name, ()):
                raise ConfigError(
                    source,
                    f"pools.{name}.{key}",
                    f"expected only in a pool used by a mode = {expected} listener "
                    "(no listener using this pool applies it)",
                )


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
    stick = t.table("stick")
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
        reuseMode=reuse.choice("mode", REUSE_MODES, "safe"),
        reuseIdleTimeout=reuse.duration("idle_timeout", 15.0),
        responseTimeout=timeouts.duration("response", 30.0),
        serverTimeout=timeouts.duration("server", 60.0),
        tls=backendTLS,
        clientAddress=t.choice("client_address", CLIENT_ADDRESSES, "none"),
        stores=t.choice("stores", STORES, None) if "stores" in t.data else None,
        stick=parseStick(stick) if stick.present else None,
        protocol=t.choice("protocol", POOL_PROTOCOLS, "http/1.1"),
        maxStreams=t.integer("max_streams", 1, 10000, DEFAULT_MAX_STREAMS),
    )
    _checkHTTP2Pool(t, reuse, pool)
    for key in ("idle_timeout", "mode"):
        if key in reuse.data and not pool.reuseMaxIdle:
            reuse.fail(key, "expected only with max_idle above 0 (no connection is kept idle)")
    reuse.done()
    timeouts.done()
    t.done()
    return pool


def _checkHTTP2Pool(t: Table, reuse: Table, pool: PoolConfig) -> None:
    """
    Refuse what an HTTP/2 pool cannot apply, and HTTP/2 settings on an
    HTTP/1.1 pool.
    """
    if pool.protocol != "h2":
        if "max_streams" in t.data:
            t.fail("max_streams", 'expected only with protocol = "h2" (HTTP/1.1 carries one request per connection)')
        return
    if pool.sendProxy != "none":
        t.fail(
            "send_proxy",
            'expected "none" with protocol = "h2": streams of many clients share a server '
            "connection, whose PROXY header could name only one",
        )
    if "mode" in reuse.data:
        reuse.fail("mode", 'expected no reuse.mode with protocol = "h2": streams of any client share the server connections')
    if "max_idle" in reuse.data:
        reuse.fail(
            "max_idle",
            'expected no reuse.max_idle with protocol = "h2": each server keeps the connections its streams '
            "need, closed after reuse.idle_timeout without a stream",
        )
    if pool.tls is not None and pool.tls.starttls:
        t.fail("tls.starttls", 'expected false with protocol = "h2" (HTTP/2 starts with TLS or not at all)')


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


def parseServer(data: dict, path: str, source: str) -> ServerConfig:
    """
    A server's settings from C{data} (a server table, or the admin API's
    JSON), checked as a config file's are.

    @raise ConfigError: naming C{path}'s key.
    """
    return _parseServer(Table(data, path, source))


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
    elif kind == "grpc":
        kwargs.update(
            host=t.string("host", default=None),
            service=t.string("service", default=""),
        )
        if kwargs["host"] is not None and not re.fullmatch(r"[!-~]+", kwargs["host"]):
            t.fail("host", f'expected a host name such as "grpc.example.com", got {kwargs["host"]!r}')
        if len(kwargs["service"]) > 1024 or any(c.isspace() or not c.isprintable() for c in kwargs["service"]):
            t.fail("service", f'expected a gRPC service name such as "helloworld.Greeter", got {kwargs["service"][:80]!r}')
    elif kind == "banner":
        kwargs.update(
            expect=t.string("expect", required=True).encode("utf-8"),
            send=t.string("send", default="").encode("utf-8"),
        )
    otherKeys = ("method", "path", "expect_status", "expect", "send") if kind == "grpc" else ("service",)
    for key in otherKeys:
        if key in t.data:
            t.fail(key, f'not used by a type = "{kind}" check')
    health = HealthConfig(**kwargs)
    if health.timeout > health.interval:
        t.fail("timeout", f"expected at most the interval ({health.interval:g}s), got {health.timeout:g}s")
    t.done()
    return health


