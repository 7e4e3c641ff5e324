"""
The service tree of a running lbproxy::

    BalancerService (MultiService)
      health        MultiService, one HealthMonitor per checked pool
      listener:NAME StreamServerEndpointService, one per listener

Later packages (admin, ha) add their services beside these.
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString

from lbproxy.config import Config, ListenerConfig
from lbproxy.health.monitor import HealthMonitor
from lbproxy.pool import Pool
from lbproxy.runtime import Balancer


def frontFactory(listener: ListenerConfig, pools: dict[str, Pool], reactor):
    """
    The protocol factory serving one listener, by its mode.

    @param pools: every live pool by name: an HTTP listener's routes may
        send requests to pools other than its own.
    """
    if listener.mode == "tcp":
        from lbproxy.tcp import TCPProxyFactory

        return TCPProxyFactory(listener, pools[listener.pool], reactor=reactor, pools=pools)
    if listener.mode == "http":
        from lbproxy.http.front import HTTPProxyFactory

        return HTTPProxyFactory(listener, pools, reactor)
    raise ValueError(f"unknown listener mode {listener.mode!r}")


class BalancerService(MultiService):
    """
    Everything one config runs: health monitors and listeners.

    @ivar balancer: the live pools, shared by all fronts.
    """

    def __init__(self, config: Config, reactor) -> None:
        super().__init__()
        self._reactor = reactor
        self.config = config
        self.balancer = Balancer(config)
        health = MultiService()
        health.setName("health")
        health.setServiceParent(self)
        for pool in self.balancer.pools.values():
            if pool.options.health is not None:
                HealthMonitor(pool, reactor=reactor).setServiceParent(health)
        for listener in config.listeners.values():
            endpoint = serverFromString(reactor, listener.bind)
            factory = frontFactory(listener, self.balancer.pools, reactor)
            service = StreamServerEndpointService(endpoint, factory)
            # Bind errors (port in use, permission) stop startup with a clear
            # error instead of being logged while the daemon runs without
            # the listener.
            service._raiseSynchronously = True
            service.setName(f"listener:{listener.name}")
            service.setServiceParent(self)
