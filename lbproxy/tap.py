"""
The twistd entry point: C{twistd lbproxy [--config FILE] [--check]}.

Without C{--config} lbproxy runs its built-in demo (L{lbproxy.demo}): a
listener on 127.0.0.1:8080 in front of two small web servers it starts on
127.0.0.1:8081 and :8082.

This is the only module that imports the global reactor (with the worker
processes' entry point, L{lbproxy.workers.child}), and the only one that
installs signal handlers: C{SIGHUP} reloads the whole
configuration (L{BalancerService.reload}, see L{lbproxy.reload}) without
closing a listening socket; C{SIGUSR1} reopens the HTTP access logs (after
twistd's own handler, which rotates its log file when it has one).
C{SIGTERM} is twistd's: it stops the service tree, which stops gracefully
(L{BalancerService.stopService}). With C{workers} above 1 the service tree
is the control process's (L{lbproxy.workers.control.ControlService}),
which passes reloads, reopenings and the stop on to its workers.

Errors an operator makes are reported as one line, without a traceback:

  - a bad configuration is found while the options are parsed, before
    twistd does anything else: the loader's one-line L{ConfigError} goes to
    stderr and the process exits with status 1. (A L{usage.UsageError}
    would make twistd print its whole usage text in front of the line.)
    This includes the TLS files (certificates, keys, CAs of listeners and
    pools), which are read and checked then, and what can be known of the
    listeners' addresses without listening (two listeners on one address,
    a UNIX socket's missing directory, an address this machine does not
    have: L{lbproxy.listening.checkListenAddresses}), by C{--check} too.

  - a listener whose socket cannot be opened (port in use, not permitted)
    is only found when twistd starts the service
    (L{lbproxy.listening.ListenerService.privilegedStartService}, before it
    drops privileges). twistd then removes its pidfile, tells a
    daemonizing parent, and re-raises; L{makeService} installs an
    C{excepthook} that prints that L{ListenerStartError}, which names the
    listener, its address and the reason, as a single line instead of a
    traceback, and leaves every other exception alone.
"""

from __future__ import annotations

import signal
import sys
from importlib import resources
from typing import TextIO

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from lbproxy.config import Config, loadBytes, loadFile
from lbproxy.errors import CannotStart, ConfigError
from lbproxy.listening import ListenerStartError, checkListenAddresses

#: How the built-in demo configuration is named in messages.
DEMO_SOURCE = "demo.toml (built in)"


def loadConfig(path: str | None) -> Config:
    """
    The configuration at C{path} (the built-in demo for None) with
    everything checked that can be without listening: what
    L{checkListenAddresses} finds, the files of C{[ha]} (its key, its
    commands) and the admin token. Certificates are read by the caller
    (at startup by L{Options}, at a reload by L{lbproxy.reload.prepare}).

    @raise ConfigError: one line.
    """
    from dataclasses import replace

    config = demoConfig() if path is None else loadFile(path)
    checkListenAddresses(config)
    if config.ha is not None:
        from lbproxy.config.ha import loadFiles

        config = replace(config, ha=loadFiles(config.ha, config.source))
    if config.admin is not None:
        from lbproxy.config.admin import loadToken

        config = replace(config, admin=loadToken(config.admin, config.source))
    return config


def demoConfig() -> Config:
    """
    The built-in demo configuration, read from the package data and checked
    by the same loader as any file.
    """
    raw = resources.files("lbproxy").joinpath("demo.toml").read_bytes()
    return loadBytes(raw, DEMO_SOURCE)


class Options(usage.Options):
    """
    Command line of C{twistd lbproxy}.

    After parsing, C{config} holds the validated L{Config} and C{demo} says
    whether it is the built-in demo.

    @ivar stdout: where C{--check} reports success.
    @ivar stderr: where configuration errors go.
    """

    synopsis = "[--config FILE] [--check]"
    longdesc = (
        "Load-balancing proxy. Without --config, runs the built-in demo: "
        "a listener on 127.0.0.1:8080 balancing between two demo web "
        "servers on 127.0.0.1:8081 and 127.0.0.1:8082."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: the built-in demo)."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, print the result and exit."],
    ]
    compData = usage.Completions(optActions={"config": usage.CompleteFiles("*.toml")})

    def __init__(self) -> None:
        super().__init__()
        self.stdout: TextIO = sys.stdout
        self.stderr: TextIO = sys.stderr
        self.config: Config | None = None
        self.demo = False
        self.serverTLS = None
        self.balancer = None

    def postOptions(self) -> None:
        self.demo = self["config"] is None
        try:
            self.config = loadConfig(self["config"])
            self._loadTLS()
        except ConfigError as e:
            self.stderr.write(f"lbproxy: {e}\n")
            self.stderr.flush()
            raise SystemExit(1)
        if self["check"]:
            self.stdout.write(f"{self.config.source}: configuration OK\n")
            self.stdout.flush()
            raise SystemExit(0)


    def _loadTLS(self) -> None:
        """
        Read and check every TLS file of the configuration: the listeners'
        certificates and the pools' (loaded with the pools).
        """
        from lbproxy.core.model import Balancer
        from lbproxy.service import loadListenerTLS

        self.serverTLS = loadListenerTLS(self.config)
        self.balancer = Balancer(self.config)


