"""
Tests for C{protocol = "h2"} and C{max_streams} of a pool
(L{lbproxy.config._parsePool}): defaults, what an HTTP/2 pool refuses,
which listeners may use it; every error is one exact line.
"""

from __future__ import annotations

import pytest

from lbproxy.config import DEFAULT_MAX_STREAMS, loadBytes
from lbproxy.errors import ConfigError

LISTENER = """\
[listeners.web]
bind = "tcp:8080"
pool = "grpc"
mode = "MODE"
"""

POOL = """
[pools.grpc]
servers = [{ name = "a", address = "127.0.0.1:50051" }]
"""


def config(pool: str = "", mode: str = "http", extra: str = "") -> bytes:
    return (LISTENER.replace("MODE", mode) + POOL + pool + extra).encode("utf-8")


def loadError(text: bytes) -> str:
    with pytest.raises(ConfigError) as info:
        loadBytes(text, "lb.toml")
    message = str(info.value)
    assert "\n" not in message
    return message[len("lb.toml: "):]


def test_defaults():
    pool = loadBytes(config(), "lb.toml").pools["grpc"]
    assert pool.protocol == "http/1.1"
    assert pool.maxStreams == DEFAULT_MAX_STREAMS == 100


def test_h2():
    pool = loadBytes(config('protocol = "h2"\nmax_streams = 8\n'), "lb.toml").pools["grpc"]
    assert (pool.protocol, pool.maxStreams) == ("h2", 8)


def test_unknownProtocol():
    assert loadError(config('protocol = "h3"\n')) == "pools.grpc.protocol: expected one of h2, http/1.1, got 'h3'"


def test_maxStreamsRange():
    assert loadError(config('protocol = "h2"\nmax_streams = 0\n')).startswith("pools.grpc.max_streams: ")


def test_maxStreamsWithoutH2():
    assert loadError(config("max_streams = 10\n")) == (
        'pools.grpc.max_streams: expected only with protocol = "h2" '
        "(HTTP/1.1 carries one request per connection)"
    )


@pytest.mark.parametrize("mode", ["tcp", "imap", "pop3"])
def test_notForOtherModes(mode):
    assert loadError(config('protocol = "h2"\n', mode=mode)) == (
        f"listeners.web.pool: pool 'grpc' speaks HTTP/2 to its servers (protocol), which a {mode} "
        'listener does not do; expected mode = "http", or a pool without protocol'
    )


def test_sendProxyRefused():
    assert loadError(config('protocol = "h2"\nsend_proxy = "v2"\n')) == (
        'pools.grpc.send_proxy: expected "none" with protocol = "h2": streams of many clients share '
        "a server connection, whose PROXY header could name only one"
    )


def test_reuseModeRefused():
    assert loadError(config('protocol = "h2"\nreuse = { mode = "never" }\n')) == (
        'pools.grpc.reuse.mode: expected no reuse.mode with protocol = "h2": '
        "streams of any client share the server connections"
    )


def test_reuseMaxIdleRefused():
    assert loadError(config('protocol = "h2"\nreuse = { max_idle = 4 }\n')).startswith(
        'pools.grpc.reuse.max_idle: expected no reuse.max_idle with protocol = "h2"'
    )


def test_idleTimeoutApplies():
    pool = loadBytes(config('protocol = "h2"\nreuse = { idle_timeout = "30s" }\n'), "lb.toml").pools["grpc"]
    assert pool.reuseIdleTimeout == 30.0
