"""
Starting, restarting and stopping the workers, in the control process.

L{WorkerSupervisor} starts C{workers} worker processes when the daemon
starts (each a fresh Python running L{lbproxy.workers.child} with the
configuration's path) and keeps a L{WorkerProcess} per worker: the
worker's pipes (its log lines, re-logged here naming the worker; its end
of the channel) and what it last said (its listeners' states, its
counters).

A worker that exits while the daemon runs is logged with its exit status
or signal and started again after a delay that doubles with each restart
in the last minute (L{RestartPolicy}): at most C{perMinute} restarts a
minute, after which the next one waits until the oldest leaves the
minute. A worker that cannot start at all when the daemon starts (a
listener's port is taken) stops the daemon, with its one-line reason.

On a stop, every worker is told to stop gracefully; the control process
waits for all of them, up to C{[daemon] grace} and a margin, after which
those left are killed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.internet.interfaces import ITransport
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from lbproxy.core.model import ListenerState
from lbproxy.workers.channel import CONTROL_IN, CONTROL_OUT, ChannelProtocol
from lbproxy.workers.counters import CounterSum
from lbproxy.workers.state import StatePusher, syncMessage

#: Seconds a worker has to answer a request for its counters.
COUNTERS_TIMEOUT = 2.0
#: Seconds beyond C{[daemon] grace} the workers get to stop before they
#: are killed.
STOP_MARGIN = 10.0
#: Seconds between two looks at the servers' last checks (pushed when
#: their verdict changed).
HEALTH_PUSH_INTERVAL = 1.0


class RestartPolicy:
    """
    How long to wait before starting a worker again: C{initial} seconds,
    doubled for each restart in the last C{window} seconds, at most
    C{maximum}; and at most C{perMinute} restarts in a window.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, perMinute: int = 5, window: float = 60.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.perMinute = perMinute
        self.window = window
        self.restarts: list[float] = []

    def next(self, now: float) -> tuple[float, bool]:
        """
        The delay before the next restart, and whether the limit of
        restarts a minute made it longer; the restart is counted.
        """
        self.restarts = [t for t in self.restarts if t > now - self.window]
        delay = min(self.initial * 2 ** len(self.restarts), self.maximum)
        limited = len(self.restarts) >= self.perMinute
        if limited:
            delay = max(delay, self.restarts[-self.perMinute] + self.window - now)
        self.restarts.append(now + delay)
        return delay, limited

    def recent(self, now: float) -> int:
        return sum(1 for t in self.restarts if t > now - self.window)