class SignalHandler(Service):
    """
    While running, signal C{number} makes C{action()} run in the reactor
    thread (the handler only schedules it: a signal can arrive in the
    middle of anything), after the handler it replaced when that was a
    Python function (twistd's log rotation on SIGUSR1). Stopping puts the
    previous handler back.
    """

    number = signal.SIGHUP

    def __init__(self, action, reactor) -> None:
        self.action = action
        self._reactor = reactor
        self._previous = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(self.number, self._received)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(self.number, self._previous)
            self._previous = None

    def _received(self, number, frame) -> None:
        if callable(self._previous):
            self._previous(number, frame)
        self._reactor.callFromThread(self.action)


class ReloadOnHangup(SignalHandler):
    """
    C{SIGHUP} reloads the configuration (C{target.reload("SIGHUP")}).
    """

    def __init__(self, target, reactor) -> None:
        super().__init__(lambda: target.reload("SIGHUP"), reactor)
        self.target = target

    def _received(self, number, frame) -> None:
        # Never twistd's or anybody's SIGHUP handler before: ours alone.
        self._reactor.callFromThread(self.action)


class ReopenOnUSR1(SignalHandler):
    """
    C{SIGUSR1} reopens the HTTP listeners' access logs (after a rotation
    moved them away: C{logrotate}'s C{postrotate}), after twistd's own
    handler, which rotates twistd's log file when it writes one.
    """

    number = signal.SIGUSR1


class _BriefListenErrors:
    """
    An C{excepthook} that reports an uncaught L{ListenerStartError} or
    L{CannotListenError} (a listener's or a demo server's port is taken or
    not permitted) or L{CannotStart} (the HA heartbeat lacks a privilege
    or its interface) as one line on stderr and in the log, and hands
    every other exception to the previous hook.
    """

    log = Logger()

    def __init__(self, previous, stderr: TextIO) -> None:
        self.previous = previous
        self.stderr = stderr

    def __call__(self, kind, value, traceback) -> None:
        if not isinstance(value, (ListenerStartError, CannotListenError, CannotStart)):
            self.previous(kind, value, traceback)
            return
        self.log.critical("cannot start: {error}", error=value)
        self.stderr.write(f"lbproxy: cannot start: {value}\n")
        self.stderr.flush()


def makeService(options: Options):
    """
    The service tree for the validated configuration; with the built-in
    demo, also the demo web servers.
    """
    if "twisted.internet.reactor" not in sys.modules and sys.platform == "linux":
        # No --reactor given: run on lbproxy's epoll reactor.
        from lbproxy._twisted.reactor import install

        install()
    from twisted.internet import reactor

    if options.config.workers > 1:
        # The control process: the listeners are the workers' (lbproxy.workers).
        from lbproxy.workers.control import ControlService as BalancerService
    else:
        from lbproxy.service import BalancerService

    service = BalancerService(options.config, reactor, options.serverTLS, options.balancer)
    service.loader = lambda: loadConfig(options["config"])
    if options.config.ha is not None:
        from lbproxy.ha.service import attach

        attach(service, options.config.ha, reactor)
    reload = ReloadOnHangup(service, reactor)
    reload.setName("reload-on-hangup")
    reload.setServiceParent(service)
    reopen = ReopenOnUSR1(service.reopenLogs, reactor)
    reopen.setName("reopen-on-usr1")
    reopen.setServiceParent(service)
    from lbproxy.admin.notify import SystemdNotifier

    notifier = SystemdNotifier.fromEnvironment(reactor)
    if notifier is not None:
        notifier.setName("systemd-notify")
        notifier.setServiceParent(service)
    if options.demo:
        from lbproxy.demo import DemoService

        DemoService(reactor).setServiceParent(service)
    if not isinstance(sys.excepthook, _BriefListenErrors):
        # sys.__stderr__: twistd has redirected sys.stderr into the log by
        # the time a listener fails.
        sys.excepthook = _BriefListenErrors(sys.excepthook, sys.__stderr__)
    return service
