"""
The service tree of a running lbproxy::

    BalancerService (MultiService)
      health        MultiService, one HealthMonitor per checked pool
      stick         StickSweeper, dropping the stick tables' expired entries
      listener:NAME ListenerService, one per listener

A reload (L{BalancerService.reload}, L{lbproxy.reload}) changes the tree
while it runs: monitors and listener services come and go, and the
listeners kept get new factories on the sockets they hold.

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

import os
from collections.abc import Callable

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
from lbproxy.openfiles import OpenFileLimit, descriptorsNeeded
from lbproxy.sockets import tcpBind
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
        #: How a reload reads the configuration again (set by the twistd
        #: plugin); None: this service cannot reload.
        self.loader: Callable[[], Config] | None = None
        #: The L{lbproxy.interfaces.IReloadObserver}s told of each reload
        #: (systemd's notifications).
        self.reloadObservers: list = []
        self.started = reactor.seconds()
        self.reloads = {"applied": 0, "refused": 0}
        self.lastReload: dict | None = None
        self.balancer.addPart("process", self.processInfo)
        self.health = MultiService()
        self.health.setName("health")
        self.health.setServiceParent(self)
        for pool in self.balancer.pools.values():
            self.startMonitor(pool)
        # Pools that a reload adds may have stick tables: the sweeper reads
        # the pools on each turn.
        sweeper = StickSweeper(self.balancer, reactor)
        sweeper.setName("stick")
        sweeper.setServiceParent(self)
        #: The L{ListenerService} of each listener by name.
        self.listenerServices: dict[str, ListenerService] = {}
        for listener in self.balancer.listeners.values():
            # Bind errors (port in use, permission) stop startup with one
            # line naming the listener instead of being logged while the
            # daemon runs without it.
            factory, front = self.buildFront(listener)
            self.addListenerService(self.listenerService(listener, config.source, factory, front))
        #: The admin listener (L{lbproxy.admin.service.AdminService}), or
        #: None without C{[admin]}.
        self.admin = None
        if config.admin is not None:
            self.setAdmin(self.buildAdmin(config.admin))

    def buildAdmin(self, config):
        from lbproxy.admin.service import AdminService

        return AdminService(self, config, self._reactor)

    def setAdmin(self, admin) -> None:
        """
        Serve the admin listener C{admin} (None: none) instead of the one
        before, which closes.
        """
        if self.admin is not None:
            self.removeService(self.admin)
        self.admin = admin
        if admin is not None:
            admin.setServiceParent(self)

    def buildFront(self, listener: Listener) -> tuple:
        """
        C{(factory, front)} serving C{listener} now: the front its mode
        builds from its config (set as C{listener.factory}), and what its
        port serves (the front in its TLS and PROXY header layers).

        Each front gets its own copy of the pools by name: what it was
        built with stays valid for its connections after a reload removed
        a pool.
        """
        serverTLS = self.serverTLS.get(listener.name)
        front = listener.mode.buildFactory(listener, dict(self.balancer.pools), self._reactor, serverTLS)
        listener.factory = front
        return wrapFront(listener, front, self._reactor, serverTLS), front

    def listenerService(self, listener: Listener, source: str, factory, front):
        """
        The service that opens C{listener}'s socket and serves C{factory}
        on it (a worker's opens it with C{SO_REUSEPORT}; the control
        process of workers opens none: L{lbproxy.workers}).
        """
        return ListenerService(listener, source, factory, self._reactor, front)

    def refreshCounters(self):
        """
        None: the counters of this process's model are the whole
        balancer's. (The control process of workers returns a L{Deferred}
        firing once the workers' counters are in its model.)
        """
        return None

    def addListenerService(self, service: ListenerService) -> None:
        service.grace = self.graceFor(service.listener.config)
        self.listenerServices[service.listener.name] = service
        service.setServiceParent(self)

    def graceFor(self, listener: ListenerConfig) -> float:
        """
        The seconds the sessions of C{listener} get to end when the daemon
        stops: C{[daemon] grace}, but none for a listener on a virtual
        address of C{[ha]}: the heartbeat handed that address to the peer
        before the listeners stop, so the clients' packets reach the peer
        from then on and these sessions cannot go on.
        """
        ha = self.config.ha
        bind = tcpBind(listener.bind)
        if ha is not None and bind is not None and ha.isVirtual(bind[1]):
            return 0.0
        return self.config.daemon.grace

    def retireListener(self, name: str, reason: str = "") -> None:
        """
        Listener C{name} leaves the configuration: its socket closes, its
        sessions end (as long as they take), then it is gone.
        """
        self.balancer.retireListener(name, reason)
        service = self.listenerServices.pop(name)
        # Its name is free for a listener of that name bound elsewhere.
        self.namedServices.pop(service.name, None)
        service.name = f"{service.name} (draining)"
        self.namedServices[service.name] = service
        service.grace = None

        def drained(_):
            if service.parent is self and self.running:
                self.removeService(service)

        service.drain().addCallback(drained)

    def startMonitor(self, pool: Pool) -> None:
        """
        Probe C{pool}'s servers, when it has health checks.
        """
        if pool.options.health is not None:
            HealthMonitor(pool, reactor=self._reactor).setServiceParent(self.health)

    def stopMonitor(self, name: str) -> None:
        """
        Stop probing the servers of pool C{name}.
        """
        if name in self.health.namedServices:
            self.health.removeService(self.health.getServiceNamed(name))

    def reload(self, who: str = "SIGHUP") -> tuple[bool, str]:
        """
        Read the configuration again and run it (L{lbproxy.reload}): on
        success the change is applied and logged in one line; an invalid
        configuration is refused in one line and the running one stays.

        @param who: who asked, for the log (C{"SIGHUP"}, an API client).
        @return: C{(applied, the line logged)}.
        """
        from lbproxy.reload import Applier, ReloadRefused, prepare

        for observer in self.reloadObservers:
            observer.reloading()
        try:
            if not self.running:
                raise ReloadRefused("lbproxy is stopping")
            if self.loader is None:
                raise ReloadRefused("this lbproxy was started without a configuration to read again")
            try:
                config = self.loader()
            except ConfigError as error:
                raise ReloadRefused(str(error)) from error
            plan = prepare(self, config)
        except ReloadRefused as refused:
            line = f"reload asked by {who} refused, the running configuration stays: {refused}"
            self.log.error("{line}", line=line, who=who)
            ok = False
        else:
            summary = plan.describe()
            before = descriptorsNeeded(self.config).total
            Applier(self, plan, f"reload by {who}").apply()
            after = descriptorsNeeded(config).total
            if after is None or (before is not None and after > before):
                # The new listeners or servers need more descriptors.
                OpenFileLimit(config).apply()
            line = f"reload asked by {who} applied: {config.source}: {summary}"
            self.log.info("{line}", line=line, who=who)
            ok = True
        self.reloads["applied" if ok else "refused"] += 1
        self.lastReload = {"ok": ok, "time": self._reactor.seconds(), "who": who, "result": line}
        for observer in self.reloadObservers:
            observer.reloaded(ok, line)
        return ok, line

    def processInfo(self) -> dict:
        """
        The daemon itself as plain data (part of the balancer's snapshot):
        its process id, when it started, its configuration file, its
        reloads.
        """
        return {
            "pid": os.getpid(),
            "started": self.started,
            "config": self.config.source,
            "reloads": dict(self.reloads),
            "lastReload": self.lastReload,
        }

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
        Stop gracefully: first the children whose C{stopsFirst} is true
        (the HA heartbeat, which hands the virtual addresses over while
        the listeners still serve), then the listeners (each closes its
        socket and lets its sessions end within C{[daemon] grace}), then
        the others (health checks, the admin listener), the last added
        first. The returned L{Deferred} holds twistd's shutdown until
        all of it is done.
        """
        Service.stopService(self)
        children = list(self)
        first = [s for s in children if getattr(s, "stopsFirst", False) and s.running]
        listeners = [s for s in children if isinstance(s, ListenerService) or getattr(s, "stopsWithListeners", False)]
        rest = [s for s in reversed(children) if s not in first and s not in listeners]

        def stopAll(services):
            return lambda _: DeferredList([maybeDeferred(s.stopService) for s in services])

        stopped = stopAll(first)(None)
        stopped.addCallback(stopAll(listeners)).addCallback(stopAll(rest))
        return stopped.addCallback(lambda _: None)

    def reopenLogs(self) -> int:
        """
        Open the HTTP listeners' access log files again (they were rotated
        away), those of fronts a reload retired included; return how many.
        """
        reopened = 0
        for service in self:
            if isinstance(service, ListenerService):
                switch = service.switch
                for front in [switch.front, *(front for _, front in switch.retiring)]:
                    accessLog = getattr(front, "accessLog", None)
                    if accessLog is not None and accessLog.path is not None:
                        accessLog.reopen()
                        reopened += 1
        self.log.info("reopened {count} access log files", count=reopened)
        return reopened

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
