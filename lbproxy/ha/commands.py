"""
The operator's commands (notify scripts, check commands): run without a
shell, bounded in time and in the output kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol

#: Output kept of one run (the rest is counted, not kept).
OUTPUT_KEPT = 4096


@dataclass(frozen=True)
class CommandResult:
    """
    How one run ended.

    @ivar status: the exit status, or None when it was killed by a signal
        (or for taking too long: C{timedOut}).
    @ivar output: the first L{OUTPUT_KEPT} bytes of stdout and stderr.
    """

    status: int | None
    output: bytes
    timedOut: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 0

    def describe(self) -> str:
        """
        One line: how it ended and the first line of its output.
        """
        if self.timedOut:
            how = "killed after its timeout"
        elif self.status is None:
            how = "killed by a signal"
        else:
            how = f"exit status {self.status}"
        first = self.output.strip().splitlines()[:1]
        return how + (f": {first[0].decode('utf-8', 'replace')[:200]}" if first else "")


class _Collector(ProcessProtocol):
    def __init__(self, done: Deferred) -> None:
        self.done = done
        self.output = bytearray()
        self.timedOut = False

    def childDataReceived(self, fd: int, data: bytes) -> None:
        room = OUTPUT_KEPT - len(self.output)
        if room > 0:
            self.output += data[:room]

    def processEnded(self, reason) -> None:
        status = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self.done.callback(CommandResult(status, bytes(self.output), self.timedOut))


def runCommand(reactor, argv: tuple[str, ...], timeout: float, env: dict[str, str] | None = None) -> Deferred:
    """
    Run C{argv} (no shell), killing it after C{timeout} seconds.

    @param reactor: provides C{spawnProcess} and C{callLater}.
    @param env: the command's environment besides C{PATH}.
    @return: a L{Deferred} firing with a L{CommandResult}; it never fails
        (a command that cannot be started ends with status 127).
    """
    done: Deferred = Deferred()
    collector = _Collector(done)
    environment = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    environment.update(env or {})
    try:
        process = reactor.spawnProcess(collector, argv[0], list(argv), env=environment)
    except OSError as e:
        return _started(done, CommandResult(127, f"cannot start {argv[0]}: {e.strerror}".encode()))

    def kill() -> None:
        collector.timedOut = True
        try:
            process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    timer = reactor.callLater(timeout, kill)

    def ended(result: CommandResult) -> CommandResult:
        if timer.active():
            timer.cancel()
        return result

    return done.addCallback(ended)


def _started(done: Deferred, result: CommandResult) -> Deferred:
    done.callback(result)
    return done
