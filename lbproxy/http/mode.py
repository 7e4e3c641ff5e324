"""
The HTTP front as the registry sees it (C{mode = "http"}).
"""

from __future__ import annotations

from lbproxy.modes import FLOW_KEYS, FrontMode, PoolSetting, TLSRules


class HTTPMode(FrontMode):
    name = "http"
    description = "HTTP/1.1 and HTTP/2 reverse proxy (layer 7): routes, persistence, keep-alive to the servers"
    listenerKeys = (
        "routes",
        "trusted_proxies",
        "forwarded",
        "access_log",
        "log_requests",
        "limits",
        "paths",
        "redirect_https",
        "http2",
    )
    timeoutKeys = ("request", "keepalive", "tunnel")
    #: What an HTTP request offers to hash (L{lbproxy.http.context.HTTPFlowContext}).
    selectionKeys = FLOW_KEYS | {"uri", "path", "host", "header:", "cookie:", "url_param:"}
    poolSettings = (
        PoolSetting("cookie", "cookie", None, strict=True, what="has cookie persistence"),
        PoolSetting("reuse.max_idle", "reuseMaxIdle", 16),
        PoolSetting("reuse.mode", "reuseMode", "safe"),
        PoolSetting("reuse.idle_timeout", "reuseIdleTimeout", 15.0),
        PoolSetting("timeouts.response", "responseTimeout", 30.0),
        PoolSetting("timeouts.server", "serverTimeout", 60.0),
        PoolSetting("protocol", "protocol", "http/1.1", strict=True, what="speaks HTTP/2 to its servers"),
        PoolSetting("max_streams", "maxStreams", 100),
    )
    # "h2" only with [http2] enabled (L{lbproxy.http2.config}), which then
    # offers it first when the tls table names no alpn.
    tlsRules = TLSRules(alpn=("http/1.1",), alpnAllowed=("h2", "http/1.1"), clientSubjectHeader=True)

    def parseListener(self, table, timeouts, common, pools):
        from lbproxy.http.config import parseHTTPListener

        return parseHTTPListener(table, timeouts, common, pools)

    def checkPool(self, table, listener, name, pool) -> None:
        if pool.sendProxy != "none" and pool.reuseMaxIdle:
            table.fail(
                "pool",
                f"pool {name!r} sends the PROXY protocol on reused backend connections, "
                "which would announce one client's address for another's requests; "
                'expected reuse.max_idle = 0 or send_proxy = "none"',
            )

    def buildFactory(self, listener, pools, reactor, serverTLS=None):
        if listener.config.redirectHttps is not None:
            from lbproxy.http.redirect import RedirectFactory

            return RedirectFactory(listener, reactor)
        from lbproxy.http.factory import HTTPProxyFactory

        return HTTPProxyFactory(listener, pools, reactor)

    def handshakeTimeout(self, config) -> float:
        # A client has its request timeout for the handshake and the
        # request head together.
        return config.requestTimeout
