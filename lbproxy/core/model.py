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
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.config import Config, ListenerConfig, PoolConfig, ServerConfig
from lbproxy.core.pool import STATUS_CLASSES, Pool, Server, ServerState, statusIndex
from lbproxy.core.stick import StickTable, keySalt
from lbproxy.interfaces import IBalancerHealth
from lbproxy.selectors import findSelector
from lbproxy.tls.client import BackendTLS


def buildServer(config: ServerConfig, pool: PoolConfig) -> Server:
    """
    A new live server of C{config}, in a pool of C{pool}'s settings.
    """
    return Server.fromConfig(config, pool.health)


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
    servers = [buildServer(sc, config) for sc in config.servers]
    pool = Pool(config.name, servers, plugin.build(config.selectorOptions), config)
    if config.stick is not None:
        pool.stick = StickTable(config.stick, pool, salt if salt is not None else keySalt(None))
    if config.tls is not None:
        # One BackendTLS per pool, shared by its connectors (one per
        # front), its health checks and the mail fronts' STARTTLS.
        pool.tls = BackendTLS(config.name, config.tls, source)
        pool.tls.load(pool.servers)
    return pool


#: The upper bounds (seconds) of the buckets HTTP request durations are
#: counted in: Prometheus' default buckets.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
    @ivar durations: HTTP requests by duration (from the first byte of the
        request to the end of the response), one count per bucket of
        L{DURATION_BUCKETS} (a request in the first bucket whose bound it
        does not exceed), the last one for longer ones: the request
        duration histogram of the metrics, counted at the cost of one
        increment per request.
    @ivar durationSum: the seconds of those requests added up.
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
        "durations",
        "durationSum",
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
        self.durations = [0] * (len(DURATION_BUCKETS) + 1)
        self.durationSum = 0.0

    def countResponse(self, status: int | None) -> None:
        self.responses[statusIndex(status)] += 1

    def countDuration(self, seconds: float) -> None:
        """
        Count one HTTP request that took C{seconds}.
        """
        self.durations[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.durationSum += seconds

    def snapshot(self) -> dict:
        plain = {name: getattr(self, name) for name in self.__slots__}
        plain["responses"] = dict(zip(STATUS_CLASSES, self.responses))
        plain["durations"] = {**dict(zip((f"{b:g}" for b in DURATION_BUCKETS), self.durations)), "+Inf": self.durations[-1]}
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
        #: Sessions other processes serve for it (the control process of
        #: workers sums theirs here: L{lbproxy.workers}).
        self.elsewhere = 0
        self.counters = ListenerCounters()
        # (sessions still awaited, Deferred) of whenSessionsEnd.
        self._awaited: list[tuple[set, Deferred]] = []

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

    @property
    def sessionCount(self) -> int:
        """
        The sessions served now, by this process and by others (workers).
        """
        return len(self.sessions) + self.elsewhere

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
        if self._awaited:
            self._ended(session)

    def whenSessionsEnd(self, sessions=None) -> Deferred:
        """
        A L{Deferred} firing once every session of C{sessions} (by default,
        those it serves now) has left: what a reload waits for before it
        lets the factory that served them go, and a shutdown before it
        closes the listener for good.
        """
        remaining = set(self.sessions if sessions is None else sessions) & self.sessions
        done: Deferred = Deferred()
        if not remaining:
            done.callback(None)
        else:
            self._awaited.append((remaining, done))
        return done

    def _ended(self, session) -> None:
        finished = []
        for remaining, done in self._awaited:
            remaining.discard(session)
            if not remaining:
                finished.append(done)
        if finished:
            self._awaited = [(r, d) for r, d in self._awaited if r]
            for done in finished:
                done.callback(None)

    def reconfigure(self, config: ListenerConfig, mode) -> None:
        """
        Serve new connections with C{config} (and the front C{mode}) from
        now on: its sessions, counters and state stay, and the connections
        already open keep the settings they started with.
        """
        self.config = config
        self.mode = mode

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
            "sessions": self.sessionCount,
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
        #: The key of the stick tables' digests, the same for every pool
        #: built while it runs (a reload's too).
        self.salt = keySalt(config)
        self.pools: dict[str, Pool] = {}
        for name, pc in config.pools.items():
            self.addPool(buildPool(pc, config.source, self.salt))
        self.listeners = {name: Listener(lc, balancer=self) for name, lc in config.listeners.items()}
        #: Listeners no longer configured (removed by a reload, or bound
        #: elsewhere) whose sessions have not all ended.
        self.draining: list[Listener] = []

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

    def _serverEdited(self, server: Server, what: str, old: str, new: str, reason: str) -> None:
        self.announce(f"server-{what}", server.qualifiedName, old, new, reason)

    # Changing what runs (the admin API, a reload).

    def addPool(self, pool: Pool, reason: str = "") -> None:
        """
        Run C{pool} under its name (a new one, or one replacing a pool of
        that name: see L{removePool}).
        """
        pool.clock = self.clock
        pool.addObserver(self._serverChanged)
        pool.addChangeObserver(self._serverEdited)
        self.pools[pool.name] = pool
        if reason:
            self.announce("pool", pool.name, "", "added", reason)

    def removePool(self, name: str, reason: str = "") -> Pool:
        """
        Take pool C{name} out of the balancer: no listener of the running
        config uses it (connections already placed on its servers go on).
        """
        pool = self.pools.pop(name)
        pool.removeObserver(self._serverChanged)
        pool.removeChangeObserver(self._serverEdited)
        self.announce("pool", name, "running", "removed", reason)
        return pool

    def addListener(self, listener: Listener, reason: str = "") -> Listener:
        """
        Run C{listener} (built with this balancer) under its name; its port
        is the service's business.
        """
        self.listeners[listener.name] = listener
        if reason:
            self.announce("listener", listener.name, "", listener.state.value, reason)
        return listener

    def retireListener(self, name: str, reason: str = "") -> Listener:
        """
        Listener C{name} leaves the running config: it moves to
        L{draining} until its sessions end (see L{forgetListener}).
        """
        listener = self.listeners.pop(name)
        self.draining.append(listener)
        self.announce("listener", name, listener.state.value, "retired", reason)
        return listener

    def forgetListener(self, listener: Listener) -> None:
        """
        A retired listener closed its last session: it is gone.
        """
        if listener in self.draining:
            self.draining.remove(listener)

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
            "draining": [listener.snapshot(now) for listener in self.draining],
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
