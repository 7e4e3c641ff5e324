"""
End-to-end tests: the real C{twistd -n lbproxy} as a subprocess on
loopback, talked to with real clients (Python's http.client and curl).

Backends are the demo web servers (L{lbproxy.demo}), each in its own
process, so a response names the server that produced it.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from processes import lbproxyArgv, processes, waitUntil  # noqa: F401 (a fixture; other modules import both from here)
from support import freePort, requireExecutable, twistd

pytestmark = pytest.mark.integration

#: A demo web server in a process of its own: NAME PORT.
BACKEND = """\
import sys
from twisted.internet import reactor
from lbproxy.demo import DemoService

name, port = sys.argv[1], sys.argv[2]
service = DemoService(reactor, [(name, f"tcp:{port}:interface=127.0.0.1")], url="")
service.privilegedStartService()
service.startService()
reactor.run()
"""

CONFIG = """\
[listeners.front]
bind = "tcp:{listen}:interface=127.0.0.1"
pool = "web"

[pools.web]
selector = "roundrobin"
servers = [
    {{ name = "alpha", address = "127.0.0.1:{alpha}" }},
    {{ name = "beta", address = "127.0.0.1:{beta}" }},
]
"""


def startBackends(processes, names) -> dict[str, int]:
    ports = {}
    started = []
    for name in names:
        port = freePort()
        started.append(processes([sys.executable, "-c", BACKEND, name, str(port)], f"backend-{name}"))
        ports[name] = port
    for process, port in zip(started, ports.values()):
        process.waitForPort(port)
    return ports


def get(port: int) -> dict[str, str]:
    """
    GET / through http.client; the demo server's report as a dict.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        body = response.read().decode()
    finally:
        connection.close()
    return report(body)


