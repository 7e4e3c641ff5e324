"""
Tests for the C{[listeners.NAME.http2]} table of an HTTP listener
(L{lbproxy.http2.config}): defaults, ALPN, cleartext, limits; every error
is one exact line.
"""

from __future__ import annotations

import pytest

from lbproxy.config import loadBytes
from lbproxy.errors import ConfigError
from lbproxy.http2.config import HTTP2Settings

BASE = """\
[listeners.web]
bind = "tcp:8443"
pool = "web"
mode = "http"
LISTENER
[pools.web]
servers = [{ name = "a", address = "127.0.0.1:8081" }]
"""

TLS = """
[listeners.web.tls]
certificates = [{ cert = "site.pem", key = "site.key" }]
"""


def config(listener: str = "", tls: str | None = "") -> str:
    text = BASE.replace("LISTENER\n", listener)
    if tls is not None:
        text += TLS + tls
    return text


def load(text: str):
    return loadBytes(text.encode("utf-8"), "lb.toml").listeners["web"]


def loadError(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("lb.toml: ")
    return message[len("lb.toml: "):]


def test_offByDefault():
    listener = load(config())
    assert listener.http2 is None
    assert listener.tls.alpn == ("http/1.1",)


def test_enabledOffersH2First():
    listener = load(config("http2 = { enabled = true }\n"))
    assert listener.http2 == HTTP2Settings()
    assert listener.tls.alpn == ("h2", "http/1.1")


def test_explicitALPN():
    assert load(config("http2 = { enabled = true }\n", 'alpn = ["h2"]\n')).tls.alpn == ("h2",)
    assert loadError(config("http2 = { enabled = true }\n", 'alpn = ["http/1.1", "h2"]\n')) == (
        'listeners.web.tls.alpn: expected "h2" before "http/1.1" (the first protocol both sides offer is chosen)'
    )
    assert loadError(config("http2 = { enabled = true }\n", 'alpn = ["http/1.1"]\n')) == (
        'listeners.web.tls.alpn: expected "h2" in the list with [http2] enabled = true'
    )


def test_cleartext():
    listener = load(config("http2 = { enabled = true, cleartext = true }\n", tls=None))
    assert listener.http2.cleartext
    assert loadError(config("http2 = { enabled = true }\n", tls=None)) == (
        "listeners.web.http2.enabled: expected a [tls] table (HTTP/2 by ALPN) or cleartext = true "
        "(prior-knowledge h2c) on this listener"
    )
    assert loadError(config("http2 = { enabled = true, cleartext = true }\n")) == (
        "listeners.web.http2.cleartext: expected only on a listener without TLS (a TLS listener offers h2 by ALPN)"
    )


def test_settings():
    text = config(
        "http2 = { enabled = true, max_concurrent_streams = 10, initial_window_size = 1048576, "
        "connection_window_size = 4194304, max_frame_size = 32768, max_requests = 50, "
        'flood_window = "1s", max_resets = 5, max_pings = 6, max_settings = 7, max_empty_frames = 8, '
        "max_priority = 9 }\n"
    )
    assert load(text).http2 == HTTP2Settings(
        maxConcurrentStreams=10,
        initialWindowSize=1 << 20,
        connectionWindowSize=1 << 22,
        maxFrameSize=32768,
        maxRequests=50,
        floodWindow=1.0,
        maxResets=5,
        maxPings=6,
        maxSettings=7,
        maxEmptyFrames=8,
        maxPriority=9,
    )


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("max_concurrent_streams", "0", "expected an integer from 1 to 10000, got 0"),
        ("initial_window_size", "2147483648", "expected an integer from 1024 to 2147483647, got 2147483648"),
        ("max_frame_size", "1000", "expected an integer from 16384 to 16777215, got 1000"),
        ("max_resets", "true", "expected an integer from 1 to 1000000, got true"),
        ("bogus", "1", "unknown key"),
    ],
)
def test_badValues(key, value, expected):
    message = loadError(config(f"http2 = {{ enabled = true, {key} = {value} }}\n"))
    assert message == f"listeners.web.http2.{key}: {expected}"


def test_keysNeedEnabled():
    assert loadError(config("http2 = { max_pings = 5 }\n")) == "listeners.web.http2.max_pings: expected only with enabled = true"


def test_notWithRedirect():
    text = BASE.replace('pool = "web"\n', "").replace(
        "LISTENER\n", "redirect_https = 443\nhttp2 = { enabled = true, cleartext = true }\n"
    )
    assert loadError(text) == "listeners.web.http2: expected no http2 table with redirect_https (redirects are answered in HTTP/1.1)"


def test_onlyHTTPMode():
    text = config("http2 = { enabled = true }\n").replace('mode = "http"', 'mode = "tcp"')
    assert loadError(text) == 'listeners.web.http2: expected only with mode = "http"'
