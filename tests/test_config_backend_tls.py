"""
Config validation of TLS to servers (C{[pools.NAME.tls]}, C{health.tls})
and SNI passthrough on TCP listeners (routes with C{sni}, C{sni_fallback},
C{timeouts.hello}): one line naming the key for every bad value, the
model with its defaults for good ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lbproxy.config import loadBytes, loadFile
from lbproxy.config.tls import BackendTLSConfig
from lbproxy.errors import ConfigError
from lbproxy.tcp.config import SNIRouteConfig

CONF = Path(__file__).resolve().parent.parent / "conf"

TCP = """\
[listeners.front]
bind = "tcp:8443:interface=127.0.0.1"
pool = "default"
{listener}

[pools.default]
servers = [{{ name = "d1", address = "127.0.0.1:9001" }}]

[pools.api]
servers = [{{ name = "a1", address = "127.0.0.1:9101" }}]
{pools}
"""

POOL = """\
[listeners.web]
bind = "tcp:8080:interface=127.0.0.1"
pool = "web"
mode = "{mode}"

[pools.web]
servers = [{{ name = "a", address = "tcp:host=app.internal:port=8443" }}]
{pool}
"""


def load(text: str):
    return loadBytes(text.encode("utf-8"), "lb.toml")


def loadError(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    message = str(info.value)
    assert "\n" not in message
    return message


def pool(extra: str, mode: str = "http"):
    return load(POOL.format(pool=extra, mode=mode)).pools["web"]


def poolError(extra: str, mode: str = "http") -> str:
    return loadError(POOL.format(pool=extra, mode=mode))


def tcp(listener: str = "", pools: str = ""):
    return load(TCP.format(listener=listener, pools=pools)).listeners["front"]


def tcpError(listener: str = "", pools: str = "") -> str:
    return loadError(TCP.format(listener=listener, pools=pools))


# [pools.NAME.tls]


def test_poolWithoutTLS():
    assert pool("").tls is None


def test_poolTLSDefaults():
    assert pool("[pools.web.tls]\n").tls == BackendTLSConfig(
        verify=True, ca=None, serverName=None, cert=None, key=None, minVersion="1.2", starttls=False
    )


def test_poolTLSEverything():
    tls = pool(
        "[pools.web.tls]\n"
        'ca = "/etc/ca.pem"\nserver_name = "app.internal"\n'
        'cert = "/etc/client.pem"\nkey = "/etc/client.key"\nmin_version = "1.3"\n'
    ).tls
    assert tls == BackendTLSConfig(
        verify=True,
        ca="/etc/ca.pem",
        serverName="app.internal",
        cert="/etc/client.pem",
        key="/etc/client.key",
        minVersion="1.3",
    )


def test_keyDefaultsToCert():
    assert pool('[pools.web.tls]\ncert = "/etc/both.pem"\n').tls.key == "/etc/both.pem"


def test_verifyOffIsExplicit():
    assert pool("[pools.web.tls]\nverify = false\n").tls.verify is False
    assert poolError('[pools.web.tls]\nverify = false\nca = "/etc/ca.pem"\n') == (
        "lb.toml: pools.web.tls.ca: expected no CA file with verify = false (nothing would be checked)"
    )


@pytest.mark.parametrize(
    "extra, expected",
    [
        ('verify = "no"', 'pools.web.tls.verify: expected true or false'),
        ('ca = ""', "pools.web.tls.ca: expected a file path, got ''"),
        ('server_name = "bad name"', "pools.web.tls.server_name: expected a host name"),
        ('key = "/etc/client.key"', "pools.web.tls.cert: expected a client certificate file with key"),
        ('min_version = "1.1"', "pools.web.tls.min_version: expected"),
        ('sni = "x"', "pools.web.tls.sni"),
    ],
)
def test_poolTLSErrors(extra, expected):
    message = poolError(f"[pools.web.tls]\n{extra}\n")
    assert message.startswith("lb.toml: "), message
    assert expected in message, message


def test_starttlsOnlyForMail():
    message = poolError("[pools.web.tls]\nstarttls = true\n")
    assert message.startswith("lb.toml: listeners.web.pool: pool 'web' upgrades server connections with STARTTLS")


def test_tcpListenerPoolWithTLS():
    assert pool("[pools.web.tls]\n", mode="tcp").tls.verify is True


# health.tls


def test_healthTLSFollowsPool():
    assert pool("[pools.web.health]\n").health.tls is False
    assert pool("[pools.web.health]\n[pools.web.tls]\n").health.tls is True
    assert pool("[pools.web.health]\ntls = false\n[pools.web.tls]\n").health.tls is False


def test_healthTLSNeedsPoolTLS():
    assert poolError("[pools.web.health]\ntls = true\n") == (
        "lb.toml: pools.web.health.tls: expected false in a pool without a [tls] table "
        "(there are no TLS settings to check with)"
    )


# SNI routes of TCP listeners


def test_sniRoutes():
    listener = tcp(
        'routes = [\n'
        '  { sni = "API.example.test", pool = "api" },\n'
        '  { sni = ["*.Example.test", "example.test"], pool = "api" },\n'
        ']\n'
    )
    assert listener.routes == (
        SNIRouteConfig(pool="api", sni=("api.example.test",)),
        SNIRouteConfig(pool="api", sni=("*.example.test", "example.test")),
    )
    assert listener.sniFallback == "default"
    assert listener.helloTimeout == 5.0
    assert listener.poolsUsed() == {"default", "api"}


def test_fallbackAndTimeout():
    listener = tcp(
        'sni_fallback = "reject"\nroutes = [{ sni = "a.test", pool = "api" }]\n'
        '[listeners.front.timeouts]\nhello = "2s"\n'
    )
    assert listener.sniFallback == "reject"
    assert listener.helloTimeout == 2.0


@pytest.mark.parametrize(
    "listener, expected",
    [
        ('routes = [{ sni = "a.test", pool = "nope" }]', "listeners.front.routes[0].pool: expected the name of a pool"),
        ('routes = [{ sni = [], pool = "api" }]', "listeners.front.routes[0].sni: expected at least one server name"),
        ('routes = [{ sni = "bad name", pool = "api" }]', "listeners.front.routes[0].sni: expected a server name"),
        ('routes = [{ sni = 3, pool = "api" }]', "listeners.front.routes[0].sni: expected a server name"),
        ('routes = [{ pool = "api" }]', "listeners.front.routes[0].sni"),
        ('routes = [{ sni = "a.test", host = "a.test", pool = "api" }]', "listeners.front.routes[0].host: expected only in routes of a mode = \"http\" listener"),
        ('sni_fallback = "reject"', "listeners.front.sni_fallback: expected only with SNI routes"),
        ('sni_fallback = "drop"\nroutes = [{ sni = "a.test", pool = "api" }]', "listeners.front.sni_fallback: expected"),
        ('[listeners.front.timeouts]\nhello = "2s"', "listeners.front.timeouts.hello: expected only with SNI routes"),
    ],
)
def test_sniErrors(listener, expected):
    message = tcpError(listener)
    assert message.startswith("lb.toml: "), message
    assert expected in message, message


def test_routesAndTLSTermination():
    message = tcpError(
        'routes = [{ sni = "a.test", pool = "api" }]\n'
        '[listeners.front.tls]\ncertificates = [{ cert = "/etc/a.pem" }]\n'
    )
    assert message == (
        "lb.toml: listeners.front.routes: expected either SNI routes (TLS passed through) "
        "or a [tls] table (TLS terminated), not both"
    )


def test_sniOnlyOnTCP():
    text = TCP.format(listener='mode = "http"\nroutes = [{ sni = "a.test", pool = "api" }]', pools="")
    assert "listeners.front.routes[0].sni: expected only in routes of a mode = \"tcp\" listener" in loadError(text)
    text = TCP.format(listener='mode = "http"\nsni_fallback = "reject"', pools="")
    assert "listeners.front.sni_fallback: expected only with mode = \"tcp\"" in loadError(text)
    text = TCP.format(listener='mode = "http"\n[listeners.front.timeouts]\nhello = "1s"', pools="")
    assert "listeners.front.timeouts.hello: expected only with mode = \"tcp\"" in loadError(text)


# The examples


def test_sniPassthroughExample():
    config = loadFile(str(CONF / "sni-passthrough.toml"))
    (listener,) = config.listeners.values()
    assert listener.mode == "tcp"
    assert listener.routes
    assert all(route.sni for route in listener.routes)


def test_referenceDocumentsBackendTLS():
    config = loadFile(str(CONF / "lbproxy.toml"))
    tlsPools = [p for p in config.pools.values() if p.tls is not None]
    assert {p.tls.verify for p in tlsPools} == {True, False}
    assert any(p.health is not None and p.health.tls for p in tlsPools)
    sniListeners = [l for l in config.listeners.values() if l.mode == "tcp" and l.routes]
    assert sniListeners


# The "sni" selector key


def test_sniKeyWithRoutes():
    listener = tcp(
        'routes = [{ sni = "a.test", pool = "api" }]',
        pools='[pools.hashed]\nselector = { name = "hash", key = "sni" }\n'
        'servers = [{ name = "h1", address = "127.0.0.1:9201" }]\n',
    )
    assert listener.routes
    text = TCP.format(
        listener='routes = [{ sni = "a.test", pool = "hashed" }]',
        pools='[pools.hashed]\nselector = { name = "maglev", key = "sni" }\n'
        'servers = [{ name = "h1", address = "127.0.0.1:9201" }]\n',
    )
    assert load(text).pools["hashed"].selectorOptions == {"key": "sni"}


def test_sniKeyNeedsRoutes():
    text = TCP.format(
        listener="",
        pools="",
    ).replace('[pools.default]\n', '[pools.default]\nselector = { name = "hash", key = "sni" }\n')
    assert loadError(text) == (
        "lb.toml: listeners.front.pool: pool 'default' hashes on key 'sni', "
        "which only a TCP listener with SNI routes provides"
    )


def test_sniKeyNotOnHTTP():
    text = POOL.format(mode="http", pool="").replace(
        "[pools.web]\n", '[pools.web]\nselector = { name = "hash", key = "sni" }\n'
    )
    assert "hashes on key 'sni', which a http listener cannot provide" in loadError(text)
