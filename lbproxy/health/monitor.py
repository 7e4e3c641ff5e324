"""
Active health monitoring of one pool.

Every C{interval} each server of the pool is probed with the pool's check;
C{rise} consecutive successes bring a down server up and C{fall}
consecutive failures take an up server down. Passive checks
(L{lbproxy.core.pool.Server.connectFailed}) may mark a server down between
probes; the monitor then needs C{rise} fresh successes to bring it back.

State changes are logged once, and a server that stays down is reminded
of every few minutes rather than at every failed probe
(L{lbproxy.health.episodes}). A probe lbproxy could not make for its own
limits (out of file descriptors...) counts neither way: the server keeps
its state and the skipped probes are logged, one line a second at most.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.core.limits import LimitLog, plural
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.health.checks import HealthCheckFailed, HealthCheckSkipped
from lbproxy.health.kinds import buildCheck
from lbproxy.health.episodes import REPEAT_INTERVAL, FailureLog
from lbproxy.interfaces import IHealthCheck


_PROBED_SERVING = {ServerState.UP, ServerState.DRAIN}


class HealthMonitor(Service):
    """
    Probes the servers of one pool and moves them between UP and DOWN.

    Servers start in the state the pool built them in, which is UP: like
    HAProxy, a fresh pool serves at once and a dead server is taken out
    after C{fall} failed probes (sooner with passive checks). The first
    probes are spread evenly over the first interval, the first server's
    running at once, so many servers are not all probed together.

    Servers added to the pool while it runs are probed from then on, and
    servers removed from it no longer are. Servers in MAINT are not probed. Servers in DRAIN are probed and their
    health recorded, but their state is the operator's and stays DRAIN;
    when the operator puts one back UP, the failures counted while it
    drained still count towards C{fall}. A
    probe still running when the next one is due is not doubled; the due
    probe is skipped.

    What each probe found is kept in the live model: the server's
    C{health} (L{lbproxy.core.pool.ServerHealth}).
    """

    log = Logger()

    def __init__(
        self,
        pool: Pool,
        reactor,
        check: IHealthCheck | None = None,
        repeatInterval: float = REPEAT_INTERVAL,
    ) -> None:
        """
        @param pool: the pool to watch; its C{options.health} (a
            L{lbproxy.config.HealthConfig}) says how.
        @param reactor: the reactor to connect and keep time with.
        @param check: the check to run; by default the one the config's
            C{type} names.
        @param repeatInterval: seconds between two reminders that a server
            is still down.
        """
        self.pool = pool
        self.config = pool.options.health
        self._reactor = reactor
        self.check = check if check is not None else buildCheck(reactor, self.config)
        self._seenState: dict[Server, ServerState] = {}
        self._loops: dict[Server, LoopingCall] = {}
        self._starts: dict[Server, object] = {}
        self._running: dict[Server, Deferred] = {}
        self.failureLog = FailureLog(reactor, repeatInterval)
        self.limitLog = LimitLog(reactor)
        self.setName(pool.name)

    def startService(self) -> None:
        super().startService()
        self.pool.addObserver(self.failureLog.stateChanged)
        self.pool.addChangeObserver(self._serversChanged)
        servers = self.pool.servers
        for index, server in enumerate(servers):
            self._seenState[server] = server.state
            offset = self.config.interval * index / len(servers)
            if offset:
                self._starts[server] = self._reactor.callLater(
                    offset, self._startLoop, server
                )
            else:
                self._startLoop(server)

    def stopService(self) -> None:
        super().stopService()
        try:
            self.pool.removeObserver(self.failureLog.stateChanged)
            self.pool.removeChangeObserver(self._serversChanged)
        except ValueError:
            pass  # Stopped without having started.
        self.failureLog.forget()
        for call in self._starts.values():
            if call.active():
                call.cancel()
        self._starts.clear()
        for loop in self._loops.values():
            if loop.running:
                loop.stop()
        self._loops.clear()
        running, self._running = self._running, {}
        for probe in running.values():
            probe.cancel()
        self.limitLog.flush()

    def _serversChanged(self, server: Server, what: str, old: str, new: str, reason: str) -> None:
        """
        A server was added to the pool (probed from now on) or removed
        from it (no longer probed).
        """
        if what == "added":
            self._seenState[server] = server.state
            self._startLoop(server)
        elif what == "removed":
            self._forget(server)

    def _forget(self, server: Server) -> None:
        call = self._starts.pop(server, None)
        if call is not None and call.active():
            call.cancel()
        loop = self._loops.pop(server, None)
        if loop is not None and loop.running:
            loop.stop()
        probe = self._running.pop(server, None)
        if probe is not None:
            probe.cancel()
        self._seenState.pop(server, None)
        self.failureLog.forgetServer(server)

    def _startLoop(self, server: Server) -> None:
        self._starts.pop(server, None)
        loop = LoopingCall(self._due, server)
        loop.clock = self._reactor
        self._loops[server] = loop
        loop.start(self.config.interval, now=True).addErrback(
            self._loopFailed, server
        )

    def _loopFailed(self, failure: Failure, server: Server) -> None:
        self.log.failure(
            "health check loop of {server} stopped", failure, server=server.qualifiedName
        )

    def _due(self, server: Server) -> None:
        """
        A probe of C{server} is due. Never raises: a LoopingCall whose
        function raises stops for good.
        """
        try:
            self._probe(server)
        except Exception:
            self.log.failure(
                "cannot start health check of {server}", server=server.qualifiedName
            )

    def _probe(self, server: Server) -> None:
        if server.state is ServerState.MAINT:
            return
        if server in self._running:
            self.log.debug(
                "health check of {server} still running, skipping this one",
                server=server.qualifiedName,
            )
            return
        started = self._reactor.seconds()
        probe = maybeDeferred(self.check.check, server)
        if not probe.called:
            self._running[server] = probe
        probe.addBoth(self._finished, server, started, probe)

    def _finished(
        self, result: object, server: Server, started: float, probe: Deferred
    ) -> None:
        if self._running.get(server) is probe:
            del self._running[server]
        if isinstance(result, Failure) and result.check(CancelledError) and (not self.running or server.removed):
            return
        try:
            self._record(server, result, started)
        except Exception:
            self.log.failure(
                "cannot record health check of {server}", server=server.qualifiedName
            )

    def _record(self, server: Server, result: object, started: float) -> None:
        now = self._reactor.seconds()
        if isinstance(result, Failure) and result.check(HealthCheckSkipped):
            self._skipped(server, result.value)
            return
        if not isinstance(result, Failure):
            healthy, reason = True, "ok"
        elif result.check(HealthCheckFailed):
            healthy, reason = False, str(result.value) or "check failed"
        else:
            healthy = False
            reason = f"check error: {result.type.__name__}"
            self.log.failure(
                "health check of {server} raised an unexpected error",
                result,
                server=server.qualifiedName,
            )
        health = server.health
        state = server.state
        seen = self._seenState.get(server)
        if seen is not state:
            # Someone else (passive checks, an operator) changed the state
            # since the last probe. Probes went on through UP and DRAIN, so
            # their counts still hold; after DOWN or MAINT count afresh.
            self._seenState[server] = state
            if not ({seen, state} <= _PROBED_SERVING):
                health.successes = health.failures = 0
        health.healthy = healthy
        health.reason = reason
        health.lastCheck = now
        health.duration = now - started
        health.checks += 1
        if healthy:
            health.successes += 1
            health.failures = 0
        else:
            health.failures += 1
            health.successes = 0
        if state is ServerState.UP and health.failures >= self.config.fall:
            self._change(
                server,
                ServerState.DOWN,
                f"{plural(health.failures, 'check')} failed, last: {reason}",
            )
        elif state is ServerState.DOWN and health.successes >= self.config.rise:
            self._change(
                server,
                ServerState.UP,
                f"{health.successes} of {plural(self.config.rise, 'check')} passed",
            )
        elif state is not ServerState.MAINT:
            self.failureLog.probed(server, healthy, reason)

    def _skipped(self, server: Server, skipped: HealthCheckSkipped) -> None:
        """
        A probe of C{server} could not be made for lbproxy's own limit:
        the server keeps its state and its counts.
        """
        server.health.skipped += 1
        limit = str(skipped)

        def emit(count: int) -> None:
            self.log.warn(
                "{limit}: skipped {skipped} of pool {pool} (not a server failure; "
                "servers keep their state)",
                limit=limit,
                skipped=plural(count, "health check"),
                pool=self.pool.name,
                count=count,
            )

        self.limitLog.note(skipped.errno, emit)

    def _change(self, server: Server, state: ServerState, reason: str) -> None:
        self._seenState[server] = state
        server.setState(state, reason)
