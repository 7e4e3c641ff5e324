"""
The C{[listeners.NAME.http2]} table of an HTTP listener: whether clients
may speak HTTP/2 to it, and the limits each HTTP/2 connection is held to.

HTTP/2 is offered on a TLS listener by ALPN (C{h2} before C{http/1.1}),
and with C{cleartext = true} on a plaintext listener to clients that
start with the HTTP/2 connection preface (prior knowledge, C{h2c}). The
same listener keeps serving HTTP/1.1 clients.

The flood limits count what a client may send in any C{flood_window}
(RST_STREAM, PING, SETTINGS, PRIORITY, DATA frames without data); past one the
connection is closed with GOAWAY C{ENHANCE_YOUR_CALM}.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: The largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
MAX_WINDOW = (1 << 31) - 1
#: The ALPN protocols of a listener with HTTP/2, in preference order.
ALPN_WITH_H2 = ("h2", "http/1.1")


@dataclass(frozen=True)
class HTTP2Settings:
    """
    The HTTP/2 settings of one listener (see the module docstring).

    @ivar cleartext: accept prior-knowledge HTTP/2 on a plaintext listener.
    @ivar maxConcurrentStreams: streams a client may have open at once
        (SETTINGS_MAX_CONCURRENT_STREAMS).
    @ivar initialWindowSize: bytes of a request body a client may send on
        a stream before lbproxy has passed them on
        (SETTINGS_INITIAL_WINDOW_SIZE).
    @ivar connectionWindowSize: the same for all streams together.
    @ivar maxFrameSize: the largest frame payload a client may send.
    @ivar maxRequests: streams one connection may open in all; then it is
        closed gracefully (GOAWAY C{NO_ERROR}) after its last response.
    @ivar floodWindow: seconds over which the flood limits count.
    @ivar maxResets: streams a client may reset per window.
    @ivar maxPings: PING frames per window.
    @ivar maxSettings: SETTINGS frames per window.
    @ivar maxEmptyFrames: DATA frames without data (and not ending their
        stream) per window.
    @ivar maxPriority: PRIORITY frames per window.
    """

    cleartext: bool = False
    maxConcurrentStreams: int = 100
    initialWindowSize: int = 65535
    connectionWindowSize: int = 1 << 20
    maxFrameSize: int = 16384
    maxRequests: int = 1000
    floodWindow: float = 10.0
    maxResets: int = 100
    maxPings: int = 50
    maxSettings: int = 50
    maxEmptyFrames: int = 100
    maxPriority: int = 100


def parseHTTP2(t, tlsTable, common: dict) -> HTTP2Settings | None:
    """
    The listener's C{http2} table (L{None} when HTTP/2 is not enabled).
    With HTTP/2 on a TLS listener whose C{tls.alpn} is not set,
    C{common["tls"]} is replaced by one offering C{h2} then C{http/1.1}.

    @param t: the C{http2} table.
    @param tlsTable: the listener's C{tls} table.
    @param common: the listener's common settings (its C{tls} config).
    """
    tls = common["tls"]
    enabled = t.boolean("enabled", False) if t.present else False
    offered = tls.alpn if tls is not None else ()
    if not enabled:
        if "h2" in offered:
            tlsTable.fail("alpn", 'expected no "h2" without [http2] enabled = true (the listener would not speak it)')
        if t.present:
            for key in sorted(set(t.data) - {"enabled"}):
                t.fail(key, "expected only with enabled = true")
        return None
    cleartext = t.boolean("cleartext", False)
    if tls is None and not cleartext:
        t.fail(
            "enabled",
            "expected a [tls] table (HTTP/2 by ALPN) or cleartext = true (prior-knowledge h2c) on this listener",
        )
    if tls is not None:
        if cleartext:
            t.fail("cleartext", "expected only on a listener without TLS (a TLS listener offers h2 by ALPN)")
        if "alpn" in tlsTable.data:
            if "h2" not in offered:
                tlsTable.fail("alpn", 'expected "h2" in the list with [http2] enabled = true')
            if "http/1.1" in offered and offered.index("http/1.1") < offered.index("h2"):
                tlsTable.fail("alpn", 'expected "h2" before "http/1.1" (the first protocol both sides offer is chosen)')
        else:
            common["tls"] = dataclasses.replace(tls, alpn=ALPN_WITH_H2)
    settings = HTTP2Settings(
        cleartext=cleartext,
        maxConcurrentStreams=t.integer("max_concurrent_streams", 1, 10000, 100),
        initialWindowSize=t.integer("initial_window_size", 1024, MAX_WINDOW, 65535),
        connectionWindowSize=t.integer("connection_window_size", 65535, MAX_WINDOW, 1 << 20),
        maxFrameSize=t.integer("max_frame_size", 16384, 16777215, 16384),
        maxRequests=t.integer("max_requests", 1, 1 << 31, 1000),
        floodWindow=t.duration("flood_window", 10.0),
        maxResets=t.integer("max_resets", 1, 1_000_000, 100),
        maxPings=t.integer("max_pings", 1, 1_000_000, 50),
        maxSettings=t.integer("max_settings", 1, 1_000_000, 50),
        maxEmptyFrames=t.integer("max_empty_frames", 1, 1_000_000, 100),
        maxPriority=t.integer("max_priority", 1, 1_000_000, 100),
    )
    t.done()
    return settings
