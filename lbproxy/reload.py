"""
A full reload: the running balancer takes a new configuration without
closing a listening socket, dropping a connection or losing what it knows.

It happens in two steps. L{prepare} reads and checks everything that can
fail — the file, the certificates and keys of listeners and pools, the
new pools and servers, the new listeners' sockets — without changing what
runs; any problem refuses the reload (L{ReloadRefused}, one line) and the
running configuration stays. L{Plan.apply} then changes the live model in
one turn of the reactor, where nothing can fail any more:

  - A listener whose name and address stay keeps its socket (its accept
    queue with it); its new settings, front and certificates serve the
    connections accepted from then on, those already open finish with
    what they started with (an HTTP connection closes after its next
    response). A listener whose address changed is a new one: the new
    socket opens first, then the old one closes and its sessions end. A
    removed listener closes and its sessions end.
  - A pool keeps its live servers: a server whose name and address stay
    keeps its state (drain and maintenance included), health history and
    counters, and takes its new weight, C{backup}, C{maxconn} and cookie
    value. A server whose address changed is a new server under the same
    name: the old one leaves selection and is gone once its flows end,
    the new one starts up, as does a server added. A removed server
    leaves selection at once and is gone once its flows end. The pool's
    settings (retries, timeouts, queue, HTTP settings) apply to flows
    placed from then on; a changed selector is built anew; changed health
    checks restart with the history kept.
  - C{[ha]} is the heartbeat's: a reload that changes it is refused, as
    one that changes C{workers}.
  - C{[admin]}: the token file is read again; a new C{bind} opens the new
    socket with the new listeners, then the old one closes.
  - C{[daemon] grace} applies to the next stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.logger import Logger

from lbproxy.config import Config, PoolConfig
from lbproxy.config.endpoints import EndpointError, parseBind
from lbproxy.core.model import Listener, buildPool, buildServer
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.core.stick import StickTable
from lbproxy.errors import ConfigError
from lbproxy.listening import ListenerService, ListenerStartError
from lbproxy.selectors import findSelector
from lbproxy.tls.client import BackendTLS


class ReloadRefused(Exception):
    """
    The new configuration cannot be run; C{str()} is the one line saying
    why. Nothing changed.
    """


def sameAddress(old, new) -> bool:
    """
    Whether listener configs C{old} and C{new} listen on the same socket:
    the same address (however the C{bind} string spells it) and the same
    C{freebind}.
    """
    if old.freebind != new.freebind:
        return False
    if old.bind == new.bind:
        return True
    try:
        before, after = parseBind(old.bind), parseBind(new.bind)
    except EndpointError:
        return False
    return before is not None and before == after


@dataclass
class PoolPlan:
    """
    What becomes of one pool of the new configuration.

    @ivar pool: the live pool kept, or the new one built.
    @ivar new: whether C{pool} is new.
    @ivar selector: a new selector for a kept pool whose C{selector}
        changed, else None.
    @ivar tls: the pool's loaded TLS settings (new), or None.
    @ivar update: the server configs of servers kept.
    @ivar remove: the names of servers leaving (or changing address).
    @ivar add: the servers built for the pool (new or changed address).
    @ivar healthChanged: the health checks' settings changed.
    @ivar stickChanged: the C{[stick]} table changed: C{stick} replaces
        the pool's table (None: the pool has none any more); an unchanged
        table keeps its entries.
    """

    config: PoolConfig
    pool: Pool
    new: bool
    selector: object = None
    tls: BackendTLS | None = None
    update: list = field(default_factory=list)
    remove: list = field(default_factory=list)
    add: list = field(default_factory=list)
    healthChanged: bool = False
    stickChanged: bool = False
    stick: StickTable | None = None

    def describe(self) -> str:
        if self.new:
            return f"+{self.config.name}"
        parts = [f"+{s.name}" for s in self.add] + [f"-{name}" for name in self.remove]
        changed = any(
            (s.weight, s.backup, s.maxconn, s.cookie or s.name) != (live.weight, live.backup, live.maxconn, live.cookie)
            for s in self.update
            for live in (self.pool.server(s.name),)
        )
        if changed:
            parts.append("~servers")
        if self.selector is not None:
            parts.append("selector")
        if self.healthChanged:
            parts.append("health")
        if self.config != self.pool.options and not parts:
            parts.append("settings")
        return f"~{self.config.name}({' '.join(parts)})" if parts else ""


@dataclass
class Plan:
    """
    A checked reload, ready to apply (see the module docstring).
    """

    config: Config
    serverTLS: dict
    pools: list[PoolPlan]
    removedPools: list[str]
    kept: list[str]
    added: list[tuple[Listener, ListenerService]]
    removed: list[str]
    #: A new admin listener, opened (C{[admin]} added or bound elsewhere).
    admin: object = None
    #: The listeners kept whose settings changed.
    changed: list = field(default_factory=list)

    def describe(self) -> str:
        listeners = [f"+{listener.name}" for listener, _ in self.added] + [f"-{name}" for name in self.removed]
        listeners += [f"~{name}" for name in self.changed]
        pools = [d for d in (p.describe() for p in self.pools) if d] + [f"-{name}" for name in self.removedPools]
        return f"listeners {' '.join(listeners) or 'unchanged'}; pools {' '.join(pools) or 'unchanged'}"


def prepare(service, config: Config) -> Plan:
    """
    Check and build what C{config} needs beside the running C{service}
    (a L{lbproxy.service.BalancerService}), its new listeners' sockets
    opened last; nothing running is changed.

    @raise ReloadRefused: anything that would not run, in one line.
    """
    from lbproxy.service import loadListenerTLS

    running = service.config
    balancer = service.balancer
    if config.ha != running.ha:
        raise ReloadRefused(
            f"{config.source}: ha: the [ha] table changed; the heartbeat takes its settings at a restart "
            "(restart lbproxy, or put the running [ha] table back)"
        )
    if config.workers != running.workers:
        raise ReloadRefused(
            f"{config.source}: workers: expected {running.workers} as running, got {config.workers}; "
            "the number of workers changes at a restart"
        )
    try:
        serverTLS = loadListenerTLS(config)
        pools = [
            _planPool(balancer.pools.get(name), pc, config.source, balancer.salt) for name, pc in config.pools.items()
        ]
    except ConfigError as error:
        raise ReloadRefused(str(error)) from error
    removedPools = [name for name in balancer.pools if name not in config.pools]
    kept, added, removed = [], [], []
    for name, listener in balancer.listeners.items():
        new = config.listeners.get(name)
        if new is not None and sameAddress(listener.config, new):
            kept.append(name)
        else:
            removed.append(name)
    for name, lc in config.listeners.items():
        if name not in kept:
            listener = Listener(lc, balancer=balancer)
            added.append((listener, service.listenerService(listener, config.source, _Unset(), _Unset())))
    admin = None
    if config.admin is not None and (running.admin is None or config.admin.bind != running.admin.bind):
        admin = service.buildAdmin(config.admin)
    opened = []
    try:
        for _, listenerService in added:
            listenerService.privilegedStartService()
            opened.append(listenerService)
        if admin is not None:
            admin.privilegedStartService()
    except ListenerStartError as error:
        for listenerService in opened:
            listenerService.drain()
        holder = _holder(balancer, error)
        raise ReloadRefused(f"{error}{holder}") from error
    changed = [name for name in kept if balancer.listeners[name].config != config.listeners[name]]
    return Plan(config, serverTLS, pools, removedPools, kept, added, removed, admin, changed)


def _holder(balancer, error: ListenerStartError) -> str:
    """
    When a new listener's address is held by a listener of the running
    configuration (a listener renamed, or two swapping addresses), say
    so: only a listener keeping its name keeps its socket.
    """
    text = str(error)
    for name, listener in balancer.listeners.items():
        try:
            address = parseBind(listener.config.bind)
        except EndpointError:
            continue
        if address is not None and address.describe() in text:
            return f" (listener {name} holds it until the reload is done; a listener keeps its socket only under its own name)"
    return ""


def _planPool(live: Pool | None, config: PoolConfig, source: str, salt: bytes) -> PoolPlan:
    if live is None:
        return PoolPlan(config, buildPool(config, source, salt), new=True)
    old = live.options
    plan = PoolPlan(config, live, new=False)
    if config.stick != old.stick:
        plan.stickChanged = True
        plan.stick = StickTable(config.stick, live, salt) if config.stick is not None else None
    if (config.selector, config.selectorOptions) != (old.selector, old.selectorOptions):
        plan.selector = findSelector(config.selector).build(config.selectorOptions)
    plan.healthChanged = config.health != old.health
    final: list[Server] = []
    wanted = {sc.name for sc in config.servers}
    for sc in config.servers:
        try:
            current = live.server(sc.name)
        except KeyError:
            current = None
        if current is not None and current.address == sc.address:
            plan.update.append(sc)
            final.append(current)
        else:
            if current is not None:
                plan.remove.append(sc.name)
            server = buildServer(sc, config)
            plan.add.append(server)
            final.append(server)
    plan.remove += [s.name for s in live.servers if s.name not in wanted]
    if config.tls is not None:
        plan.tls = BackendTLS(config.name, config.tls, source)
        plan.tls.load(final)
    return plan


class _Unset:
    """
    The factory of a new listener's port between the moment it opens and
    the moment the reload gives it its front (the same turn of the
    reactor: no connection is accepted in between).
    """

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def buildProtocol(self, addr):
        return None


class Applier:
    """
    Applies a L{Plan} to a running L{lbproxy.service.BalancerService}.
    """

    log = Logger()

    def __init__(self, service, plan: Plan, reason: str) -> None:
        self.service = service
        self.plan = plan
        self.reason = reason

    def apply(self) -> None:
        service, plan = self.service, self.plan
        balancer = service.balancer
        for name in plan.removedPools:
            service.stopMonitor(name)
            balancer.removePool(name, self.reason)
        for poolPlan in plan.pools:
            self._applyPool(poolPlan)
        service.serverTLS = plan.serverTLS
        service.config = balancer.config = plan.config
        for listenerService in service.listenerServices.values():
            listenerService.grace = service.graceFor(listenerService.listener.config)
        for name in plan.removed:
            service.retireListener(name, self.reason)
        for name in plan.kept:
            listener = balancer.listeners[name]
            config = plan.config.listeners[name]
            listener.reconfigure(config, _mode(config))
            service.listenerServices[name].replaceFactory(*service.buildFront(listener))
        for listener, listenerService in plan.added:
            balancer.addListener(listener, self.reason)
            listenerService.replaceFactory(*service.buildFront(listener))
            service.addListenerService(listenerService)
        admin = plan.config.admin
        if plan.admin is not None or admin is None:
            service.setAdmin(plan.admin)
        else:
            service.admin.setToken(admin.token)

    def _applyPool(self, plan: PoolPlan) -> None:
        service = self.service
        balancer = service.balancer
        reason = self.reason
        pool = plan.pool
        if plan.new:
            balancer.addPool(pool, reason)
            service.startMonitor(pool)
            return
        pool.reconfigure(plan.config, plan.selector, plan.tls)
        if plan.stickChanged:
            pool.stick = plan.stick
        for name in plan.remove:
            pool.removeServer(name, reason)
        for sc in plan.update:
            pool.updateServer(sc, reason)
        for server in plan.add:
            pool.adoptServer(server, reason)
        if plan.config.health is None:
            # Without checks servers always count as up: nothing would
            # bring a down one back.
            for server in pool.servers:
                if server.state is ServerState.DOWN:
                    server.setState(ServerState.UP, "health checks removed")
        if plan.healthChanged:
            service.stopMonitor(pool.name)
            service.startMonitor(pool)


def _mode(config):
    from lbproxy.modes import findMode

    return findMode(config.mode)
