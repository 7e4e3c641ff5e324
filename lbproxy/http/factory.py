"""
The factory of an HTTP listener (C{mode = "http"}): what the listener's
connections share (router, path normaliser, rewriter, head writer, the
backend pools of the pools it routes to, the write batch, the timer wheel).
"""

from __future__ import annotations

from lbproxy._twisted.writebatch import WriteBatch
from lbproxy.core.pool import Pool
from lbproxy.core.timers import TimerWheel
from lbproxy.http.backend import BackendPool
from lbproxy.http.front import HTTPProxyProtocol
from lbproxy.http.listener import HTTPListenerFactory
from lbproxy.http.paths import PathNormalizer
from lbproxy.http.persistence import CookiePersistence
from lbproxy.http.rewrite import RequestRewriter
from lbproxy.http.routing import Router
from lbproxy.http.serialize import HeadWriter

class PoolRoute:
    """
    What a listener keeps per pool it routes to.

    @ivar pool: the L{Pool}.
    @ivar backends: its L{BackendPool} (connector, idle connections).
    @ivar persistence: its L{CookiePersistence}, or L{None} without cookie.
    """

    __slots__ = ("pool", "backends", "persistence")

    def __init__(self, pool: Pool, reactor) -> None:
        self.pool = pool
        if pool.options is not None and pool.options.protocol == "h2":
            from lbproxy.http2.upstream import H2BackendPool

            self.backends = H2BackendPool(pool, reactor)
        else:
            self.backends = BackendPool(pool, reactor)
        cookie = pool.options.cookie if pool.options is not None else None
        self.persistence = CookiePersistence(cookie, reactor) if cookie is not None else None


class HTTPProxyFactory(HTTPListenerFactory):
    """
    Serves one HTTP listener.

    @ivar listener: the live L{lbproxy.core.model.Listener} (its C{config}
        an L{lbproxy.http.config.HTTPListenerConfig}).
    @ivar pools: the live pools by name (the listener's and its routes').
    @ivar router: the listener's L{Router}.
    @ivar paths: the listener's L{PathNormalizer}, or L{None} when it does
        not normalise paths.
    @ivar rewriter: the listener's L{RequestRewriter}.
    @ivar privateBackends: the L{BackendPool}s whose idle connections each
        serve one client connection (reuse mode C{"never"}).
    @ivar secure: clients connect with TLS (X-Forwarded-Proto https, Secure
        persistence cookies).
    @ivar accessLog: the listener's L{lbproxy.http.accesslog.AccessLog}.
    @ivar staleRetries: requests sent again after the keep-alive race.
    @ivar redispatched: requests sent again to another server after a fresh
        connection closed under them.
    @ivar stopping: the listener is stopping: responses close their
        connections.
    @ivar timers: the L{TimerWheel} of the connections' phase deadlines.
    """

    protocol = HTTPProxyProtocol

    def __init__(self, listener, pools: dict[str, Pool] | Pool, reactor) -> None:
        if isinstance(pools, Pool):
            pools = {pools.name: pools}
        super().__init__(listener, reactor)
        listener = self.config
        self.pools = pools
        self.router = Router(listener, pools)
        self.paths = PathNormalizer(listener.paths) if listener.paths.normalize else None
        self.writer = HeadWriter()
        self.rewriter = RequestRewriter(listener, writer=self.writer)
        self.secure = self.rewriter.proto == "https"
        self._routes: dict[Pool, PoolRoute] = {}
        self.privateBackends: list[BackendPool] = []
        used = [pools[listener.pool]] + [pools[route.pool] for route in listener.routes]
        for pool in used:
            self.routeFor(pool)
        timeouts = [
            listener.requestTimeout,
            listener.keepaliveTimeout,
            listener.idleTimeout,
        ]
        for route in self._routes.values():
            options = route.pool.options
            timeouts += [options.responseTimeout, options.serverTimeout]
        # A phase expires at most a quarter of a second late (or a quarter
        # of the shortest timeout, when one is shorter than a second).
        shortest = min((t for t in timeouts if t and t > 0), default=1.0)
        self.timers = TimerWheel(reactor, min(1.0, shortest) / 4)
        self.writes = WriteBatch(reactor)
        self.staleRetries = 0
        self.redispatched = 0
        #: The listener's HTTP/2 settings, or None; h2c: prior knowledge
        #: on a plaintext listener.
        self.http2 = listener.http2
        self.h2c = listener.http2 is not None and listener.http2.cleartext

    def __repr__(self) -> str:
        return f"<HTTPProxyFactory {self.listener.name}>"

    def routeFor(self, pool: Pool) -> PoolRoute:
        """
        The listener's L{PoolRoute} of C{pool}.
        """
        route = self._routes.get(pool)
        if route is None:
            route = self._routes[pool] = PoolRoute(pool, self._reactor)
            if route.backends.mode == "never":
                self.privateBackends.append(route.backends)
        return route

    @property
    def routes(self) -> list[PoolRoute]:
        return list(self._routes.values())

    def stopFactory(self) -> None:
        """
        The listener stopped: close idle backend connections and the access
        log (records of requests still in flight are dropped).
        """
        self.stopping = True
        for route in self._routes.values():
            route.backends.closeIdle()
        self.accessLog.close()
