"""
The service tree of a running lbproxy::

    BalancerService (MultiService)
      health        MultiService, one HealthMonitor per checked pool
      stick         StickSweeper, when a pool has a stick table
      listener:NAME ListenerService, one per listener

A listener with C{[tls]} (and no STARTTLS) gets its front's factory
wrapped in TLS termination (L{lbproxy.tls.server.wrapFactory}); its
L{ServerTLS} is kept in L{BalancerService.serverTLS} so that
L{BalancerService.reloadTLS} can read the certificates again. With
C{accept_proxy}, a listener whose front does not read the PROXY header
itself gets an L{lbproxy.core.acceptproxy.AcceptProxyFactory} outermost, so
the header is read before the handshake.

Later packages (admin, ha) add their services beside these: with
C{[ha]}, the heartbeat (L{lbproxy.ha.service.HAService}) is the C{ha}
child, added last.
"""

from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet.defer import DeferredList, maybeDeferred
from twisted.logger import Logger

from lbproxy.config import Config, ListenerConfig
from lbproxy.core.acceptproxy import AcceptProxyFactory
from lbproxy.core.model import Balancer, Listener
from lbproxy.core.pool import Pool
from lbproxy.core.stick import StickSweeper
from lbproxy.errors import ConfigError
from lbproxy.health.monitor import HealthMonitor
from lbproxy.listening import ListenerService
from lbproxy.openfiles import OpenFileLimit
from lbproxy.tls.server import ServerTLS, wrapFactory


def loadListenerTLS(config: Config) -> dict[str, ServerTLS]:
    """
    The loaded L{ServerTLS} of every listener with C{[tls]}, by listener
    name.

    @raise ConfigError: a certificate, key or CA file is unusable.
    """
    loaded = {}
    for listener in config.listeners.values():
        if listener.tls is not None:
            serverTLS = ServerTLS(listener.name, listener.tls, config.source)
            serverTLS.load()
            loaded[listener.name] = serverTLS
    return loaded


def frontFactory(listener: Listener | ListenerConfig, pools: dict[str, Pool], reactor, serverTLS: ServerTLS | None = None):
    """
    The protocol factory serving one listener, built by the front of its
    mode (L{lbproxy.modes}).

    @param pools: every live pool by name: an HTTP listener's routes may
        send requests to pools other than its own.
    @param serverTLS: the listener's loaded certificates when it has
        C{[tls]}: for fronts that start TLS themselves (STARTTLS); implicit
        TLS is added around the returned factory by the caller.
    """
    listener = Listener.of(listener)
    return listener.mode.buildFactory(listener, pools, reactor, serverTLS)


def wrapFront(listener: Listener | ListenerConfig, front, reactor, serverTLS: ServerTLS | None = None):
    """
    What a listener's port serves: its C{front} factory inside TLS
    termination (implicit TLS) and, with C{accept_proxy} on a listener
    whose front does not read the PROXY header itself, inside an
    L{AcceptProxyFactory}, so the header is read before the handshake.

    @param listener: the live listener (or, outside a balancer, its config).
    """
    listener = Listener.of(listener)
    config = listener.config
    mode = listener.mode
    factory = front
    if config.tls is not None and not config.tls.starttls:
        factory = wrapFactory(serverTLS, factory, reactor, mode.handshakeTimeout(config))
    if config.acceptProxy and not mode.readsProxyHeader(config):
        factory = AcceptProxyFactory(factory, listener, reactor)
    return factory


class BalancerService(MultiService):
    """
    Everything one config runs: health monitors and listeners.

    @ivar balancer: the live model (L{Balancer}): the pools and listeners
        every front, check and operation works on.
    @ivar serverTLS: the L{ServerTLS} of each listener with C{[tls]}, by
        listener name.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor,
        serverTLS: dict[str, ServerTLS] | None = None,
        balancer: Balancer | None = None,
    ) -> None:
        """
        @param serverTLS: the listeners' certificates and C{balancer} the
            pools, already loaded (by the command line's checks); by
            default both are built here.
        @raise ConfigError: a TLS file is unusable.
        """
        super().__init__()
        self._reactor = reactor
        self.config = config
        self.balancer = Balancer(config) if balancer is None else balancer
        self.balancer.setClock(reactor)
        self.serverTLS = loadListenerTLS(config) if serverTLS is None else serverTLS
        health = MultiService()
        health.setName("health")
        health.setServiceParent(self)
        for pool in self.balancer.pools.values():
            if pool.options.health is not None:
                HealthMonitor(pool, reactor=reactor).setServiceParent(health)
        if any(pool.stick is not None for pool in self.balancer.pools.values()):
            sweeper = StickSweeper(self.balancer, reactor)
            sweeper.setName("stick")
            sweeper.setServiceParent(self)
        for listener in self.balancer.listeners.values():
            serverTLS = self.serverTLS.get(listener.name)
            listener.factory = listener.mode.buildFactory(listener, self.balancer.pools, reactor, serverTLS)
            factory = wrapFront(listener, listener.factory, reactor, serverTLS)
            # Bind errors (port in use, permission) stop startup with one
            # line naming the listener instead of being logged while the
            # daemon runs without it.
            ListenerService(listener, config.source, factory, reactor).setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Raise the open-file limit as far as the listeners' C{maxconn}
        need (see L{lbproxy.openfiles}), then open the listeners' sockets,
        both before twistd drops privileges.
        """
        OpenFileLimit(self.config).apply()
        super().privilegedStartService()

    def stopService(self):
        """
        Stop the children, the last added first, as a C{MultiService}
        does; but the children whose C{stopsFirst} is true (the HA
        heartbeat, which hands the virtual addresses over while the
        listeners still serve) are stopped, and waited for, before the
        others are asked to.
        """
        first = [s for s in self if getattr(s, "stopsFirst", False) and s.running]
        if not first:
            return super().stopService()
        Service.stopService(self)

        def rest(_):
            return DeferredList(
                [maybeDeferred(s.stopService) for s in reversed(list(self)) if s not in first]
            )

        stopped = DeferredList([maybeDeferred(s.stopService) for s in first])
        return stopped.addCallback(rest).addCallback(lambda _: None)

    def reloadTLS(self) -> dict[str, str | None]:
        """
        Read the certificates of every TLS listener and every pool with
        TLS again. Each one that loads serves new connections from now on;
        one that fails is logged in one line naming the file and keeps
        serving what it had. Established connections are not touched.

        @return: by C{listener:NAME} / C{pool:NAME}, L{None} for a success
            or the error's line.
        """
        results: dict[str, str | None] = {}
        targets = [("listener", name, serverTLS) for name, serverTLS in self.serverTLS.items()]
        for pool in self.balancer.pools.values():
            tls = getattr(pool, "tls", None)
            if tls is not None:
                targets.append(("pool", pool.name, tls))
        for kind, name, tls in targets:
            key = f"{kind}:{name}"
            try:
                tls.reload()
            except ConfigError as error:
                results[key] = str(error)
                self.log.error(
                    "TLS reload of {kind} {name} failed, the previous certificates keep serving: {error}",
                    kind=kind,
                    name=name,
                    error=str(error),
                )
            except Exception as error:
                results[key] = f"{type(error).__name__}: {error}"
                self.log.failure(
                    "TLS reload of {kind} {name} failed, the previous certificates keep serving",
                    kind=kind,
                    name=name,
                )
            else:
                results[key] = None
                self.log.info("TLS reload of {kind} {name}: certificates loaded", kind=kind, name=name)
        return results