def curl(port: int, *options: str) -> dict[str, str]:
    """
    GET / with curl and C{options}; the demo server's report as a dict.
    """
    result = subprocess.run(
        [requireExecutable("curl"), "-sS", "--max-time", "10", *options, f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return report(result.stdout)


def report(body: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in body.splitlines())


def assertAlternates(names: list[str], expected: set[str]) -> None:
    assert set(names) == expected, names
    assert all(a != b for a, b in zip(names, names[1:])), names


@pytest.fixture
def proxy(tmp_path, processes):
    """
    Two backends and lbproxy in front of them: (listener port, process).
    """
    requireExecutable("curl")
    backends = startBackends(processes, ["alpha", "beta"])
    listen = freePort()
    config = tmp_path / "lb.toml"
    config.write_text(CONFIG.format(listen=listen, **backends))
    process = processes(lbproxyArgv(tmp_path, "--config", str(config)), "lbproxy")
    process.waitForPort(listen)
    return listen, process


def test_roundRobin(proxy):
    """
    Requests alternate between the two backends, with http.client and
    with curl; a backend sees the proxy's address and, in TCP mode, no
    X-Forwarded-For.
    """
    listen, process = proxy
    reports = [get(listen), get(listen), curl(listen), curl(listen)]
    assertAlternates([r["server"] for r in reports], {"alpha", "beta"})
    for r in reports:
        assert r["client"].startswith("127.0.0.1:")
        assert r["x-forwarded-for"] == "(none)"
    assert process.popen.poll() is None, process.describe()


def test_sessionLogLine(proxy):
    """
    Every proxied connection is logged when it ends, naming the client and
    the server that served it.
    """
    listen, process = proxy
    served = get(listen)["server"]
    deadline = time.monotonic() + 10
    pattern = re.compile(rf"tcp 127\.0\.0\.1:\d+ front -> web/{served} in=\d+ out=\d+ ")
    while not any(pattern.search(line) for line in process.stdout.splitlines()):
        if time.monotonic() > deadline:
            pytest.fail(f"no session line for web/{served}:\n{process.describe()}")
        time.sleep(0.1)


def test_badConfig(tmp_path, processes):
    """
    A bad config stops twistd with status 1 and one line on stderr, and
    leaves no pidfile.
    """
    config = tmp_path / "bad.toml"
    config.write_text(
        CONFIG.format(listen=freePort(), alpha=1, beta=2).replace('selector = "roundrobin"', 'selector = "fastest"')
    )
    process = processes(lbproxyArgv(tmp_path, "--config", str(config)), "lbproxy")
    assert process.wait() == 1, process.describe()
    stderr = process.stderr
    assert re.fullmatch(
        rf"lbproxy: {re.escape(str(config))}: pools\.web\.selector: expected a selector "
        r"\(one of [a-z0-9, ]+\), got 'fastest'\n",
        stderr,
    ), process.describe()
    assert process.stdout == "", process.describe()
    assert not (tmp_path / "twistd.pid").exists()


def test_portTaken(tmp_path, processes):
    """
    A listener whose port is in use stops twistd with one clear line naming
    the listener, its address and the reason, not a traceback, and twistd
    removes its pidfile.
    """
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        config = tmp_path / "lb.toml"
        config.write_text(CONFIG.format(listen=taken, alpha=freePort(), beta=freePort()))
        process = processes(lbproxyArgv(tmp_path, "--config", str(config)), "lbproxy")
        assert process.wait() == 1, process.describe()
    line = (
        f"cannot start: {config}: listeners.front.bind: cannot listen on 127.0.0.1:{taken}: "
        "Address already in use (another process listens there)"
    )
    assert process.stderr == f"lbproxy: {line}\n", process.describe()
    assert "Traceback" not in process.stdout, process.describe()
    assert line in process.stdout
    assert not (tmp_path / "twistd.pid").exists()


DEMO_PORTS = (8080, 8081, 8082)


def test_embeddedDemo(tmp_path, processes):
    """
    C{twistd -n lbproxy} without options runs the tutorial, an HTTP proxy on
    127.0.0.1:8080: plain curl alternates between the two demo servers,
    curl with a cookie jar sticks to one, every server sees the client in
    X-Forwarded-For, and the proxy logs an access line per request with
    that X-Forwarded-For value.
    """
    requireExecutable("curl")
    for port in DEMO_PORTS:
        with socket.socket() as probe:
            # As Twisted's listenTCP does: connections of an earlier user of
            # the port lingering in TIME_WAIT do not keep it from binding.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as e:
                pytest.fail(
                    f"the built-in demo needs 127.0.0.1:{port} free, but it is not ({e.strerror}); "
                    "stop whatever listens there and run the tests again"
                )
    process = processes(lbproxyArgv(tmp_path), "lbproxy")
    for port in DEMO_PORTS:
        process.waitForPort(port)
    assert "try: curl http://127.0.0.1:8080/" in process.stdout, process.describe()
    assert "curl -b jar -c jar http://127.0.0.1:8080/" in process.stdout, process.describe()

    plain = [curl(8080) for _ in range(4)]
    assertAlternates([r["server"] for r in plain], {"web1", "web2"})

    jar = str(tmp_path / "jar")
    sticky = [curl(8080, "-b", jar, "-c", jar) for _ in range(4)]
    assert len({r["server"] for r in sticky}) == 1, sticky
    cookies = [line.split("\t") for line in open(jar) if "LBSRV" in line]
    assert [c[-2:] for c in cookies] == [["LBSRV", sticky[0]["server"] + "\n"]], open(jar).read()

    for r in plain + sticky:
        assert r["x-forwarded-for"] == "127.0.0.1", r
    # The access log goes to the daemon's log (stdout): one line per
    # request, with the X-Forwarded-For value sent and the request line.
    line = re.compile(
        r"127\.0\.0\.1:\d+ \[[^]]+\] demo demo/(web[12]) [-\d/]+ 200 \d+ 0 --(..) "
        r'"127\.0\.0\.1" "GET / HTTP/1\.1"$'
    )

    def logged():
        return [m.groups() for m in map(line.search, process.stdout.splitlines()) if m]

    waitUntil(lambda: len(logged()) >= 8, "8 access log lines")
    assert logged() == [(r["server"], "NI") for r in plain] + [
        (sticky[0]["server"], "NI")
    ] + [(sticky[0]["server"], "VN")] * 3, process.describe()


def test_twistdFromThisEnvironment():
    """
    The daemon the tests start is the one installed beside this
    interpreter, not whatever PATH finds first.
    """
    assert os.path.dirname(twistd()) == os.path.dirname(sys.executable)


THIRD_PARTY_SELECTOR = '''\
from zope.interface import implementer

from lbproxy.interfaces import IBackendSelector
from lbproxy.selectors.base import SelectorPlugin, usable


@implementer(IBackendSelector)
class Named:
    """
    Always the server with the configured name, while it is usable.
    """

    def __init__(self, server):
        self.server = server

    def pick(self, servers, context):
        for server in servers:
            if server.name == self.server and usable(server, context):
                return server
        return None


def checkName(value):
    if not isinstance(value, str):
        raise ValueError(f"expected a server name, got {value!r}")
    return value


named = SelectorPlugin("named", "always one server", Named, {"server": ("", checkName)})
'''


def test_thirdPartySelector(tmp_path, processes):
    """
    A selector shipped in an lbproxy/plugins directory of its own, outside
    the lbproxy package, is found by the real daemon and places real
    connections.
    """
    plugins = tmp_path / "thirdparty" / "lbproxy" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "namedselector.py").write_text(THIRD_PARTY_SELECTOR)
    backends = startBackends(processes, ["alpha", "beta"])
    listen = freePort()
    config = tmp_path / "lb.toml"
    config.write_text(
        CONFIG.format(listen=listen, **backends).replace(
            'selector = "roundrobin"', 'selector = { name = "named", server = "beta" }'
        )
    )
    argv = lbproxyArgv(tmp_path, "--config", str(config))
    env = {"PYTHONPATH": str(tmp_path / "thirdparty")}
    process = processes(argv, "lbproxy", env)
    process.waitForPort(listen)
    assert [get(listen)["server"] for _ in range(4)] == ["beta"] * 4
