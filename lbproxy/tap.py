"""
The twistd entry point: C{twistd lbproxy [--config FILE] [--check]}.

Without C{--config} lbproxy runs its built-in demo (L{lbproxy.demo}): a
listener on 127.0.0.1:8080 in front of two small web servers it starts on
127.0.0.1:8081 and :8082.

This is the only module that imports the global reactor.

Errors an operator makes are reported as one line, without a traceback:

  - a bad configuration is found while the options are parsed, before
    twistd does anything else: the loader's one-line L{ConfigError} goes to
    stderr and the process exits with status 1. (A L{usage.UsageError}
    would make twistd print its whole usage text in front of the line.)

  - a port that cannot be bound is only found when twistd starts the
    service (L{StreamServerEndpointService.privilegedStartService}, before
    it drops privileges). twistd then removes its pidfile, tells a
    daemonizing parent, and re-raises; L{makeService} installs an
    C{excepthook} that prints that one L{CannotListenError} as a single
    line instead of a traceback, and leaves every other exception alone.
"""

from __future__ import annotations

import sys
from importlib import resources
from typing import TextIO

from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from lbproxy.config import Config, loadBytes, loadFile
from lbproxy.errors import ConfigError

#: How the built-in demo configuration is named in messages.
DEMO_SOURCE = "demo.toml (built in)"


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

    def postOptions(self) -> None:
        self.demo = self["config"] is None
        try:
            self.config = demoConfig() if self.demo else loadFile(self["config"])
        except ConfigError as e:
            self.stderr.write(f"lbproxy: {e}\n")
            self.stderr.flush()
            raise SystemExit(1)
        if self["check"]:
            self.stdout.write(f"{self.config.source}: configuration OK\n")
            self.stdout.flush()
            raise SystemExit(0)


class _BriefListenErrors:
    """
    An C{excepthook} that reports an uncaught L{CannotListenError} (a
    listener's port is taken or not permitted) as one line on stderr and in
    the log, and hands every other exception to the previous hook.
    """

    log = Logger()

    def __init__(self, previous, stderr: TextIO) -> None:
        self.previous = previous
        self.stderr = stderr

    def __call__(self, kind, value, traceback) -> None:
        if not isinstance(value, CannotListenError):
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
        from lbproxy.reactor import install

        install()
    from twisted.internet import reactor

    from lbproxy.service import BalancerService

    service = BalancerService(options.config, reactor)
    if options.demo:
        from lbproxy.demo import DemoService

        DemoService(reactor).setServiceParent(service)
    if not isinstance(sys.excepthook, _BriefListenErrors):
        # sys.__stderr__: twistd has redirected sys.stderr into the log by
        # the time a listener fails.
        sys.excepthook = _BriefListenErrors(sys.excepthook, sys.__stderr__)
    return service
