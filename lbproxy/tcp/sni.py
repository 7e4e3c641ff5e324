"""
SNI routes of a TCP listener: the pool is chosen by the server name of the
client's TLS ClientHello, read without terminating TLS
(L{lbproxy.tls.clienthello}).
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress

from lbproxy.core.context import FlowContext


class SNIFlowContext(FlowContext):
    """
    Selection context of a connection of a listener with SNI routes: also
    provides key C{"sni"}, the server name of its ClientHello (None
    without one, and the flow is then placed as a hashing selector places
    flows without a key).
    """

    def __init__(self, client: IAddress, local: IAddress, sni: str | None) -> None:
        super().__init__(client, local)
        self.sni = sni

    def key(self, spec: str) -> bytes | None:
        if spec == "sni":
            return None if self.sni is None else self.sni.encode("ascii")
        return super().key(spec)


class SNIRoutes:
    """
    The SNI routes of a TCP listener: server name to pool.

    An exact name wins; then the most specific C{*.example.com} wildcard
    whose suffix ends the name (any depth below it, not C{example.com}
    itself); among routes naming the same name, the first.
    """

    def __init__(self, routes, pools: dict) -> None:
        self.exact: dict[str, object] = {}
        self.wildcards: dict[str, object] = {}
        for route in routes:
            pool = pools[route.pool]
            for name in route.sni:
                if name.startswith("*."):
                    self.wildcards.setdefault(name[1:], pool)
                else:
                    self.exact.setdefault(name, pool)

    def __bool__(self) -> bool:
        return bool(self.exact or self.wildcards)

    def poolFor(self, name: str):
        """
        The pool routed to for server name C{name} (lower case), or None.
        """
        pool = self.exact.get(name)
        if pool is not None or not self.wildcards:
            return pool
        dot = name.find(".")
        while dot >= 0:
            pool = self.wildcards.get(name[dot:])
            if pool is not None:
                return pool
            dot = name.find(".", dot + 1)
        return None
