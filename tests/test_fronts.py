"""
Tests for the registry of protocol fronts (lbproxy.modes): the built-in
fronts, and a third party's, README.rst's "Writing a front" example, found
the way selectors are and served by a real twistd.
"""

from __future__ import annotations

import socket
import sys

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

import lbproxy.plugins
from lbproxy.config import loadBytes
from lbproxy.core.model import Balancer
from lbproxy.errors import ConfigError
from lbproxy.interfaces import IFrontPlugin
from lbproxy.modes import allModes, findMode, keyKnown, modeNames

from memoryconnections import acceptClient
from processes import lbproxyArgv, processes  # noqa: F401 (fixture)
from support import freePort, readmeCodeBlock
from test_relay import FakeTCPTransport
from test_tcp import DONE, HOST, PEER

BUILT_IN = ["http", "imap", "pop3", "tcp"]


@pytest.mark.parametrize("name", BUILT_IN)
def test_builtIn(name):
    mode = findMode(name)
    assert verifyObject(IFrontPlugin, mode)
    assert verifyObject(IPlugin, mode)
    assert mode.name == name and mode.description


def test_noOtherBuiltIn():
    assert modeNames() == BUILT_IN


def frontExample() -> str:
    return readmeCodeBlock("Writing a front")


@pytest.fixture
def echoPlugin(tmp_path):
    """
    The README's example as a third party's plugin module in a
    C{lbproxy/plugins} directory of its own, on the plugin path.
    """
    directory = tmp_path / "ext" / "lbproxy" / "plugins"
    directory.mkdir(parents=True)
    (directory / "echofront.py").write_text(frontExample())
    lbproxy.plugins.__path__.append(str(directory))
    try:
        yield directory
    finally:
        lbproxy.plugins.__path__.remove(str(directory))
        sys.modules.pop("lbproxy.plugins.echofront", None)
        (directory / "dropin.cache").unlink(missing_ok=True)


ECHO = """
[pools.web]
servers = [{ name = "a", address = "tcp:host=127.0.0.1:port=9001" }]

[listeners.echo]
bind = "tcp:%d:interface=127.0.0.1"
mode = "echo"
%s
"""


def test_exampleFound(echoPlugin):
    """
    The third party's front is found by its mode, and the config loader
    hands it the listener: it needs no pool, takes the common keys, and a
    key of another mode is refused naming the modes that take it.
    """
    mode = findMode("echo")
    assert verifyObject(IFrontPlugin, mode)
    assert "echo" in allModes()
    config = loadBytes((ECHO % (7007, "maxconn = 1")).encode(), "lb.toml")
    listener = config.listeners["echo"]
    assert (listener.mode, listener.pool, listener.maxconn) == ("echo", "", 1)
    with pytest.raises(ConfigError) as info:
        loadBytes((ECHO % (7007, 'sni_fallback = "reject"')).encode(), "lb.toml")
    assert str(info.value) == 'lb.toml: listeners.echo.sni_fallback: expected only with mode = "tcp"'
    with pytest.raises(ConfigError) as info:
        loadBytes((ECHO % (7007, "colour = 1")).encode(), "lb.toml")
    assert str(info.value) == "lb.toml: listeners.echo.colour: unknown key"


def test_exampleServesAndCounts(echoPlugin):
    """
    In memory: the example echoes, its listener admits up to maxconn and
    counts the session's bytes when it ends.
    """
    model = Balancer(loadBytes((ECHO % (7007, "maxconn = 1")).encode(), "lb.toml"))
    listener = model.listeners["echo"]
    factory = listener.mode.buildFactory(listener, model.pools, MemoryReactorClock())
    first = FakeTCPTransport()
    protocol = acceptClient(factory, first, PEER, HOST)
    protocol.dataReceived(b"hello")
    assert first.value() == b"hello"
    second = FakeTCPTransport()
    acceptClient(factory, second, PEER, HOST)
    assert second.disconnecting
    protocol.connectionLost(DONE)
    counters = listener.counters
    assert (counters.connections, counters.refused, counters.bytesIn, counters.bytesOut) == (2, 1, 5, 5)
    assert listener.sessions == set()


def test_selectorKeysOfEveryMode(echoPlugin):
    assert keyKnown("user") and keyKnown("header:X-Real") and keyKnown("sni")


def test_exampleInTwistd(tmp_path, processes):  # noqa: F811 (fixture)
    """
    A real twistd lbproxy serves the third party's front from a plugin
    directory on PYTHONPATH.
    """
    directory = tmp_path / "ext" / "lbproxy" / "plugins"
    directory.mkdir(parents=True)
    (directory / "echofront.py").write_text(frontExample())
    port = freePort()
    config = tmp_path / "echo.toml"
    config.write_text(ECHO % (port, ""))
    process = processes(lbproxyArgv(tmp_path, "--config", str(config)), "lbproxy", {"PYTHONPATH": str(tmp_path / "ext")})
    process.waitForPort(port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"ping\r\n")
        received = b""
        while len(received) < 6:
            chunk = client.recv(100)
            if not chunk:
                break
            received += chunk
    assert received == b"ping\r\n"