def describeExit(reason) -> str:
    """
    How a process ended, in words: C{exited with status 1}, C{killed by
    signal 9}.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"killed by signal {value.signal}"
        return f"exited with status {value.exitCode}"
    return str(value)


@implementer(ITransport)
class _ControlPipe:
    """
    The channel's transport in the control process: writes go to the
    worker's L{CONTROL_IN}.
    """

    disconnecting = False

    def __init__(self, process) -> None:
        self.process = process

    def write(self, data: bytes) -> None:
        self.process.writeToChild(CONTROL_IN, data)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.process.closeChildFD(CONTROL_IN)

    def getPeer(self):
        return None

    def getHost(self):
        return None


class WorkerProcess(ProcessProtocol):
    """
    One worker process, as the control process sees it.

    @ivar number: the worker's number, from 1.
    @ivar state: C{"starting"}, C{"serving"}, C{"stopping"}, C{"exited"}.
    @ivar listeners: its listeners' states, as it last said.
    @ivar counters: its last counters (L{lbproxy.workers.counters.collect}).
    @ivar failure: the line it gave when it could not start.
    """

    log = Logger()

    def __init__(self, supervisor: WorkerSupervisor, number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.state = "starting"
        self.pid: int | None = None
        self.started = supervisor._reactor.seconds()
        self.listeners: dict[str, str] = {}
        self.counters: dict | None = None
        self.failure: str | None = None
        self.channel = ChannelProtocol(self._received)
        self._lines: dict[int, bytes] = {1: b"", 2: b""}
        self._waiting: dict[int, Deferred] = {}

    @property
    def name(self) -> str:
        return f"worker {self.number}"

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.transport.closeChildFD(0)
        self.channel.makeConnection(_ControlPipe(self.transport))

    def send(self, message: dict) -> None:
        if self.state != "exited":
            self.channel.send(message)

    def ask(self, message: dict, ident: int) -> Deferred:
        """
        Send C{message} (with C{id} C{ident}) and return a Deferred firing
        with the answer carrying that id (None if the worker exits first).
        """
        waiting: Deferred = Deferred()
        self._waiting[ident] = waiting
        self.send({**message, "id": ident})
        return waiting

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == CONTROL_OUT:
            self.channel.dataReceived(data)
        elif childFD in self._lines:
            lines = (self._lines[childFD] + data).split(b"\n")
            self._lines[childFD] = lines.pop()
            for line in lines:
                self._logLine(childFD, line.decode("utf-8", "replace"))

    def _logLine(self, childFD: int, line: str) -> None:
        """
        Log a line of the worker's output: a log event (C{LEVEL NAMESPACE
        TEXT}, L{lbproxy.workers.child.LineObserver}) under its level and
        namespace, anything else (on stderr) as an error.
        """
        level, namespace, text = None, "lbproxy.workers.child", line
        if childFD == 1:
            word, _, rest = line.partition(" ")
            level = LogLevel.levelWithName(word) if word in _LEVELS else None
            if level is not None:
                namespace, _, text = rest.partition(" ")
        if not text.strip():
            return
        Logger(namespace=namespace).emit(
            level or LogLevel.error, "{worker}: {text}", worker=self.name, text=text, workerPid=self.pid
        )

    def _received(self, message: dict) -> None:
        op = message["op"]
        if op in ("counters", "reloaded"):
            if op == "counters":
                self.counters = message.get("data")
            waiting = self._waiting.pop(message.get("id"), None)
            if waiting is not None and not waiting.called:
                waiting.callback(message)
            if op == "reloaded":
                self.listeners = message.get("listeners", self.listeners)
                self.supervisor.workerReloaded(self, message)
        elif op == "ready":
            self.state = "serving"
            self.listeners = message.get("listeners", {})
            self.supervisor.workerReady(self)
        elif op == "listeners":
            self.listeners = message.get("listeners", {})
            self.supervisor.updateListeners()
        elif op == "down":
            self.supervisor.pusher.downReported(message, self.name, self.send)
        elif op == "failed":
            self.failure = str(message.get("error", ""))
        else:
            self.log.warn("{worker}: unknown message {op!r} on the control channel", worker=self.name, op=op)

    def processEnded(self, reason) -> None:
        for childFD, rest in self._lines.items():
            if rest:
                self._logLine(childFD, rest.decode("utf-8", "replace"))
        self.state = "exited"
        waiting, self._waiting = self._waiting, {}
        for deferred in waiting.values():
            if not deferred.called:
                deferred.callback(None)
        self.supervisor.workerEnded(self, reason)


_LEVELS = {"debug", "info", "warn", "error", "critical"}


class WorkerSupervisor(Service):
    """
    The workers of the control process's C{service} (a
    L{lbproxy.workers.control.ControlService}).

    @ivar workers: the live L{WorkerProcess} by number.
    @ivar pusher: the L{StatePusher} sending the model's changes to them.
    """

    log = Logger()
    #: Stopped with the listeners (L{lbproxy.service.BalancerService.stopService}).
    stopsWithListeners = True

    def __init__(
        self,
        service,
        count: int,
        reactor,
        argv: Callable[[int], list[str]],
        policy: Callable[[], RestartPolicy] = RestartPolicy,
        fatal: Callable[[str], None] | None = None,
        environment: dict | None = None,
    ) -> None:
        """
        @param argv: the command line of worker number N.
        @param fatal: called with the line when a worker cannot start when
            the daemon starts; by default it is logged and the reactor stops.
        """
        self.service = service
        self.count = count
        self._reactor = reactor
        self.argv = argv
        self.environment = environment
        self.policies = {number: policy() for number in range(1, count + 1)}
        self.fatal = fatal or self._fatal
        self.workers: dict[int, WorkerProcess] = {}
        self.restarts: dict[int, int] = {number: 0 for number in self.policies}
        self.lastExit: dict[int, str] = {}
        self.counterSum = CounterSum()
        self.pusher = StatePusher(service.balancer, self.broadcast)
        self.everReady = False
        self.stopping = False
        self._pending: dict[int, object] = {}
        self._stopped: Deferred | None = None
        self._killer = None
        self._ids = 0
        self._healthLoop = LoopingCall(self.pusher.pushHealth)
        self._healthLoop.clock = reactor
        self.setName("workers")

    # Starting and restarting.

    def startService(self) -> None:
        super().startService()
        self.pusher.start()
        self._healthLoop.start(HEALTH_PUSH_INTERVAL, now=False)
        for number in self.policies:
            self.spawn(number)

    def spawn(self, number: int) -> WorkerProcess:
        self._pending.pop(number, None)
        worker = WorkerProcess(self, number)
        argv = self.argv(number)
        self._reactor.spawnProcess(
            worker,
            argv[0],
            argv,
            env=self.environment if self.environment is not None else dict(os.environ),
            childFDs={0: "w", 1: "r", 2: "r", CONTROL_IN: "w", CONTROL_OUT: "r"},
        )
        self.workers[number] = worker
        self.log.info("worker {worker} started (pid {pid})", worker=number, pid=worker.pid)
        return worker

    def workerReady(self, worker: WorkerProcess) -> None:
        self.everReady = True
        worker.send(syncMessage(self.service.balancer))
        self.log.info(
            "worker {worker} (pid {pid}) serving {listeners}",
            worker=worker.number,
            pid=worker.pid,
            listeners=", ".join(sorted(worker.listeners)) or "no listener",
        )
        self.updateListeners()

    def workerEnded(self, worker: WorkerProcess, reason) -> None:
        how = describeExit(reason)
        self.counterSum.retire(worker.counters)
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        self.lastExit[worker.number] = how
        self.updateListeners()
        if self.stopping or not self.running:
            self.log.info("worker {worker} (pid {pid}) stopped: {how}", worker=worker.number, pid=worker.pid, how=how)
            if not self.workers and self._stopped is not None and not self._stopped.called:
                self._stopped.callback(None)
            return
        if worker.failure is not None and not self.everReady:
            self.fatal(f"worker {worker.number}: {worker.failure}")
            return
        now = self._reactor.seconds()
        delay, limited = self.policies[worker.number].next(now)
        self.restarts[worker.number] += 1
        why = f": {worker.failure}" if worker.failure else ""
        limit = ""
        if limited:
            policy = self.policies[worker.number]
            limit = f" (restarted {policy.perMinute} times in the last minute: waiting)"
        self.log.error(
            "worker {worker} (pid {pid}) {how}{why}; starting it again in {delay}s{limit}",
            worker=worker.number,
            pid=worker.pid,
            how=how,
            why=why,
            delay=f"{delay:.1f}",
            limit=limit,
        )
        self._pending[worker.number] = self._reactor.callLater(delay, self.spawn, worker.number)

    def _fatal(self, line: str) -> None:
        self.log.critical("cannot start: {line}", line=line)
        sys.__stderr__.write(f"lbproxy: cannot start: {line}\n")
        sys.__stderr__.flush()
        self._reactor.stop()

    # Talking to them.

    def broadcast(self, message: dict) -> None:
        for worker in list(self.workers.values()):
            worker.send(message)

    def _nextId(self) -> int:
        self._ids += 1
        return self._ids

    def reloadWorkers(self, who: str) -> Deferred:
        """
        Have every worker reload its configuration (the control process
        has applied it); each that did gets the control process's servers
        next (a C{sync}). Fires with C{{worker number: (ok, line)}}.
        """
        ident = self._nextId()
        asked = {number: worker.ask({"op": "reload", "who": who}, ident) for number, worker in self.workers.items()}
        return DeferredList(list(asked.values()), consumeErrors=True).addCallback(
            lambda results: {number: result for number, (_, result) in zip(asked, results)}
        )

    def workerReloaded(self, worker: WorkerProcess, message: dict) -> None:
        if message.get("ok"):
            worker.send(syncMessage(self.service.balancer))
        else:
            self.log.error("{worker} refused the reload: {line}", worker=worker.name, line=message.get("line", ""))
        self.updateListeners()

    def refreshCounters(self) -> Deferred:
        """
        Ask every serving worker for its counters and write their sum
        into the model; fires once done (a worker that does not answer
        within L{COUNTERS_TIMEOUT} counts with its last answer).
        """
        ident = self._nextId()
        asking = [w.ask({"op": "counters"}, ident) for w in self.workers.values() if w.state == "serving"]
        done = DeferredList(asking, consumeErrors=True)
        timer = self._reactor.callLater(COUNTERS_TIMEOUT, done.cancel) if asking else None

        def apply(_):
            if timer is not None and timer.active():
                timer.cancel()
            snapshots = [w.counters for w in self.workers.values() if w.counters]
            self.counterSum.apply(self.service.balancer, snapshots)

        return done.addBoth(apply)

    def updateListeners(self) -> None:
        """
        Set the model's listeners from what the workers serve: serving
        when a worker serves it; else starting (waiting for a worker), or
        draining and then stopped while the daemon stops.
        """
        serving = {name for worker in self.workers.values() if worker.state == "serving"
                   for name, state in worker.listeners.items() if state == ListenerState.SERVING.value}
        for listener in self.service.balancer.listeners.values():
            if listener.name in serving:
                listener.setState(ListenerState.SERVING)
            elif self.stopping:
                listener.setState(ListenerState.STOPPED if not self.workers else ListenerState.DRAINING)
            elif listener.state is ListenerState.SERVING:
                listener.setState(ListenerState.STARTING, "no worker serves it")

    # Stopping.

    def stopService(self):
        super().stopService()
        self.stopping = True
        self.pusher.stop()
        if self._healthLoop.running:
            self._healthLoop.stop()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        if not self.workers:
            self.updateListeners()
            return succeed(None)
        self._stopped = Deferred()
        self.broadcast({"op": "stop"})
        for worker in self.workers.values():
            worker.state = "stopping"
        self.updateListeners()
        grace = self.service.config.daemon.grace
        self._killer = self._reactor.callLater(grace + STOP_MARGIN, self._killLeft)

        def cancelKiller(result):
            if self._killer is not None and self._killer.active():
                self._killer.cancel()
            self.updateListeners()
            return result

        return self._stopped.addBoth(cancelKiller)

    def _killLeft(self) -> None:
        for worker in list(self.workers.values()):
            self.log.warn("worker {worker} (pid {pid}) still running after the grace period: killing it",
                          worker=worker.number, pid=worker.pid)
            try:
                worker.transport.signalProcess("KILL")
            except Exception:
                pass

    # What the stats show.

    def snapshot(self) -> dict:
        now = self._reactor.seconds()
        workers = []
        for number in self.policies:
            worker = self.workers.get(number)
            entry = {
                "worker": number,
                "pid": worker.pid if worker else None,
                "state": worker.state if worker else ("restarting" if number in self._pending else "exited"),
                "for": now - worker.started if worker else None,
                "restarts": self.restarts[number],
                "lastExit": self.lastExit.get(number),
                "connections": None,
            }
            if worker is not None and worker.counters:
                entry["connections"] = sum(
                    plain.get("connections", 0) for plain in worker.counters.get("listeners", {}).values()
                )
            workers.append(entry)
        return {"count": self.count, "workers": workers}
