"""
The TCP front as the registry sees it (C{mode = "tcp"}).
"""

from __future__ import annotations

from lbproxy.modes import FLOW_KEYS, FrontMode


class TCPMode(FrontMode):
    name = "tcp"
    description = "relays each connection to a server (layer 4), optionally routed by the TLS server name"
    listenerKeys = ("routes", "sni_fallback")
    timeoutKeys = ("hello",)
    #: "sni": the server name of the ClientHello, on listeners with SNI routes.
    selectionKeys = FLOW_KEYS | {"sni"}

    def parseListener(self, table, timeouts, common, pools):
        from lbproxy.tcp.config import parseTCPListener

        return parseTCPListener(table, timeouts, common, pools)

    def checkPool(self, table, listener, name, pool) -> None:
        if not listener.routes and pool.selectorOptions.get("key") == "sni":
            table.fail(
                "pool",
                f"pool {name!r} hashes on key 'sni', which only a TCP listener with SNI routes provides",
            )

    def buildFactory(self, listener, pools, reactor, serverTLS=None):
        from lbproxy.tcp.front import TCPProxyFactory

        return TCPProxyFactory(listener, pools[listener.config.pool], reactor=reactor, pools=pools)
