"""
The notify commands of C{[ha.notify]}: one per role entered (C{master},
C{backup}, C{fault}, and C{stop} when the heartbeat stops), run with the
role, the previous role and the reason as arguments.

They run one at a time, in the order of the transitions, so a script
that records the role never sees C{backup} overtake the C{master} before
it. Each is killed after C{timeout}; how it ended, and its output, are
logged. lbproxy's own state never depends on them: the addresses are
managed by lbproxy itself.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.config.ha import NotifyConfig
from lbproxy.ha.commands import CommandResult, runCommand
from lbproxy.ha.interfaces import INotifier


@implementer(INotifier)
class CommandNotifier:
    log = Logger()

    def __init__(self, config: NotifyConfig, group: int, reactor) -> None:
        self.config = config
        self.group = group
        self._reactor = reactor
        self._last: Deferred = succeed(None)

    def notify(self, role: str, previous: str, reason: str) -> Deferred:
        argv = getattr(self.config, "stop" if role == "init" else role, ())
        if not argv:
            return succeed(None)
        name = "stop" if role == "init" else role
        command = (*argv, name, previous, reason)
        env = {"LBPROXY_HA_GROUP": str(self.group)}
        done: Deferred = Deferred()

        def run(_):
            ran = runCommand(self._reactor, command, self.config.timeout, env)
            ran.addCallback(self._ended, name)
            ran.addBoth(done.callback)
            return ran

        self._last = self._last.addCallback(run)
        return done

    def _ended(self, result: CommandResult, name: str) -> None:
        output = result.output.decode("utf-8", "replace").strip()
        if result.ok:
            self.log.info(
                "ha: notify {role} command ended{output}",
                role=name,
                output=f": {output}" if output else "",
            )
        else:
            self.log.warn("ha: notify {role} command failed: {how}", role=name, how=result.describe())
