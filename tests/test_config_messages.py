"""
Every kind of config value an operator can get wrong, one row per case,
with the whole line lbproxy answers: the key, the value quoted as it was
written and what the key expects, in the operator's terms (never Python's:
no class names, C{__init__}, C{int()}, or a value rewritten before it is
quoted back).
"""

from __future__ import annotations

import re

import pytest
from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import getPlugins

from lbproxy.config import loadBytes
from lbproxy.errors import ConfigError
from test_config import MINIMAL

#: The endpoint types a message lists: Twisted's own and any installed
#: endpoint plugin's.
SERVER_TYPES = ", ".join(
    sorted({"tcp", "tcp6", "ssl", "tls", "unix", "systemd", *(p.prefix for p in getPlugins(IStreamServerEndpointStringParser))})
)
CLIENT_TYPES = ", ".join(
    sorted({"tcp", "ssl", "tls", "unix", *(p.prefix for p in getPlugins(IStreamClientEndpointStringParserWithReactor))})
)
EXPECTED_BIND = f'expected a server endpoint string such as "tcp:8080:interface=127.0.0.1" (types: {SERVER_TYPES})'
EXPECTED_ADDRESS = f'expected "host:port", "[IPv6 address]:port" or a client endpoint string (types: {CLIENT_TYPES})'
ESCAPE_HINT = (
    'expected the colons of an IPv6 address escaped, as in interface=\\:\\:1 (written "interface=\\\\:\\\\:1" in TOML)'
)
LONG_PATH = "/run/" + "x" * 103


def bind(value: str) -> str:
    """
    The minimal config with C{bind = value}, C{value} written as TOML.
    """
    return MINIMAL.replace('"tcp:8080:interface=127.0.0.1"', value)


def address(value: str) -> str:
    return MINIMAL.replace('"127.0.0.1:8081"', value)


def listener(extra: str, mode: str = "tcp") -> str:
    return MINIMAL.replace('pool = "web"\n', f'pool = "web"\nmode = "{mode}"\n{extra}\n', 1)


def pool(extra: str) -> str:
    return MINIMAL + extra + "\n"


def server(fields: str) -> str:
    return MINIMAL.replace('address = "127.0.0.1:8081"', f'address = "127.0.0.1:8081", {fields}')


