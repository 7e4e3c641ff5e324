"""
Tests for L{lbproxy.config}: every class of bad input gives one line naming
the file, the key path and what was expected; valid files give the model
with its defaults.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path

import pytest
from zope.interface import implementer

from lbproxy import config as configModule
from lbproxy.tcp.config import TCPListenerConfig
from lbproxy.config import (
    Config,
    HealthConfig,
    PoolConfig,
    ServerConfig,
    loadBytes,
    loadFile,
)
from lbproxy.errors import ConfigError
from lbproxy.interfaces import IBackendSelector
from lbproxy.selectors import findSelector, selectorNames
from lbproxy.selectors.base import SelectorPlugin

MINIMAL = """\
[listeners.web]
bind = "tcp:8080:interface=127.0.0.1"
pool = "web"

[pools.web]
servers = [{ name = "a", address = "127.0.0.1:8081" }]
"""


def loadError(text: str, source: str = "lb.toml") -> str:
    """
    The message of the L{ConfigError} that loading C{text} raises; it must
    be exactly one line.
    """
    with pytest.raises(ConfigError) as info:
        loadBytes(text.encode("utf-8"), source)
    message = str(info.value)
    assert "\n" not in message
    return message


def withPool(extra: str) -> str:
    """
    The minimal config with C{extra} lines added to the [pools.web] table.
    """
    return MINIMAL + extra


def withListener(extra: str) -> str:
    """
    The minimal config with C{extra} lines added to the [listeners.web]
    table.
    """
    return MINIMAL.replace('pool = "web"\n', 'pool = "web"\n' + extra, 1)


def withServer(fields: str) -> str:
    """
    The minimal config whose only server has C{fields} as its inline table
    body.
    """
    return MINIMAL.replace('name = "a", address = "127.0.0.1:8081"', fields)


EXPECTED_DURATION = 'expected a duration in seconds or a string such as "500ms", "5s", "2m"'
EXPECTED_STATUS = 'expected an array of statuses or ranges such as [200, "300-399"]'


# Syntax and file errors


def test_tomlSyntaxError():
    message = loadError("[listeners.web\n")
    assert re.fullmatch(
        r"lb\.toml: TOML syntax error: .+ \(at line 1, column \d+\)", message
    ), message


def test_duplicatePoolIsTomlSyntaxError():
    message = loadError(MINIMAL + '[pools.web]\nservers = []\n')
    assert re.fullmatch(
        r"lb\.toml: TOML syntax error: Cannot declare pools\.web twice "
        r"\(at line 7, column \d+\)",
        message,
    ), message


def test_duplicateListenerIsTomlSyntaxError():
    message = loadError(MINIMAL + '[listeners.web]\nbind = "tcp:1"\n')
    assert re.fullmatch(
        r"lb\.toml: TOML syntax error: Cannot declare listeners\.web twice "
        r"\(at line 7, column \d+\)",
        message,
    ), message


def test_notUtf8():
    with pytest.raises(ConfigError) as info:
        loadBytes(b"\xff", "lb.toml")
    assert str(info.value) == "lb.toml: expected UTF-8 text, got invalid start byte"


def test_missingFile(tmp_path):
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        loadFile(str(path))
    assert str(info.value) == f"{path}: cannot read config file: No such file or directory"


def test_loadFileNamesTheFile(tmp_path):
    """
    Errors found in a file name it as given on the command line.
    """
    path = tmp_path / "lb.toml"
    path.write_text(withPool("retries = -1\n"))
    with pytest.raises(ConfigError) as info:
        loadFile(str(path))
    assert str(info.value) == (
        f"{path}: pools.web.retries: expected an integer from 0 to 100, got -1"
    )


# Unknown keys


@pytest.mark.parametrize(
    "text, key",
    [
        ("frontends = 1\n" + MINIMAL, "frontends"),
        (withListener("port = 8080\n"), "listeners.web.port"),
        (withPool("algorithm = 'rr'\n"), "pools.web.algorithm"),
        (withServer('name = "a", address = "127.0.0.1:8081", host = "x"'), "pools.web.servers[0].host"),
        (withPool("[pools.web.health]\nurl = '/'\n"), "pools.web.health.url"),
        (withListener("[listeners.web.timeouts]\nread = 5\n"), "listeners.web.timeouts.read"),
        (withPool("[pools.web.timeouts]\nidle = 5\n"), "pools.web.timeouts.idle"),
    ],
)
def test_unknownKey(text, key):
    assert loadError(text) == f"lb.toml: {key}: unknown key"


def test_httpKeyInTcpCheck():
    """
    Keys of one health check type are unknown to the others.
    """
    text = withPool("[pools.web.health]\ntype = 'tcp'\npath = '/'\n")
    assert loadError(text) == "lb.toml: pools.web.health.path: unknown key"


# Types and ranges


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            withServer('name = "a", address = "127.0.0.1:8081", weight = "x"'),
            "pools.web.servers[0].weight: expected an integer from 0 to 256, got 'x'",
        ),
        (
            withServer('name = "a", address = "127.0.0.1:8081", backup = "yes"'),
            "pools.web.servers[0].backup: expected true or false, got 'yes'",
        ),
        (
            withServer('name = "a", address = "127.0.0.1:8081", weight = true'),
            "pools.web.servers[0].weight: expected an integer from 0 to 256, got true",
        ),
        (
            withServer('name = 7, address = "127.0.0.1:8081"'),
            "pools.web.servers[0].name: expected a string, got 7",
        ),
        (
            MINIMAL.replace("servers = [", "servers = 3 #"),
            "pools.web.servers: expected an array, got 3",
        ),
        (
            MINIMAL.replace('servers = [{ name = "a", address = "127.0.0.1:8081" }]', 'servers = ["a"]'),
            "pools.web.servers[0]: expected a table, got 'a'",
        ),
        (
            withListener("timeouts = 5\n"),
            "listeners.web.timeouts: expected a table, got 5",
        ),
        (
            withListener("mode = 'udp'\n"),
            "listeners.web.mode: expected one of http, imap, pop3, tcp, got 'udp'",
        ),
        (
            withPool("send_proxy = 'v3'\n"),
            "pools.web.send_proxy: expected one of none, v1, v2, got 'v3'",
        ),
        (
            withPool("[pools.web.health]\ntype = 'smtp'\n"),
            "pools.web.health.type: expected one of banner, grpc, http, tcp, got 'smtp'",
        ),
        (
            withListener("accept_proxy = '127.0.0.1'\n"),
            "listeners.web.accept_proxy: expected an array, got '127.0.0.1'",
        ),
    ],
)
def test_wrongType(text, expected):
    assert loadError(text) == f"lb.toml: {expected}"


def test_topLevelNotATable():
    assert loadError('pools = 3\n') == "lb.toml: pools: expected a table, got 3"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            withServer('name = "a", address = "127.0.0.1:8081", weight = 257'),
            "pools.web.servers[0].weight: expected an integer from 0 to 256, got 257",
        ),
        (
            withServer('name = "a", address = "127.0.0.1:8081", maxconn = -1'),
            "pools.web.servers[0].maxconn: expected an integer from 0 to 1000000, got -1",
        ),
        (
            withListener("maxconn = 1000001\n"),
            "listeners.web.maxconn: expected an integer from 0 to 1000000, got 1000001",
        ),
        (withPool("retries = 101\n"), "pools.web.retries: expected an integer from 0 to 100, got 101"),
        (
            withPool("[pools.web.health]\nrise = 0\n"),
            "pools.web.health.rise: expected an integer from 1 to 100, got 0",
        ),
        (
            withPool("[pools.web.health]\npassive_fall = 101\n"),
            "pools.web.health.passive_fall: expected an integer from 0 to 100, got 101",
        ),
    ],
)
def test_outOfRange(text, expected):
    assert loadError(text) == f"lb.toml: {expected}"


def test_badName():
    text = withServer('name = "a b", address = "127.0.0.1:8081"')
    assert loadError(text) == (
        "lb.toml: pools.web.servers[0].name: expected a name of letters, digits, "
        "'_', '.' or '-' (at most 64), got 'a b'"
    )


# Selectors


def test_unknownSelector():
    text = withPool('selector = "fastest"\n')
    names = ", ".join(selectorNames())
    assert loadError(text) == (
        f"lb.toml: pools.web.selector: expected a selector (one of {names}), got 'fastest'"
    )


def test_unknownSelectorInTable():
    text = withPool('selector = { name = "fastest" }\n')
    assert loadError(text).startswith(
        "lb.toml: pools.web.selector.name: expected a selector (one of "
    )


def test_selectorTableWithoutName():
    text = withPool("selector = { key = 'src' }\n")
    assert loadError(text) == "lb.toml: pools.web.selector.name: expected a selector name, got None"


def test_selectorWrongType():
    text = withPool("selector = 3\n")
    assert loadError(text) == "lb.toml: pools.web.selector: expected a selector name or table, got 3"


def test_badSelectorOption():
    text = withPool('selector = { name = "roundrobin", weights = 1 }\n')
    known = ", ".join(sorted(findSelector("roundrobin").options)) or "none"
    assert loadError(text) == (
        "lb.toml: pools.web.selector.weights: unknown option of selector "
        f"'roundrobin' (known: {known})"
    )


@implementer(IBackendSelector)
class _KeyedSelector:
    def __init__(self, key: str) -> None:
        self.key = key

    def pick(self, servers, context):
        return servers[0] if servers else None


def _keyed(value):
    if not isinstance(value, str):
        raise ValueError(f"expected a key, got {value!r}")
    return value


def test_badSelectorOptionValue(monkeypatch):
    """
    A plugin's own complaint about an option value is prefixed with the
    option's key path.
    """
    plugin = SelectorPlugin("keyed", "test", _KeyedSelector, {"key": ("src", _keyed)})
    monkeypatch.setattr(configModule, "findSelector", {"keyed": plugin}.get)
    text = withPool('selector = { name = "keyed", key = 3 }\n')
    assert loadError(text) == "lb.toml: pools.web.selector.key: expected a key, got 3"


def test_keyNotSupportedByMode(monkeypatch):
    """
    A pool hashing on a key its listener's mode cannot provide is refused
    at the listener.
    """
    plugin = SelectorPlugin("keyed", "test", _KeyedSelector, {"key": ("src", _keyed)})
    monkeypatch.setattr(configModule, "findSelector", {"keyed": plugin}.get)
    text = withPool('selector = { name = "keyed", key = "header:Host" }\n')
    assert loadError(text) == (
        "lb.toml: listeners.web.pool: pool 'web' hashes on key 'header:Host', "
        "which a tcp listener cannot provide; expected one of 5tuple, dst, sni, src, src_port"
    )


# Endpoints and addresses: see test_config_messages.py


def test_acceptProxyNotAString():
    text = withListener("accept_proxy = [10]\n")
    assert loadError(text) == (
        "lb.toml: listeners.web.accept_proxy[0]: expected an address or network "
        'such as "127.0.0.1" or "10.0.0.0/8", got 10'
    )


def test_invalidAcceptProxyNetwork():
    text = withListener('accept_proxy = ["127.0.0.1", "banana"]\n')
    assert loadError(text) == (
        "lb.toml: listeners.web.accept_proxy[1]: expected an address or network "
        'such as "127.0.0.1" or "10.0.0.0/8", got \'banana\''
    )


def test_acceptProxyNotAnAddress():
    text = withListener('accept_proxy = ["10.0.0.0/33"]\n')
    assert loadError(text).startswith("lb.toml: listeners.web.accept_proxy[0]: expected an address")


# Structure


def test_duplicateServerNames():
    text = MINIMAL.replace(
        '{ name = "a", address = "127.0.0.1:8081" }',
        '{ name = "a", address = "127.0.0.1:8081" }, { name = "a", address = "127.0.0.1:8082" }',
    )
    assert loadError(text) == (
        "lb.toml: pools.web.servers[1].name: expected a name unique in the pool, got 'a' again"
    )


def test_undefinedPool():
    text = MINIMAL.replace('pool = "web"', 'pool = "api"')
    assert loadError(text) == "lb.toml: listeners.web.pool: expected the name of a pool (one of web), got 'api'"


@pytest.mark.parametrize(
    "text, key",
    [
        (MINIMAL.split("[pools.web]")[0], "pools"),
        ("[pools.web]\nservers = [{ name = 'a', address = '127.0.0.1:1' }]\n", "listeners"),
        (MINIMAL.replace('bind = "tcp:8080:interface=127.0.0.1"\n', ""), "listeners.web.bind"),
        (MINIMAL.replace('pool = "web"\n', ""), "listeners.web.pool"),
        (MINIMAL.replace('servers = [{ name = "a", address = "127.0.0.1:8081" }]\n', ""), "pools.web.servers"),
        (withServer('name = "a"'), "pools.web.servers[0].address"),
        (withServer('address = "127.0.0.1:8081"'), "pools.web.servers[0].name"),
        (withPool("[pools.web.health]\ntype = 'banner'\n"), "pools.web.health.expect"),
    ],
)
def test_missingRequiredKey(text, key):
    assert loadError(text) == f"lb.toml: {key}: required key is missing"


def test_emptyServers():
    text = MINIMAL.replace('[{ name = "a", address = "127.0.0.1:8081" }]', "[]")
    assert loadError(text) == "lb.toml: pools.web.servers: expected at least one server"


def test_noPools():
    assert loadError("[pools]\n[listeners]\n") == "lb.toml: pools: expected at least one pool"


def test_noListeners():
    text = MINIMAL.split("[pools.web]")[1]
    assert loadError("[listeners]\n[pools.web]" + text) == (
        "lb.toml: listeners: expected at least one listener"
    )


# Durations and health


@pytest.mark.parametrize(
    "value, expected",
    [
        ('"5 parsecs"', f"{EXPECTED_DURATION}, got '5 parsecs'"),
        ("true", f"{EXPECTED_DURATION}, got true"),
        ("0", "expected a duration above 0 and at most 7 days, got 0"),
        ('"8d"', f"{EXPECTED_DURATION}, got '8d'"),
        ("604801", "expected a duration above 0 and at most 7 days, got 604801"),
    ],
)
def test_badDuration(value, expected):
    text = withPool(f"[pools.web.timeouts]\nconnect = {value}\n")
    assert loadError(text) == f"lb.toml: pools.web.timeouts.connect: {expected}"


def test_healthTimeoutAboveInterval():
    text = withPool("[pools.web.health]\ninterval = '1s'\ntimeout = '1500ms'\n")
    assert loadError(text) == (
        "lb.toml: pools.web.health.timeout: expected at most the interval (1s), got 1.5s"
    )


def test_healthTimeoutAboveDefaultInterval():
    text = withPool("[pools.web.health]\ntimeout = 3\n")
    assert loadError(text) == (
        "lb.toml: pools.web.health.timeout: expected at most the interval (2s), got 3s"
    )


@pytest.mark.parametrize(
    "value, shown",
    [
        ('["2xx"]', "'2xx'"),
        ("[99]", "99"),
        ('["400-300"]', "'400-300'"),
        ("[]", "an array"),
        ("200", "200"),
        ("[true]", "true"),
    ],
)
def test_badExpectStatus(value, shown):
    text = withPool(f"[pools.web.health]\ntype = 'http'\nexpect_status = {value}\n")
    assert loadError(text) == (
        f"lb.toml: pools.web.health.expect_status: {EXPECTED_STATUS}, got {shown}"
    )


def test_badHealthPath():
    text = withPool("[pools.web.health]\ntype = 'http'\npath = 'health'\n")
    assert loadError(text) == (
        "lb.toml: pools.web.health.path: expected a path starting with /, got 'health'"
    )


def test_badHealthMethod():
    text = withPool("[pools.web.health]\ntype = 'http'\nmethod = 'POST'\n")
    assert loadError(text) == (
        "lb.toml: pools.web.health.method: expected one of GET, HEAD, OPTIONS, got 'POST'"
    )


# Valid configs


def test_minimalDefaults():
    """
    Every key left out takes its documented default.
    """
    config = loadBytes(MINIMAL.encode(), "lb.toml")
    assert config == Config(
        source="lb.toml",
        listeners={
            "web": TCPListenerConfig(
                name="web",
                bind="tcp:8080:interface=127.0.0.1",
                pool="web",
                mode="tcp",
                maxconn=10000,
                idleTimeout=300.0,
                acceptProxy=(),
            )
        },
        pools={
            "web": PoolConfig(
                name="web",
                servers=(
                    ServerConfig(
                        name="a",
                        address="tcp:host=127.0.0.1:port=8081",
                        weight=1,
                        backup=False,
                        maxconn=0,
                        cookie="a",
                    ),
                ),
                selector="roundrobin",
                selectorOptions={},
                retries=2,
                connectTimeout=5.0,
                sendProxy="none",
                health=None,
            )
        },
    )


def test_healthDefaults():
    config = loadBytes(withPool("[pools.web.health]\n").encode(), "lb.toml")
    assert config.pools["web"].health == HealthConfig(
        type="tcp", interval=2.0, timeout=1.0, rise=2, fall=3, passiveFall=3
    )


def test_everyKeySet():
    text = """\
