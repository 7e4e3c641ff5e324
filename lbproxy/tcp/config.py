"""
The settings of a TCP listener (C{mode = "tcp"}): its SNI routes, which
choose the pool by the server name of the client's TLS ClientHello.
"""

from __future__ import annotations

from dataclasses import dataclass

from lbproxy.config import ListenerConfig
from lbproxy.config.table import HOST_PATTERN, Table, oneOf, show

SNI_FALLBACK = ("default", "reject")


@dataclass(frozen=True)
class SNIRouteConfig:
    """
    One SNI route: server names (exact or C{*.example.com}, lower case)
    matched against the ClientHello's, read without terminating TLS.
    """

    pool: str
    sni: tuple[str, ...] = ()


@dataclass(frozen=True)
class TCPListenerConfig(ListenerConfig):
    """
    A TCP listener: what it adds to every listener's settings.

    @ivar sniFallback: with SNI routes, what a connection whose ClientHello
        is malformed or carries no server name gets: "default" (the
        listener's pool) or "reject" (closed).
    @ivar helloTimeout: with SNI routes, the time a client has to send its
        ClientHello.
    """

    mode: str = "tcp"
    routes: tuple[SNIRouteConfig, ...] = ()
    sniFallback: str = "default"
    helloTimeout: float = 5.0

    def poolsUsed(self) -> set[str]:
        used = super().poolsUsed()
        used.update(route.pool for route in self.routes)
        return used


def parseTCPListener(t: Table, timeouts: Table, common: dict, pools: dict) -> TCPListenerConfig:
    """
    Validate the TCP keys of a listener table; C{common} holds the
    settings every listener has.
    """
    if not common["pool"]:
        t.fail("pool", "required key is missing")
    routes = tuple(parseSNIRoute(t.tableAt("routes", index, item), pools) for index, item in enumerate(t.list("routes")))
    if routes and common["tls"] is not None:
        t.fail("routes", "expected either SNI routes (TLS passed through) or a [tls] table (TLS terminated), not both")
    if "sni_fallback" in t.data and not routes:
        t.fail("sni_fallback", "expected only with SNI routes")
    if "hello" in timeouts.data and not routes:
        timeouts.fail("hello", "expected only with SNI routes")
    return TCPListenerConfig(
        **common,
        routes=routes,
        sniFallback=t.choice("sni_fallback", SNI_FALLBACK, "default"),
        helloTimeout=timeouts.duration("hello", 5.0),
    )


def parseSNIRoute(t: Table, pools: dict) -> SNIRouteConfig:
    pool = t.string("pool", required=True)
    if pool not in pools:
        t.fail("pool", f"expected the name of a pool ({oneOf(pools)}), got {pool!r}")
    for key in ("host", "path_prefix", "path_regex", "header", "methods"):
        if key in t.data:
            t.fail(key, 'expected only in routes of a mode = "http" listener (TCP routes match sni)')
    value = t.get("sni", required=True)
    names = value if isinstance(value, list) else [value]
    if not names:
        t.fail("sni", "expected at least one server name")
    for name in names:
        if not isinstance(name, str) or not HOST_PATTERN.fullmatch(name.lower()):
            t.fail("sni", f'expected a server name such as "www.example.com" or "*.example.com", or an array of them, got {show(name)}')
    t.done()
    return SNIRouteConfig(pool=pool, sni=tuple(name.lower() for name in names))