CASES = [
    # The three.
    (bind('"tcp:notaport"'), "listeners.web.bind: expected a port from 0 to 65535, got 'tcp:notaport' (port 'notaport')"),
    (
        address('"tcp:host=127.0.0.1:port=8081:bogus=1"'),
        "pools.web.servers[0].address: expected tcp options host, port, timeout and bindAddress, "
        "got 'tcp:host=127.0.0.1:port=8081:bogus=1' (unknown option 'bogus')",
    ),
    (address('"127.0.0.1:99999"'), "pools.web.servers[0].address: expected a port from 1 to 65535, got '127.0.0.1:99999' (port '99999')"),
    # Listener binds.
    (bind('"tcp:99999"'), "listeners.web.bind: expected a port from 0 to 65535, got 'tcp:99999' (port '99999')"),
    (bind('"tcp:-1"'), "listeners.web.bind: expected a port from 0 to 65535, got 'tcp:-1' (port '-1')"),
    (bind('"tcp:8080.5"'), "listeners.web.bind: expected a port from 0 to 65535, got 'tcp:8080.5' (port '8080.5')"),
    (bind('"tcp:0x50"'), "listeners.web.bind: expected a port from 0 to 65535, got 'tcp:0x50' (port '0x50')"),
    (bind('"tcp: 8080"'), "listeners.web.bind: expected a port from 0 to 65535, got 'tcp: 8080' (port ' 8080')"),
    (bind('"tcp"'), "listeners.web.bind: expected a port from 0 to 65535, got 'tcp' (no port)"),
    (
        bind('"tcp:8080:bogus=1"'),
        "listeners.web.bind: expected tcp options port, interface and backlog, got 'tcp:8080:bogus=1' (unknown option 'bogus')",
    ),
    (
        bind('"tcp:port=80:port=81"'),
        "listeners.web.bind: expected each tcp option once, got 'tcp:port=80:port=81' (port given twice: '80' and '81')",
    ),
    (
        bind('"tcp:8080:127.0.0.1:50:x"'),
        "listeners.web.bind: expected at most 3 values after tcp: (port, interface and backlog), "
        "got 'tcp:8080:127.0.0.1:50:x' (4 given)",
    ),
    (bind('""'), f"listeners.web.bind: {EXPECTED_BIND}, got ''"),
    (bind('"foo:80"'), f"listeners.web.bind: {EXPECTED_BIND}, got 'foo:80' (unknown type 'foo')"),
    (bind('"8080"'), f"listeners.web.bind: {EXPECTED_BIND}, got '8080' (for TCP port 8080 write \"tcp:8080\")"),
    (
        bind('"tcp:80:interface=my host"'),
        "listeners.web.bind: expected an IP address for interface, such as 127.0.0.1 (a listener binds to an "
        "address, not a name), got 'tcp:80:interface=my host' (interface 'my host')",
    ),
    (
        bind('"tcp:80:interface=localhost"'),
        "listeners.web.bind: expected an IP address for interface, such as 127.0.0.1 (a listener binds to an "
        "address, not a name), got 'tcp:80:interface=localhost' (interface 'localhost')",
    ),
    (bind('"tcp:80:interface=::1"'), f"listeners.web.bind: {ESCAPE_HINT}, got 'tcp:80:interface=::1'"),
    (
        bind('"tcp6:80:interface=127.0.0.1"'),
        "listeners.web.bind: expected an IPv6 address for a tcp6 interface (\"tcp:\" listens on IPv4), "
        "got 'tcp6:80:interface=127.0.0.1' (interface '127.0.0.1')",
    ),
    (bind('"tcp:80:backlog=x"'), "listeners.web.bind: expected a backlog from 1 to 65535, got 'tcp:80:backlog=x' (backlog 'x')"),
    (
        bind('"unix:"'),
        "listeners.web.bind: expected a socket path, as in \"unix:address=/run/lbproxy.sock\", got 'unix:' (no address)",
    ),
    (
        bind(f'"unix:{LONG_PATH}"'),
        f"listeners.web.bind: expected a socket path of at most 107 bytes, got 'unix:{LONG_PATH}' (108 bytes)",
    ),
    (
        bind('"unix:address=/run/lb.sock:mode=999"'),
        "listeners.web.bind: expected an octal mode such as mode=660, got 'unix:address=/run/lb.sock:mode=999' (mode '999')",
    ),
    (
        bind('"unix:address=/run/lb.sock:lockfile=yes"'),
        "listeners.web.bind: expected lockfile=0 or lockfile=1, got 'unix:address=/run/lb.sock:lockfile=yes' (lockfile 'yes')",
    ),
    (
        bind('"systemd:domain=INET"'),
        "listeners.web.bind: expected either index= or name= to say which socket systemd passes, got 'systemd:domain=INET'",
    ),
    (
        bind('"systemd:domain=IPX:index=0"'),
        "listeners.web.bind: expected domain=INET, INET6 or UNIX, got 'systemd:domain=IPX:index=0' (domain 'IPX')",
    ),
    (bind("42"), "listeners.web.bind: expected a string, got 42"),
    # Server addresses.
    (address('"127.0.0.1:0"'), "pools.web.servers[0].address: expected a port from 1 to 65535, got '127.0.0.1:0' (port '0')"),
    (
        address('"127.0.0.1:notaport"'),
        "pools.web.servers[0].address: expected a port from 1 to 65535, got '127.0.0.1:notaport' (port 'notaport')",
    ),
    (address('"[::1]:99999"'), "pools.web.servers[0].address: expected a port from 1 to 65535, got '[::1]:99999' (port '99999')"),
    (
        address('"tcp:host=127.0.0.1"'),
        "pools.web.servers[0].address: expected a port from 1 to 65535, got 'tcp:host=127.0.0.1' (no port)",
    ),
    (
        address('"tcp:host=127.0.0.1:port=x"'),
        "pools.web.servers[0].address: expected a port from 1 to 65535, got 'tcp:host=127.0.0.1:port=x' (port 'x')",
    ),
    (
        address('"tls:example.com:99999"'),
        "pools.web.servers[0].address: expected a port from 1 to 65535, got 'tls:example.com:99999' (port '99999')",
    ),
    (
        address('"my host:8081"'),
        "pools.web.servers[0].address: expected a host name or IP address, got 'my host:8081' (host 'my host')",
    ),
    (
        address('"tcp:host=my host:port=80"'),
        "pools.web.servers[0].address: expected a host name or IP address, got 'tcp:host=my host:port=80' (host 'my host')",
    ),
    (address('":80"'), "pools.web.servers[0].address: expected a host name or IP address, got ':80' (no host)"),
    (address('""'), f"pools.web.servers[0].address: {EXPECTED_ADDRESS}, got ''"),
    (address('"backend"'), f"pools.web.servers[0].address: {EXPECTED_ADDRESS}, got 'backend'"),
    (address('"bogus:host=a:port=1"'), f"pools.web.servers[0].address: {EXPECTED_ADDRESS}, got 'bogus:host=a:port=1'"),
    (
        address('"::1:8081"'),
        f"pools.web.servers[0].address: {EXPECTED_ADDRESS}, got '::1:8081' (write an IPv6 address in brackets: [::1]:port)",
    ),
    (
        address('"tcp:host=::1:port=8081"'),
        "pools.web.servers[0].address: expected the colons of an IPv6 address escaped, as in host=\\:\\:1 "
        "(written \"host=\\\\:\\\\:1\" in TOML), got 'tcp:host=::1:port=8081'",
    ),
    (
        address('"tcp:host=127.0.0.1:port=80:timeout=1.5"'),
        "pools.web.servers[0].address: expected a timeout in whole seconds from 1 to 86400, "
        "got 'tcp:host=127.0.0.1:port=80:timeout=1.5' (timeout '1.5')",
    ),
    (
        address('"tcp:host=127.0.0.1:port=80:bindAddress=eth0"'),
        "pools.web.servers[0].address: expected an IP address of this machine for bindAddress, "
        "got 'tcp:host=127.0.0.1:port=80:bindAddress=eth0' (bindAddress 'eth0')",
    ),
    (
        address('"unix:path="'),
        "pools.web.servers[0].address: expected a socket path, as in \"unix:path=/run/app.sock\", got 'unix:path=' (no path)",
    ),
    # Numbers, sizes and ports.
    (listener("maxconn = -1"), "listeners.web.maxconn: expected an integer from 0 to 1000000, got -1"),
    (listener("maxconn = 1.5"), "listeners.web.maxconn: expected an integer from 0 to 1000000, got 1.5"),
    (listener("maxconn = true"), "listeners.web.maxconn: expected an integer from 0 to 1000000, got true"),
    (listener('maxconn = "100"'), "listeners.web.maxconn: expected an integer from 0 to 1000000, got '100'"),
    (listener("maxconn = 10_000_000"), "listeners.web.maxconn: expected an integer from 0 to 1000000, got 10000000"),
    (server("weight = 300"), "pools.web.servers[0].weight: expected an integer from 0 to 256, got 300"),
    (pool('retries = ""'), "pools.web.retries: expected an integer from 0 to 100, got ''"),
    (
        listener("limits.body_size = -1", mode="http"),
        "listeners.web.limits.body_size: expected an integer from 0 to 4611686018427387904, got -1",
    ),
    (listener("redirect_https = 99999", mode="http").replace('pool = "web"\n', "", 1), "listeners.web.redirect_https: expected an integer from 1 to 65535, got 99999"),
    # Durations.
    (
        listener('timeouts.idle = "5 sec"'),
        'listeners.web.timeouts.idle: expected a duration in seconds or a string such as "500ms", "5s", "2m", got \'5 sec\'',
    ),
    (listener("timeouts.idle = -5"), "listeners.web.timeouts.idle: expected a duration above 0 and at most 7 days, got -5"),
    (listener("timeouts.idle = nan"), "listeners.web.timeouts.idle: expected a duration above 0 and at most 7 days, got nan"),
    (
        pool("timeouts.connect = true"),
        'pools.web.timeouts.connect: expected a duration in seconds or a string such as "500ms", "5s", "2m", got true',
    ),
    # Choices.
    (listener("", mode="HTTP"), "listeners.web.mode: expected one of http, imap, pop3, tcp, got 'HTTP'"),
    (pool('send_proxy = "v3"'), "pools.web.send_proxy: expected one of none, v1, v2, got 'v3'"),
    # Paths.
    (listener('access_log = ""', mode="http"), "listeners.web.access_log: expected a file path, got ''"),
    (
        listener('tls.certificates = [{ cert = "" }]', mode="http"),
        "listeners.web.tls.certificates[0].cert: expected a file path, got ''",
    ),
    # Lists and addresses in them.
    (listener('accept_proxy = "10.0.0.0/8"'), "listeners.web.accept_proxy: expected an array, got '10.0.0.0/8'"),
    (
        listener('accept_proxy = ["10.0.0.0/33"]'),
        'listeners.web.accept_proxy[0]: expected an address or network such as "127.0.0.1" or "10.0.0.0/8", got \'10.0.0.0/33\'',
    ),
    (MINIMAL.replace('[{ name = "a", address = "127.0.0.1:8081" }]', "[]"), "pools.web.servers: expected at least one server"),
    # TOML itself names tables as keys, not as Python tuples.
    (MINIMAL + "[pools.web]\n", "TOML syntax error: Cannot declare pools.web twice (at line 7, column 11)"),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[expected.split(":", 1)[0] + "-" + str(i) for i, (_, expected) in enumerate(CASES)])