[listeners.front]
bind = "tcp6:port=8443:interface=\\\\:\\\\:1"
pool = "back"
mode = "tcp"
maxconn = 500
accept_proxy = ["127.0.0.1", "10.0.0.0/8"]

[listeners.front.timeouts]
idle = "90s"

[pools.back]
selector = { name = "roundrobin" }
retries = 4
send_proxy = "v2"
max_queue = 50
servers = [
    { name = "one", address = "[::1]:9001", weight = 3, maxconn = 100 },
    { name = "two", address = "tcp:host=localhost:port=9002", backup = true },
]

[pools.back.timeouts]
connect = "250ms"
queue = "2s"

[pools.back.health]
type = "http"
interval = "1m"
timeout = 10
rise = 1
fall = 5
passive_fall = 0
method = "HEAD"
path = "/healthz"
host = "www.example.com"
expect_status = [204, "300-302"]
"""
    config = loadBytes(text.encode(), "lb.toml")
    assert config.listeners["front"] == TCPListenerConfig(
        name="front",
        bind="tcp6:port=8443:interface=\\:\\:1",
        pool="back",
        mode="tcp",
        maxconn=500,
        idleTimeout=90.0,
        acceptProxy=(
            ipaddress.ip_network("127.0.0.1/32"),
            ipaddress.ip_network("10.0.0.0/8"),
        ),
    )
    assert config.pools["back"] == PoolConfig(
        name="back",
        servers=(
            ServerConfig(name="one", address="tcp:host=\\:\\:1:port=9001", weight=3, maxconn=100, cookie="one"),
            ServerConfig(name="two", address="tcp:host=localhost:port=9002", backup=True, cookie="two"),
        ),
        selector="roundrobin",
        selectorOptions={},
        retries=4,
        connectTimeout=0.25,
        queueTimeout=2.0,
        maxQueue=50,
        sendProxy="v2",
        health=HealthConfig(
            type="http",
            interval=60.0,
            timeout=10.0,
            rise=1,
            fall=5,
            passiveFall=0,
            method="HEAD",
            path="/healthz",
            host="www.example.com",
            expectStatus=((204, 204), (300, 302)),
        ),
    )


def test_queueDefaultsToTheConnectTimeout():
    """
    As HAProxy's timeout queue falls back to timeout connect; 0 turns the
    queue off.
    """
    pool = loadBytes(withPool('[pools.web.timeouts]\nconnect = "3s"\n').encode(), "lb.toml").pools["web"]
    assert (pool.queueTimeout, pool.maxQueue) == (3.0, 0)
    pool = loadBytes(withPool("[pools.web.timeouts]\nqueue = 0\n").encode(), "lb.toml").pools["web"]
    assert pool.queueTimeout == 0.0


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "[pools.web.timeouts]\nqueue = -1\n",
            "pools.web.timeouts.queue: expected a duration of 0 or more and at most 7 days, got -1",
        ),
        (
            '[pools.web.timeouts]\nqueue = "8h"\n',
            "",
        ),
        (
            "[pools.web.timeouts]\nqueue = 700000\n",
            "pools.web.timeouts.queue: expected a duration of 0 or more and at most 7 days, got 700000",
        ),
    ],
)
def test_queueTimeoutRange(text, message):
    if not message:
        assert loadBytes(withPool(text).encode(), "lb.toml").pools["web"].queueTimeout == 8 * 3600
        return
    with pytest.raises(ConfigError) as caught:
        loadBytes(withPool(text).encode(), "lb.toml")
    assert str(caught.value) == f"lb.toml: {message}"


def test_bannerCheck():
    text = withPool(
        "[pools.web.health]\ntype = 'banner'\nsend = \"a1 NOOP\\r\\n\"\nexpect = '* OK'\n"
    )
    health = loadBytes(text.encode(), "lb.toml").pools["web"].health
    assert (health.type, health.send, health.expect) == ("banner", b"a1 NOOP\r\n", b"* OK")


def test_trustsProxyFrom():
    config = loadBytes(
        withListener('accept_proxy = ["10.0.0.0/8", "::1"]\n').encode(), "lb.toml"
    )
    listener = config.listeners["web"]
    assert listener.trustsProxyFrom("10.1.2.3")
    assert listener.trustsProxyFrom("::ffff:10.1.2.3")
    assert listener.trustsProxyFrom("::1")
    assert not listener.trustsProxyFrom("127.0.0.1")
    assert not listener.trustsProxyFrom("not-an-address")


# The example configurations in conf/

CONF = Path(__file__).resolve().parent.parent / "conf"

#: Every key the loader accepts, by table kind.
EVERY_KEY = {
    "listener": {
        "bind", "pool", "mode", "maxconn", "accept_proxy", "timeouts",
        "routes", "trusted_proxies", "forwarded", "access_log", "log_requests", "limits",
        "paths", "sni_fallback",
        "tls", "redirect_https", "http2",
        "tls_required", "user_pools", "user_domain", "auth", "freebind",
    },
    "listener tls": {
        "certificates", "min_version", "ciphers", "alpn", "client_verify", "client_ca",
        "client_subject_header", "starttls",
    },
    "listener tls certificate": {"cert", "key", "names"},
    "listener timeouts": {"idle", "request", "keepalive", "tunnel", "hello", "login"},
    "listener limits": {"request_line", "header_size", "header_count", "body_size", "line", "literal", "user"},
    "listener auth": {
        "max_failures", "failure_delay", "address_max_failures", "address_window", "address_ipv6_prefix",
        "address_table_size",
    },
    "listener paths": {"normalize", "allow_encoded_slash", "allow_backslash", "allow_encoded_control"},
    "listener http2": {
        "enabled", "cleartext", "max_concurrent_streams", "initial_window_size", "connection_window_size",
        "max_frame_size", "max_requests", "flood_window", "max_resets", "max_pings", "max_settings",
        "max_priority", "max_empty_frames",
    },
    "route": {"pool", "host", "path_prefix", "path_regex", "header", "methods", "sni"},
    "route header": {"name", "value"},
    "pool": {
        "selector", "retries", "send_proxy", "servers", "timeouts", "health", "cookie", "reuse", "tls",
        "client_address", "max_queue", "stores", "stick", "protocol", "max_streams",
    },
    "pool tls": {"verify", "ca", "server_name", "cert", "key", "min_version", "starttls"},
    "pool timeouts": {"connect", "queue", "response", "server"},
    "pool cookie": {
        "name", "indirect", "nocache", "httponly", "secure", "path", "domain", "maxidle", "maxlife",
    },
    "pool reuse": {"max_idle", "idle_timeout", "mode"},
    "pool stick": {"on", "expire", "size", "replicate"},
    "server": {"name", "address", "weight", "backup", "maxconn", "cookie"},
    "ha": {
        "interface", "address", "peers", "key_file", "virtual_addresses", "group", "priority", "interval",
        "preempt", "preempt_delay", "port", "channel_port", "handover_timeout", "announce_count",
        "announce_interval", "address_lifetime", "notify", "track", "multicast_group",
    },
    "ha notify": {"master", "backup", "fault", "stop", "timeout"},
    "admin": {"bind", "token_file", "allow_remote"},
    "daemon": {"grace"},
    "top": {"workers"},
    "ha track": {"type", "pool", "min_up", "weight", "command", "interval", "timeout", "fall", "rise"},
    "health": {
        "type", "interval", "timeout", "rise", "fall", "passive_fall",
        "method", "path", "host", "expect_status", "expect", "send", "tls",
    },
}


def test_examplesPresent():
    assert {p.name for p in CONF.glob("*.toml")} >= {
        "lbproxy.toml",
        "tcp-imap.toml",
        "maglev.toml",
        "http.toml",
    }


@pytest.mark.parametrize("path", sorted(CONF.glob("*.toml")), ids=lambda p: p.name)
def test_exampleValid(path):
    config = loadFile(str(path))
    assert config.listeners and config.pools


def test_referenceUsesEveryKey():
    """
    conf/lbproxy.toml, the reference example, sets every key at least once.
    """
    with open(CONF / "lbproxy.toml", "rb") as f:
        data = tomllib.load(f)
    used: dict[str, set[str]] = {kind: set() for kind in EVERY_KEY}
    for listener in data["listeners"].values():
        used["listener"] |= set(listener)
        used["listener timeouts"] |= set(listener.get("timeouts", {}))
        used["listener limits"] |= set(listener.get("limits", {}))
        used["listener auth"] |= set(listener.get("auth", {}))
        used["listener paths"] |= set(listener.get("paths", {}))
        used["listener http2"] |= set(listener.get("http2", {}))
        used["listener tls"] |= set(listener.get("tls", {}))
        for certificate in listener.get("tls", {}).get("certificates", []):
            used["listener tls certificate"] |= set(certificate)
        for route in listener.get("routes", []):
            used["route"] |= set(route)
            used["route header"] |= set(route.get("header", {}))
    for pool in data["pools"].values():
        used["pool"] |= set(pool)
        used["pool timeouts"] |= set(pool.get("timeouts", {}))
        used["pool cookie"] |= set(pool.get("cookie", {}))
        used["pool reuse"] |= set(pool.get("reuse", {}))
        used["pool stick"] |= set(pool.get("stick", {}))
        used["pool tls"] |= set(pool.get("tls", {}))
        used["health"] |= set(pool.get("health", {}))
        for server in pool["servers"]:
            used["server"] |= set(server)
    ha = data["ha"]
    # multicast_group goes without peers: shown commented out.
    used["ha"] |= set(ha) | {"multicast_group"}
    used["ha notify"] |= set(ha["notify"])
    for condition in ha["track"]:
        used["ha track"] |= set(condition)
    used["admin"] |= set(data["admin"])
    used["daemon"] |= set(data["daemon"])
    used["top"] |= {key for key, value in data.items() if not isinstance(value, dict)}
    assert used == EVERY_KEY
