"""
Pools of backend servers and the state that selectors read.

Health checks (active and passive) and, later, the admin API change a
server's state; the pool turns states into the tuple of servers a selector
may choose from, and checks the selector's answer.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable

from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.interfaces import IBackendSelector, IServer, ISelectionContext


class ServerState(enum.Enum):
    """
    Administrative and health state of a server.

    Only C{UP} servers are offered to the selector. C{DRAIN} and C{MAINT}
    are set by an operator: a draining server finishes what it has and
    still takes the clients pinned to it (a persistence cookie, a stick
    table: L{Server.pinnable}), as HAProxy's drain does; a server in
    maintenance takes nothing new and is skipped by health checks.
    """

    UP = "up"
    DOWN = "down"
    DRAIN = "drain"
    MAINT = "maint"


StateObserver = Callable[["Server", ServerState, ServerState, str], None]
#: C{observer(server, what, old, new, reason)}: a change that is not a
#: state change (C{what}: C{"weight"}, C{"added"}, C{"removed"},
#: C{"gone"}), values as strings.
ChangeObserver = Callable[["Server", str, str, str, str], None]

#: The classes of HTTP status a server's and a listener's responses are
#: counted by: index 1 to 5 for 1xx to 5xx, 0 for anything else (no
#: response).
STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")

#: The states in which a server still takes the clients pinned to it.
_PINNABLE = frozenset({ServerState.UP, ServerState.DRAIN})

#: The weights a server may have (as in the config).
MAX_WEIGHT = 256


def statusIndex(status: int | None) -> int:
    """
    The index in a C{responses} counter list of a response with C{status}.
    """
    if status is None or not 100 <= status < 600:
        return 0
    return status // 100


class _SystemClock:
    """
    What pools read the time from until the service gives them its reactor.
    """

    @staticmethod
    def seconds() -> float:
        return time.time()


class ServerHealth:
    """
    What active checks last found about one server (written by its pool's
    L{lbproxy.health.monitor.HealthMonitor}, read by the stats page).

    @ivar healthy: outcome of the last probe; None before the first one.
    @ivar reason: "ok", or why the last probe failed.
    @ivar lastCheck: reactor time the last probe finished, or None.
    @ivar duration: seconds the last probe took, or None.
    @ivar successes: consecutive successful probes.
    @ivar failures: consecutive failed probes.
    @ivar checks: probes finished since the monitor started.
    @ivar skipped: probes not made for lbproxy's own limits (out of file
        descriptors...), counted in neither C{successes} nor C{failures}.
    """

    __slots__ = ("healthy", "reason", "lastCheck", "duration", "successes", "failures", "checks", "skipped")

    def __init__(self) -> None:
        self.healthy: bool | None = None
        self.reason = ""
        self.lastCheck: float | None = None
        self.duration: float | None = None
        self.successes = 0
        self.failures = 0
        self.checks = 0
        self.skipped = 0

    def __eq__(self, other) -> bool:
        if not isinstance(other, ServerHealth):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"ServerHealth({fields})"

    def snapshot(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


@implementer(IServer)
class Server:
    """
    One backend server: its configuration and live counters.

    @ivar totalConnections: flows ever assigned to the server.
    @ivar connectFailures: consecutive failed connection attempts (reset by
        a successful one).
    @ivar connectErrors: failed connection attempts, ever.
    @ivar retries: failed connection attempts after which the flow was
        tried again (on another server, or this one), as HAProxy's
        C{wretr}.
    @ivar responseErrors: HTTP responses the server broke (closed or reset
        before its end, invalid, followed by bytes answering no request).
    @ivar bytesIn: bytes clients sent it, counted when each flow (TCP,
        mail) or request (HTTP) ends.
    @ivar bytesOut: bytes it sent to clients, likewise.
    @ivar responses: HTTP responses it gave, by L{STATUS_CLASSES}.
    @ivar downs: times it went from up to down.
    @ivar since: when it entered its state (the pool's clock).
    @ivar health: what active checks last found (L{ServerHealth}).
    @ivar passiveFall: consecutive failed connection attempts that mark an
        up server down (passive health check); 0 disables it. Only set when
        active checks run, since they are what bring the server back.
    """

    passiveFall = 0

    def __init__(
        self,
        name: str,
        address: str,
        weight: int = 1,
        backup: bool = False,
        maxconn: int = 0,
        state: ServerState = ServerState.UP,
        cookie: str = "",
    ) -> None:
        self.name = name
        #: Persistence cookie value naming this server (HTTP).
        self.cookie = cookie or name
        self.address = address
        self.weight = weight
        self.backup = backup
        self.maxconn = maxconn
        self.state = state
        self.active = 0
        self.totalConnections = 0
        self.connectFailures = 0
        self.connectErrors = 0
        self.retries = 0
        self.responseErrors = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self.responses = [0] * len(STATUS_CLASSES)
        self.downs = 0
        self.since = 0.0
        self.health = ServerHealth()
        #: The count the last success cleared (see L{connectFailed}).
        self._clearedFailures = 0
        self.pool: Pool | None = None
        #: Taken out of its pool (L{Pool.removeServer}): it serves only the
        #: flows it has, and leaves the model when the last one ends.
        self.removed = False

    @classmethod
    def fromConfig(cls, config, health=None) -> Server:
        """
        A new server of C{config} (a L{lbproxy.config.ServerConfig}), in a
        pool whose health checks are C{health} (a
        L{lbproxy.config.HealthConfig}, or None).
        """
        server = cls(
            name=config.name,
            address=config.address,
            weight=config.weight,
            backup=config.backup,
            maxconn=config.maxconn,
            cookie=config.cookie,
        )
        if health is not None:
            server.passiveFall = health.passiveFall
        return server

    def __repr__(self) -> str:
        return f"<Server {self.name} {self.address} {self.state.value}>"

    @property
    def pinnable(self) -> bool:
        """
        Whether a client pinned to this server (by a persistence cookie or
        a stick table) may still be sent to it: it is up or draining, and
        not full. The selector is offered only servers that are up
        (L{Pool.eligible}); pins reach draining servers too, as HAProxy's
        C{drain} does, unless their last health check failed; a server in
        maintenance or removed takes nothing.
        """
        state = self.state
        if state is ServerState.DRAIN and self.health.healthy is False:
            return False
        return state in _PINNABLE and not self.removed and not self.full

    @property
    def full(self) -> bool:
        return bool(self.maxconn) and self.active >= self.maxconn

    @property
    def qualifiedName(self) -> str:
        """
        C{pool/server}, as log lines name a server.
        """
        return f"{self.pool.name}/{self.name}" if self.pool else self.name

    def acquire(self) -> None:
        self.active += 1
        self.totalConnections += 1

    def release(self) -> None:
        self.active -= 1
        pool = self.pool
        if pool is not None and pool._waiters:
            pool.serverFreed(self)
        if self.removed and not self.active and pool is not None:
            pool.forgetRemoved(self)

    def connectSucceeded(self) -> None:
        """
        A proxied connection to this server was established.
        """
        self._clearedFailures = self.connectFailures
        self.connectFailures = 0

    def connectFailed(self, reason: str, established: bool = False) -> None:
        """
        A proxied connection to this server could not be established.

        @param established: the connection was counted as established, but
            turned out unusable before it carried anything (a mail server's
            bad greeting; a TLS 1.3 server refusing the client certificate
            after the handshake). Its success is taken back: the failures
            it cleared count again, so such a server still reaches
            C{passiveFall}. A success of another connection since then
            stands.
        """
        if established:
            self.connectFailures = self._clearedFailures
        self._clearedFailures = 0
        self.connectFailures += 1
        self.connectErrors += 1
        if (
            self.passiveFall
            and self.connectFailures >= self.passiveFall
            and self.state is ServerState.UP
        ):
            self.setState(
                ServerState.DOWN,
                f"{self.connectFailures} consecutive failed connections, "
                f"last: {reason}",
            )

    def setState(self, state: ServerState, reason: str = "") -> None:
        """
        Change the state and tell the pool (which tells its observers).
        """
        old = self.state
        if old is state:
            return
        self.state = state
        if old is ServerState.UP and state is ServerState.DOWN:
            self.downs += 1
        if self.pool is not None:
            self.since = self.pool.clock.seconds()
            self.pool.serverStateChanged(self, old, reason)

    def setWeight(self, weight: int, reason: str = "") -> None:
        """
        Give the server a new weight (0 to L{MAX_WEIGHT}; 0 takes no new
        flows), effective for the next flow placed: the pool offers its
        selector a new tuple of servers, so selectors caching per tuple
        (Maglev's table) rebuild.

        @raise ValueError: C{weight} is out of range.
        """
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"expected a weight from 0 to {MAX_WEIGHT}, got {weight!r}")
        old = self.weight
        if old == weight:
            return
        self.weight = weight
        pool = self.pool
        if pool is not None:
            pool.serverChanged(self, "weight", str(old), str(weight), reason)

    def snapshot(self, now: float) -> dict:
        """
        The server as plain data (for the stats page, metrics and peers).
        """
        return {
            "name": self.name,
            "address": self.address,
            "state": self.state.value,
            "for": now - self.since,
            "weight": self.weight,
            "backup": self.backup,
            "maxconn": self.maxconn,
            "sessions": self.active,
            "total": self.totalConnections,
            "bytesIn": self.bytesIn,
            "bytesOut": self.bytesOut,
            "responses": dict(zip(STATUS_CLASSES, self.responses)),
            "connectErrors": self.connectErrors,
            "retries": self.retries,
            "responseErrors": self.responseErrors,
            "downs": self.downs,
            "removed": self.removed,
            "check": self.health.snapshot(),
        }


class Pool:
    """
    A named group of servers sharing a selector.

    @ivar options: the pool's L{lbproxy.config.PoolConfig}; fronts read
        retries, timeouts and the PROXY protocol setting from it.
    @ivar tls: the pool's loaded L{lbproxy.tls.client.BackendTLS} when it
        has C{[tls]} (set by L{lbproxy.core.model.buildPool}), else None: the
        connector, health checks and mail fronts all take it from here.

    The queue: a flow for which every server it may use is up but at its
    C{maxconn} waits (L{enqueue}) rather than being refused, as with
    HAProxy's C{maxconn} and C{timeout queue}. Each slot a server frees,
    and each server coming up, goes to the flow that has waited longest
    and may use that server (L{serverFreed}); the waiter's
    C{serverGranted(server)} takes it at once. The waiters are the
    connector's (L{lbproxy.core.connect.BackendConnector}); they time out on
    their own.
    """

    log = Logger()
    tls = None
    #: The pool's L{lbproxy.core.stick.StickTable} when it has C{[stick]}
    #: (set by L{lbproxy.core.model.buildPool}), else None.
    stick = None
    #: Where the time of state changes is read (the service sets its
    #: reactor).
    clock = _SystemClock()

    def __init__(
        self,
        name: str,
        servers: Iterable[Server],
        selector: IBackendSelector,
        options=None,
    ) -> None:
        self.name = name
        self.servers = tuple(servers)
        self.selector = selector
        self.options = options
        self._observers: list[StateObserver] = []
        self._changeObservers: list[ChangeObserver] = []
        #: Servers taken out of the pool whose flows have not all ended.
        self.removing: list[Server] = []
        #: Counts the changes of the servers' set and settings: what
        #: caches of a pool's servers (cookie tokens) are checked against.
        self.generation = 0
        self._eligible: tuple[Server, ...] | None = None
        # The queue, oldest first (a dict keeps insertion order and removes
        # any waiter in one step).
        self._waiters: dict = {}
        for server in self.servers:
            server.pool = self

    def __repr__(self) -> str:
        return f"<Pool {self.name} {len(self.servers)} servers>"

    def server(self, name: str) -> Server:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def addObserver(self, observer: StateObserver) -> None:
        """
        Call C{observer(server, old, new, reason)} on every state change.
        """
        self._observers.append(observer)

    def removeObserver(self, observer: StateObserver) -> None:
        self._observers.remove(observer)

    def addChangeObserver(self, observer: ChangeObserver) -> None:
        """
        Call C{observer(server, what, old, new, reason)} on every other
        change: a weight, a server added, removed, or gone (a removed
        server whose last flow ended).
        """
        self._changeObservers.append(observer)

    def removeChangeObserver(self, observer: ChangeObserver) -> None:
        self._changeObservers.remove(observer)

    def serverChanged(self, server: Server, what: str, old: str, new: str, reason: str = "") -> None:
        """
        Log a change of C{server} other than its state and tell the change
        observers; the selector is offered a new tuple of servers.
        """
        self._eligible = None
        self.generation += 1
        self.log.info(
            "server {server}: {what} {old} -> {new}{why}",
            server=server.qualifiedName,
            what=what,
            old=old or "-",
            new=new or "-",
            why=f": {reason}" if reason else "",
            pool=self.name,
            serverName=server.name,
            reason=reason,
        )
        for observer in list(self._changeObservers):
            observer(server, what, old, new, reason)
        if self._waiters:
            # A weight or a maxconn may have made room for queued flows.
            for candidate in self.eligible():
                self.serverFreed(candidate)

    # Changing the servers while the pool serves.

    def addServer(self, config, reason: str = "") -> Server:
        """
        Add a server built from C{config} (a
        L{lbproxy.config.ServerConfig}): up, offered to the selector from
        the next flow on (and probed, when the pool has health checks).

        @raise ValueError: the pool has a server of that name, or its
            cookie value.
        @raise lbproxy.errors.ConfigError: the pool speaks TLS and the
            server's address cannot take it.
        """
        for other in self.servers:
            if other.name == config.name:
                raise ValueError(f"pool {self.name} already has a server {config.name!r}")
            if config.cookie and other.cookie == config.cookie:
                raise ValueError(f"pool {self.name} already has the cookie value {config.cookie!r} (server {other.name})")
        server = Server.fromConfig(config, getattr(self.options, "health", None))
        if self.tls is not None:
            self.tls.load(self.servers + (server,))
        return self.adoptServer(server, reason)

    def adoptServer(self, server: Server, reason: str = "") -> Server:
        """
        Add C{server}, built and checked by the caller (a reload, which
        loaded the pool's TLS settings for it already).
        """
        server.pool = self
        server.since = self.clock.seconds()
        self.servers = self.servers + (server,)
        self.serverChanged(server, "added", "", f"{server.address} weight {server.weight}", reason)
        return server

    def reconfigure(self, options, selector: IBackendSelector | None = None, tls=None) -> None:
        """
        Place flows with the pool settings C{options} (a
        L{lbproxy.config.PoolConfig}: retries, timeouts, queue...) from now
        on; with a new C{selector} (a changed C{selector} key) and the
        pool's new TLS settings (loaded, or None without C{[tls]}).
        """
        self.options = options
        if selector is not None:
            self.selector = selector
        self.tls = tls
        self._eligible = None
        self.generation += 1

    def updateServer(self, config, reason: str = "") -> Server:
        """
        Give the server named like C{config} (a
        L{lbproxy.config.ServerConfig} with its address) the weight,
        C{backup}, C{maxconn} and cookie value of C{config}; its state,
        health and counters stay.

        @raise KeyError: the pool has no such server.
        @raise ValueError: C{config} has another address (that is another
            server: remove this one and add that one).
        """
        server = self.server(config.name)
        if config.address != server.address:
            raise ValueError(f"server {server.qualifiedName} has address {server.address!r}, not {config.address!r}")
        server.setWeight(config.weight, reason)
        cookie = config.cookie or config.name
        for what, old, new in (("backup", server.backup, config.backup), ("maxconn", server.maxconn, config.maxconn), ("cookie", server.cookie, cookie)):
            if old != new:
                setattr(server, what, new)
                self.serverChanged(server, what, str(old), str(new), reason)
        health = getattr(self.options, "health", None)
        server.passiveFall = health.passiveFall if health is not None else 0
        return server

    def removeServer(self, name: str, reason: str = "") -> Server:
        """
        Take the server C{name} out of the pool: it is offered to no flow
        from now on (pins included), keeps the flows it has, and leaves the
        model (and the stats) when the last one ends.

        @raise KeyError: the pool has no such server.
        """
        server = self.server(name)
        self.servers = tuple(s for s in self.servers if s is not server)
        server.removed = True
        self.serverChanged(server, "removed", server.state.value, f"{server.active} flows left", reason)
        if server.active:
            self.removing.append(server)
        else:
            self.forgetRemoved(server)
        return server

    def forgetRemoved(self, server: Server) -> None:
        """
        The last flow of removed C{server} ended: it is gone.
        """
        if server in self.removing:
            self.removing.remove(server)
        self.serverChanged(server, "gone", "removed", "", "its last flow ended")

    def serverStateChanged(
        self, server: Server, old: ServerState, reason: str
    ) -> None:
        self._eligible = None
        self.log.info(
            "server {server} is {new} (was {old}){why}",
            server=server.qualifiedName,
            new=server.state.value,
            old=old.value,
            why=f": {reason}" if reason else "",
            pool=self.name,
            serverName=server.name,
            state=server.state.value,
            reason=reason,
        )
        for observer in list(self._observers):
            observer(server, old, server.state, reason)
        if self._waiters:
            for candidate in self.eligible():
                self.serverFreed(candidate)

    def eligible(self) -> tuple[Server, ...]:
        """
        The servers a selector may choose from: the primaries that are up
        with a non-zero weight, or, when there is none, such backups.

        The same tuple is returned until a server changes state, so
        selectors can cache per-tuple work (the Maglev table).
        """
        if self._eligible is None:
            up = [s for s in self.servers if s.state is ServerState.UP and s.weight]
            primaries = tuple(s for s in up if not s.backup)
            self._eligible = primaries or tuple(s for s in up if s.backup)
        return self._eligible

    @property
    def available(self) -> bool:
        """
        True when at least one server could take a new flow now.
        """
        return any(not s.full for s in self.eligible())

    #: Flows other processes (workers) have waiting in their queues of
    #: this pool, summed by the control process of workers.
    queuedElsewhere = 0

    @property
    def queued(self) -> int:
        """
        Flows waiting in the queue (this process's and, in the control
        process of workers, theirs).
        """
        return len(self._waiters) + self.queuedElsewhere

    def snapshot(self, now: float) -> dict:
        """
        The pool and its servers as plain data.
        """
        options = self.options
        return {
            "name": self.name,
            "selector": getattr(options, "selector", type(self.selector).__name__),
            "queue": self.queued,
            "available": len(self.eligible()),
            "servers": [server.snapshot(now) for server in self.servers + tuple(self.removing)],
            "stick": self.stick.snapshot() if self.stick is not None else None,
        }

    def mayQueue(self, context: ISelectionContext) -> bool:
        """
        Whether a flow the selector found no server for should wait in the
        queue: the pool has one (C{timeouts.queue} above 0) with room left
        (C{max_queue}), and a server the flow may use is up but full. With
        every server down, or all tried, the flow is refused at once.
        """
        options = self.options
        if options is None or not options.queueTimeout:
            return False
        limit = options.maxQueue
        if limit and len(self._waiters) >= limit:
            return False
        excluded = context.excluded
        return any(s.full for s in self.eligible() if s not in excluded)

    def enqueue(self, waiter) -> None:
        """
        Queue C{waiter}, which has C{context}, C{queuedAt} (when it began
        to wait) and C{serverGranted(server)}.
        """
        self._waiters[waiter] = None

    def queuedSince(self, context: ISelectionContext) -> float | None:
        """
        When the flow of C{context} began to wait in the queue, or None
        when it is not waiting. (A lookup through the queue: for a flow
        that ends while placed, not for every flow.)
        """
        for waiter in self._waiters:
            if waiter.context is context:
                return waiter.queuedAt
        return None

    def dequeue(self, waiter) -> None:
        """
        Take C{waiter} out of the queue (it timed out or gave up).
        """
        self._waiters.pop(waiter, None)

    def serverFreed(self, server: Server) -> None:
        """
        C{server} may have room (a flow released it, or it came up): hand
        its free slots to the longest-waiting flows that may use it.
        """
        waiters = self._waiters
        while waiters and not server.full and server in self.eligible():
            for waiter in waiters:
                if server not in waiter.context.excluded:
                    break
            else:
                return
            del waiters[waiter]
            waiter.serverGranted(server)

    def pick(self, context: ISelectionContext) -> Server | None:
        """
        The server C{context}'s flow is pinned to in the pool's stick table
        when it can take the flow, else the selector's pick; None when no
        server may take the flow.
        """
        stick = self.stick
        if stick is not None:
            pinned = stick.lookup(context)
            if pinned is not None:
                return pinned
        servers = self.eligible()
        if not servers:
            return None
        server = self.selector.pick(servers, context)
        if server is None:
            return None
        if server not in servers or server.full or server in context.excluded:
            self.log.error(
                "selector {selector!r} of pool {pool} returned {server!r}, "
                "which may not take the flow; ignoring it",
                selector=self.selector,
                pool=self.name,
                server=server,
            )
            return None
        return server
