"""
The live model of a running balancer: one L{Balancer} owning its pools and
listeners by name, each an object with its state and counters.

Everything that looks at or changes the running balancer goes through it:
the fronts count their connections and requests on their L{Listener},
health checks change servers' states in its pools, the HA heartbeat reads
whether the listeners are bound and how many servers are up, and stats,
metrics and the admin API read L{Balancer.snapshot} (plain data) and
follow L{Balancer.addObserver}. None of them keeps a copy of its own.

Counters are plain attribute increments on objects built once: counting
costs the data path no allocation.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.config import Config, ListenerConfig, PoolConfig
from lbproxy.core.pool import STATUS_CLASSES, Pool, Server, ServerState, statusIndex
from lbproxy.core.stick import StickTable, keySalt
from lbproxy.interfaces import IBalancerHealth
from lbproxy.selectors import findSelector
from lbproxy.tls.client import BackendTLS


def buildPool(config: PoolConfig, source: str = "", salt: bytes | None = None) -> Pool:
    """
    The live pool of C{config}, with its TLS files loaded when it has
    C{[tls]}, and its stick table when it has C{[stick]}.

    @param source: the config file, named by errors.
    @param salt: the key of the stick table's digests
        (L{lbproxy.core.stick.keySalt}); random when None.
    @raise ConfigError: a TLS file of the pool is unusable.
    """
    plugin = findSelector(config.selector)
    if plugin is None:
        raise KeyError(f"selector {config.selector!r} is no longer installed")
    servers = []
    for sc in config.servers:
        server = Server(
            name=sc.name,
            address=sc.address,
            weight=sc.weight,
            backup=sc.backup,
            maxconn=sc.maxconn,
            cookie=sc.cookie,
        )
        if config.health is not None:
            server.passiveFall = config.health.passiveFall
        servers.append(server)
    pool = Pool(config.name, servers, plugin.build(config.selectorOptions), config)
    if config.stick is not None:
        pool.stick = StickTable(config.stick, pool, salt if salt is not None else keySalt(None))
    if config.tls is not None:
        # One BackendTLS per pool, shared by its connectors (one per
        # front), its health checks and the mail fronts' STARTTLS.
        pool.tls = BackendTLS(config.name, config.tls, source)
        pool.tls.load(pool.servers)
    return pool


class ListenerState(enum.Enum):
    """
    Where a listener is in its life.

    C{STARTING}: built, its port not open yet. C{SERVING}: accepting.
    C{DRAINING}: no longer accepting, its sessions finishing (a stop or a
    reload that removes it). C{STOPPED}: closed. C{FAILED}: its port could
    not be opened.
    """

    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class ListenerCounters:
    """
    What one listener has served since it started.

    @ivar connections: client connections accepted (refused ones
        included).
    @ivar refused: connections refused at the listener's C{maxconn}.
    @ivar errors: sessions or requests that ended in an error lbproxy
        answered or logged as one (no server, a server's failure, a
        client's bad request, a timeout).
    @ivar bytesIn: bytes received from clients, counted as each session
        (TCP, mail) or request (HTTP) ends.
    @ivar bytesOut: bytes sent to clients, likewise.
    @ivar requests: HTTP requests received.
    @ivar responses: HTTP responses sent, by L{STATUS_CLASSES}.
    @ivar logins: successful mail logins.
    @ivar loginFailures: refused mail logins.
    """

    __slots__ = (
        "connections",
        "refused",
        "errors",
        "bytesIn",
        "bytesOut",
        "requests",
        "responses",
        "logins",
        "loginFailures",
    )

    def __init__(self) -> None:
        self.connections = 0
        self.refused = 0
        self.errors = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self.requests = 0
        self.responses = [0] * len(STATUS_CLASSES)
        self.logins = 0
        self.loginFailures = 0

    def countResponse(self, status: int | None) -> None:
        self.responses[statusIndex(status)] += 1

    def snapshot(self) -> dict:
        plain = {name: getattr(self, name) for name in self.__slots__}
        plain["responses"] = dict(zip(STATUS_CLASSES, self.responses))
        return plain


@dataclass(frozen=True)
class StateChange:
    """
    One change of state in the model, as its observers get it.

    @ivar kind: C{"listener"}, C{"server"}, or what another part
        announcing through L{Balancer.announce} names itself (C{"ha"}).
    @ivar name: the listener's name, C{pool/server}, ...
    @ivar old: the state before (its string value).
    @ivar new: the state now.
    @ivar reason: why, in words; may be empty.
    @ivar time: when (the balancer's clock).
    """

    kind: str
    name: str
    old: str
    new: str
    reason: str
    time: float


Observer = Callable[[StateChange], None]


class Listener:
    """
    One listener of the running balancer.

    @ivar name: its name in the config.
    @ivar config: its L{ListenerConfig} (the subclass of its mode).
    @ivar mode: the L{lbproxy.interfaces.IFrontPlugin} serving it.
    @ivar factory: the protocol factory its front built (set by the
        service), None before.
    @ivar port: its listening port once open, else None.
    @ivar state: a L{ListenerState}.
    @ivar since: when it entered that state.
    @ivar sessions: the client connections it serves now (each counts
        against C{maxconn}).
    @ivar counters: its L{ListenerCounters}.
    """

    log = Logger()

    def __init__(self, config: ListenerConfig, mode=None, balancer: Balancer | None = None) -> None:
        from lbproxy.modes import findMode

        self.name = config.name
        self.config = config
        self.mode = mode if mode is not None else findMode(config.mode)
        self.balancer = balancer
        self.factory = None
        self.port = None
        self.state = ListenerState.STARTING
        self.since = self._now()
        self.sessions: set = set()
        self.counters = ListenerCounters()

    @classmethod
    def of(cls, listener) -> Listener:
        """
        C{listener} itself, or a L{Listener} of its own for a bare
        L{ListenerConfig} (a front built outside a balancer: tests, tools).
        """
        return listener if isinstance(listener, Listener) else cls(listener)

    def __repr__(self) -> str:
        return f"<Listener {self.name} {self.config.mode} {self.state.value} sessions={len(self.sessions)}>"

    def _now(self) -> float:
        clock = self.balancer.clock if self.balancer is not None else Pool.clock
        return clock.seconds()

    def admit(self, session) -> bool:
        """
        Count a new client connection; True when it may be served, False
        when the listener is at its C{maxconn} (counted as refused).
        """
        counters = self.counters
        counters.connections += 1
        maxconn = self.config.maxconn
        if maxconn and len(self.sessions) >= maxconn:
            counters.refused += 1
            return False
        self.sessions.add(session)
        return True

    def leave(self, session) -> None:
        """
        C{session} is over: it no longer counts against C{maxconn}.
        """
        self.sessions.discard(session)

    def setState(self, state: ListenerState, reason: str = "") -> None:
        """
        Enter C{state}, and tell the balancer's observers.
        """
        old = self.state
        if old is state:
            return
        self.state = state
        self.since = self._now()
        if self.balancer is not None:
            self.balancer.announce("listener", self.name, old.value, state.value, reason)

    def snapshot(self, now: float) -> dict:
        config = self.config
        return {
            "name": self.name,
            "mode": config.mode,
            "bind": config.bind,
            "pools": sorted(config.poolsUsed()),
            "state": self.state.value,
            "for": now - self.since,
            "sessions": len(self.sessions),
            "maxconn": config.maxconn,
            "counters": self.counters.snapshot(),
        }


@implementer(IBalancerHealth)
class Balancer:
    """
    The running balancer: its pools and listeners by name.

    @ivar config: the L{Config} it runs.
    @ivar pools: every L{Pool} by name.
    @ivar listeners: every L{Listener} by name.
    @ivar clock: what the times of state changes are read from (the
        reactor, once L{setClock} gave it).
    """

    log = Logger()

    def __init__(self, config: Config) -> None:
        self.config = config
        self.clock = Pool.clock
        self._observers: list[Observer] = []
        self._parts: dict[str, Callable[[], dict]] = {}
        salt = keySalt(config)
        self.pools = {name: buildPool(pc, config.source, salt) for name, pc in config.pools.items()}
        for pool in self.pools.values():
            pool.addObserver(self._serverChanged)
        self.listeners = {name: Listener(lc, balancer=self) for name, lc in config.listeners.items()}

    def __repr__(self) -> str:
        return f"<Balancer {len(self.listeners)} listeners, {len(self.pools)} pools>"

    def setClock(self, clock) -> None:
        """
        Read times from C{clock} (a reactor) from now on, in the pools too.
        """
        self.clock = clock
        for pool in self.pools.values():
            pool.clock = clock
        now = clock.seconds()
        for listener in self.listeners.values():
            listener.since = now
        for pool in self.pools.values():
            for server in pool.servers:
                server.since = now

    # Observers.

    def addObserver(self, observer: Observer) -> None:
        """
        Call C{observer(change)} with a L{StateChange} for every change of
        a listener's or a server's state (and of what other parts announce).
        """
        self._observers.append(observer)

    def removeObserver(self, observer: Observer) -> None:
        self._observers.remove(observer)

    def announce(self, kind: str, name: str, old: str, new: str, reason: str = "") -> None:
        """
        Tell the observers of a change of state.
        """
        change = StateChange(kind, name, old, new, reason, self.clock.seconds())
        for observer in list(self._observers):
            try:
                observer(change)
            except Exception:
                self.log.failure("an observer of the balancer failed on {change}", change=change)

    def _serverChanged(self, server: Server, old: ServerState, new: ServerState, reason: str) -> None:
        self.announce("server", server.qualifiedName, old.value, new.value, reason)

    # What other parts add to the snapshot.

    def addPart(self, name: str, snapshot: Callable[[], dict]) -> None:
        """
        Include C{snapshot()} in L{snapshot} under C{name} (the HA
        heartbeat adds C{"ha"}).
        """
        self._parts[name] = snapshot

    def removePart(self, name: str) -> None:
        self._parts.pop(name, None)

    def snapshot(self) -> dict:
        """
        The whole running balancer as plain data (lists, dicts, strings and
        numbers): what a stats page, metrics or a peer reads.
        """
        now = self.clock.seconds()
        plain = {
            "time": now,
            "listeners": [listener.snapshot(now) for listener in self.listeners.values()],
            "pools": [pool.snapshot(now) for pool in self.pools.values()],
        }
        for name, part in self._parts.items():
            plain[name] = part()
        return plain

    # IBalancerHealth

    def unboundListeners(self) -> list[str]:
        """
        The names of the listeners not accepting connections now.
        """
        return [name for name, listener in self.listeners.items() if listener.state is not ListenerState.SERVING]
