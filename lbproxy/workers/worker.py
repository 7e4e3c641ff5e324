"""
A worker's service tree and its end of the channel.

L{WorkerService} is a L{BalancerService} that serves the listeners, each
on a socket of its own opened with C{SO_REUSEPORT}, and runs no health
check (the control process's are pushed to it), no HA heartbeat and no
admin listener (its configuration is read without C{[admin]}:
L{loadWorkerConfig}). L{WorkerAgent} answers the control process.
"""

from __future__ import annotations

import os
from dataclasses import replace

from twisted.logger import Logger

from lbproxy.config import Config, loadFile
from lbproxy.core.model import Listener, StateChange
from lbproxy.listening import ListenerService, checkListenAddresses
from lbproxy.service import BalancerService
from lbproxy.workers.counters import collect
from lbproxy.workers.state import StateFollower


def loadWorkerConfig(path: str) -> Config:
    """
    The configuration at C{path} as a worker runs it: without C{[admin]}
    (the control process's). C{[ha]}'s files are not read: the heartbeat
    is the control process's, and a worker's stick tables are its own.
    """
    config = loadFile(path)
    checkListenAddresses(config)
    return replace(config, admin=None)


class WorkerService(BalancerService):
    """
    The listeners of one worker (see the module docstring).
    """

    def startMonitor(self, pool) -> None:
        """
        No health checks here: the control process's states are pushed.
        """

    def listenerService(self, listener: Listener, source: str, factory, front):
        return ListenerService(listener, source, factory, self._reactor, front, reusePort=True)

    def listenerStates(self) -> dict[str, str]:
        return {name: listener.state.value for name, listener in self.balancer.listeners.items()}


class WorkerAgent:
    """
    The worker's end of the channel: applies what the control process
    pushes, reloads, stops and answers for the counters; reports the
    servers its passive checks take down and its listeners' states.

    @ivar channel: the L{lbproxy.workers.channel.ChannelProtocol} to the
        control process (set before L{start}).
    """

    log = Logger()

    def __init__(self, service: WorkerService, number: int, reactor) -> None:
        self.service = service
        self.number = number
        self._reactor = reactor
        self.channel = None
        self.follower = StateFollower(service.balancer, self.send)
        self.stopping = False

    def send(self, message: dict) -> None:
        if self.channel is not None:
            self.channel.send(message)

    def start(self) -> None:
        """
        The listeners are open: follow the control process, and say so.
        """
        self.follower.start()
        self.service.balancer.addObserver(self._listenerChanged)
        self.send({"op": "ready", "pid": os.getpid(), "listeners": self.service.listenerStates()})

    def _listenerChanged(self, change: StateChange) -> None:
        if change.kind == "listener" and not self.stopping:
            self.send({"op": "listeners", "listeners": self.service.listenerStates()})

    def received(self, message: dict) -> None:
        op = message["op"]
        if op in ("state", "weight", "health", "add", "remove", "sync"):
            self.follower.apply(message)
        elif op == "counters":
            self.send({"op": "counters", "id": message.get("id"), "data": collect(self.service.balancer)})
        elif op == "reload":
            who = f"{message.get('who', 'the control process')} (worker {self.number})"
            ok, line = self.service.reload(who)
            self.send({"op": "reloaded", "id": message.get("id"), "ok": ok, "line": line,
                       "listeners": self.service.listenerStates()})
        elif op == "reopen":
            self.service.reopenLogs()
        elif op == "stop":
            self.stop("the control process asked")
        else:
            self.log.warn("unknown message {op!r} from the control process", op=op)

    def lost(self, reason) -> None:
        """
        The channel closed: the control process is gone (or stops); stop.
        """
        self.channel = None
        self.stop("the control process is gone")

    def stop(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.log.info("worker {number} stopping: {why}", number=self.number, why=why)
        if self._reactor.running:
            self._reactor.stop()
