"""
The control process of C{workers = N} (N > 1): the service tree of a
single process without its data path.

L{ControlService} is a L{BalancerService} whose listeners open no socket
(L{RemoteListenerService}: at startup it only checks that the address can
be had, so a port another program holds stops startup with one line, as
ever) and build no front; beside the health checks, the HA heartbeat and
the admin listener, its L{WorkerSupervisor} runs the workers. Its model's
listeners follow what the workers serve, and its counters are the
workers' summed (L{refreshCounters}, before each page of the admin
listener).

Why the control process serves no traffic: its health checks, HA adverts
and admin answers keep their timing however loaded the workers are, and a
fault on the data path (a worker out of memory, a crash) takes down a
worker, which is started again, never the process holding the control
plane.
"""

from __future__ import annotations

import sys

from twisted.application.service import Service
from twisted.internet.defer import succeed
from twisted.logger import Logger

from lbproxy.config import Config
from lbproxy.core.model import Balancer, Listener, ListenerState
from lbproxy.listening import bindFailure
from lbproxy.service import BalancerService
from lbproxy.sockets import listeningSocket, tcpBind
from lbproxy.workers.supervisor import WorkerSupervisor


def workerArgv(configPath: str, reactor) -> callable:
    """
    The command line of worker number N: this Python, running
    L{lbproxy.workers.child} on the configuration at C{configPath}, on the
    reactor the control process runs (its module, which installs it).
    """
    module = type(reactor).__module__

    def argv(number: int) -> list[str]:
        return [sys.executable, "-m", "lbproxy.workers.child", "--config", configPath,
                "--worker", str(number), "--reactor", module]

    return argv


class RemoteListenerService(Service):
    """
    A listener of the control process: its socket is the workers'. At
    startup (and when a reload adds it) the address is bound once with
    C{SO_REUSEPORT} and released, without listening: a port another
    program holds, or one that needs a privilege, stops startup (or
    refuses the reload) with one line naming the listener.
    """

    def __init__(self, listener: Listener, source: str, reactor) -> None:
        self.listener = listener
        self.source = source
        self._reactor = reactor
        self.grace: float | None = None
        self._checked = False
        self.setName(f"listener:{listener.name}")

    def privilegedStartService(self) -> None:
        if self._checked:
            return
        self._checked = True
        config = self.listener.config
        bind = tcpBind(config.bind)
        if bind is None:
            return
        family, host, port, backlog = bind
        try:
            listeningSocket(family, host, port, backlog, config.freebind, reusePort=True, listen=False).close()
        except OSError as error:
            self.listener.setState(ListenerState.FAILED, error.strerror or str(error))
            raise bindFailure(config.bind, f"listeners.{config.name}.bind", self.source, error) from error

    def replaceFactory(self, factory, front):
        return succeed(None)

    def stopService(self):
        super().stopService()
        return succeed(None)

    def drain(self):
        """
        The listener leaves the configuration (a reload): each worker
        drains its own; here it is gone at once.
        """
        listener = self.listener
        listener.setState(ListenerState.STOPPED, "removed")
        if listener.balancer is not None:
            listener.balancer.forgetListener(listener)
        return succeed(None)


class ControlService(BalancerService):
    """
    The control process's service tree (see the module docstring).

    @ivar supervisor: the L{WorkerSupervisor}.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor,
        serverTLS=None,
        balancer: Balancer | None = None,
        argv=None,
        supervisorFactory=WorkerSupervisor,
    ) -> None:
        """
        @param argv: the command line of worker number N (by default
            L{workerArgv} of the configuration's file).
        """
        super().__init__(config, reactor, serverTLS, balancer)
        self.supervisor = supervisorFactory(self, config.workers, reactor, argv or workerArgv(config.source, reactor))
        self.supervisor.setServiceParent(self)
        self.balancer.addPart("workers", self.supervisor.snapshot)

    def buildFront(self, listener: Listener) -> tuple:
        """
        No front: the workers serve the listeners.
        """
        listener.factory = None
        return None, None

    def listenerService(self, listener: Listener, source: str, factory, front):
        return RemoteListenerService(listener, source, self._reactor)

    def refreshCounters(self):
        return self.supervisor.refreshCounters()

    def reload(self, who: str = "SIGHUP") -> tuple[bool, str]:
        """
        Reload here (the workers are not told of the changes one by one:
        they reload the same file), then have every worker reload.
        """
        pusher = self.supervisor.pusher
        pusher.paused = True
        try:
            ok, line = super().reload(who)
        finally:
            pusher.paused = False
        if ok:
            pusher.noteHealth()
            self.supervisor.reloadWorkers(who).addCallback(self._workersReloaded, who)
        return ok, line

    def _workersReloaded(self, results: dict, who: str) -> dict:
        done = sorted(number for number, answer in results.items() if answer and answer.get("ok"))
        failed = sorted(number for number in results if number not in done)
        if failed:
            self.log.error(
                "reload asked by {who}: workers {failed} did not apply it (see their lines); workers {done} did",
                who=who,
                failed=", ".join(map(str, failed)),
                done=", ".join(map(str, done)) or "none",
            )
        else:
            self.log.info("reload asked by {who}: applied by workers {done}", who=who, done=", ".join(map(str, done)))
        return results

    def reopenLogs(self) -> int:
        """
        The access logs are the workers': each reopens its own.
        """
        self.supervisor.broadcast({"op": "reopen"})
        self.log.info("asked {count} workers to reopen their access logs", count=len(self.supervisor.workers))
        return 0