def test_message(text, expected):
    with pytest.raises(ConfigError) as info:
        loadBytes(text.encode("utf-8"), "lb.toml")
    assert str(info.value) == f"lb.toml: {expected}"


def test_sslWithoutCertificate(tmp_path, monkeypatch):
    """
    C{ssl:} reads its certificate (server.pem by default, in the directory
    lbproxy runs in) when the config is loaded.
    """
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        loadBytes(bind('"ssl:8443"').encode(), "lb.toml")
    assert str(info.value) == (
        "lb.toml: listeners.web.bind: expected privateKey= (and certKey=) naming readable PEM files, "
        "or \"tcp:\" with a [tls] table, got 'ssl:8443' "
        f"(cannot read {tmp_path}/server.pem: No such file or directory)"
    )


#: What Python says that an operator should never read.
PYTHON_WORDS = re.compile(r"__\w+__|\w+\(\)|invalid literal|keyword argument|positional argument|Error\b|Endpoint\b")


@pytest.mark.parametrize("text, expected", CASES)
def test_noPythonWords(text, expected):
    assert not PYTHON_WORDS.search(expected), expected


@pytest.mark.parametrize(
    "value, endpoint",
    [
        ("127.0.0.1:8081", "tcp:host=127.0.0.1:port=8081"),
        ("[::1]:8081", "tcp:host=\\:\\:1:port=8081"),
        ("backend_1.internal:80", "tcp:host=backend_1.internal:port=80"),
        ("tcp:host=127.0.0.1:port=8081:timeout=3", "tcp:host=127.0.0.1:port=8081:timeout=3"),
        ("unix:path=/run/app.sock", "unix:path=/run/app.sock"),
        ("tls:example.com:443", "tls:example.com:443"),
    ],
)
def test_goodAddresses(value, endpoint):
    config = loadBytes(address(f'"{value}"').encode(), "lb.toml")
    assert config.pools["web"].servers[0].address == endpoint


@pytest.mark.parametrize(
    "value",
    [
        "tcp:0",
        "tcp:8080",
        "tcp:port=8080:interface=127.0.0.1:backlog=100",
        "tcp:8080:interface=0.0.0.0",
        "tcp6:8080",
        "tcp6:port=8080:interface=\\\\:\\\\:1",
        "tcp:8080:interface=\\\\:\\\\:1",
        "unix:/run/lbproxy.sock",
        "unix:address=/run/lbproxy.sock:mode=660:lockfile=0",
        "systemd:domain=INET:index=0",
        "systemd:domain=INET6:name=web",
    ],
)
def test_goodBinds(value):
    assert loadBytes(bind(f'"{value}"').encode(), "lb.toml").listeners["web"].bind == value.replace("\\\\", "\\")
