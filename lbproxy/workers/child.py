"""
A worker process: C{python -m lbproxy.workers.child --config FILE
--worker N --reactor MODULE}, started by the control process
(L{lbproxy.workers.supervisor}), never by hand.

It installs the reactor the control process runs on, reads the
configuration (L{loadWorkerConfig}), opens its listeners' sockets with
C{SO_REUSEPORT}, tells the control process it serves, and runs until the
control process tells it to stop, its channel closes (the control process
is gone), or C{SIGTERM}; each of these stops it gracefully, as a single
process stops. (The reactor installs no signal handler of its own: a
worker starts no process, so it needs no C{SIGCHLD} handler.) C{SIGINT}, C{SIGHUP} and C{SIGUSR1} are the control
process's: a terminal's Ctrl-C reaches the whole process group, and the
control process passes the stop on.

Its log events go to standard output, one line each (L{LineObserver}),
which the control process logs under the worker's name. A worker that
cannot start (a listener's port is taken, a certificate unreadable)
writes its one-line reason on the channel and to standard error, and
exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import struct
import sys

from twisted.logger import Logger, formatEvent, globalLogBeginner

from lbproxy.workers.channel import CONTROL_IN, CONTROL_OUT, ChannelProtocol


class LineObserver:
    """
    Writes each log event to C{out} as C{LEVEL NAMESPACE TEXT} lines (a
    failure's traceback as more such lines), for the control process.
    """

    def __init__(self, out) -> None:
        self.out = out

    def __call__(self, event: dict) -> None:
        level = event.get("log_level")
        prefix = f"{level.name if level is not None else 'info'} {event.get('log_namespace', '-')} "
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        try:
            self.out.write("".join(prefix + line + "\n" for line in text.splitlines() or [""]))
            self.out.flush()
        except (OSError, ValueError):
            pass


def sendNow(fd: int, message: dict) -> None:
    """
    Write one channel message on C{fd} at once (before the reactor runs).
    """
    import os

    data = json.dumps(message).encode("utf-8")
    try:
        os.write(fd, struct.pack("!I", len(data)) + data)
    except OSError:
        pass


def parseArguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lbproxy.workers.child")
    parser.add_argument("--config", required=True)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--reactor", default="lbproxy._twisted.reactor")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parseArguments(sys.argv[1:] if argv is None else argv)
    for number in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(number, signal.SIG_IGN)
    module = importlib.import_module(args.reactor)
    if hasattr(module, "install"):
        module.install()
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO

    from lbproxy.errors import ConfigError
    from lbproxy.listening import ListenerStartError
    from lbproxy.workers.worker import WorkerAgent, WorkerService, loadWorkerConfig

    globalLogBeginner.beginLoggingTo([LineObserver(sys.stdout)], redirectStandardIO=False)
    log = Logger(namespace="lbproxy.workers.child")
    try:
        config = loadWorkerConfig(args.config)
        service = WorkerService(config, reactor)
        service.loader = lambda: loadWorkerConfig(args.config)
        service.privilegedStartService()
    except (ConfigError, ListenerStartError) as error:
        sendNow(CONTROL_OUT, {"op": "failed", "error": str(error)})
        sys.stderr.write(f"lbproxy worker {args.worker}: cannot start: {error}\n")
        return 1
    agent = WorkerAgent(service, args.worker, reactor)
    agent.channel = ChannelProtocol(agent.received, agent.lost)
    StandardIO(agent.channel, stdin=CONTROL_IN, stdout=CONTROL_OUT, reactor=reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.callWhenRunning(agent.start)
    # SIGTERM stops through the agent, as the control process's stop does
    # (the reactor's own handler would stop it a second time).
    signal.signal(signal.SIGTERM, lambda number, frame: reactor.callFromThread(agent.stop, "SIGTERM"))
    log.info("worker {number} starting", number=args.worker)
    reactor.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
