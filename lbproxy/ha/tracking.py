"""
The balancer's health as the heartbeat sees it: the conditions of
C{[[ha.track]]}, each holding or failed, summed up as a fault (the node
must not serve) and a priority penalty.

What is read of the balancer is narrow (L{IBalancerHealth}): which
listeners are not bound, and how many servers of its pools are up, looked
at again on every change of state the live model announces (a listener
bound or closed, a server up or down, a pool or server a reload added or
removed).
A check command runs every C{interval} and counts after C{fall} failures
or C{rise} successes in a row.

Every change is one log line naming the condition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lbproxy.config.ha import TrackConfig
from lbproxy.core.pool import ServerState
from lbproxy.ha.commands import CommandResult, runCommand
from lbproxy.interfaces import IBalancerHealth

#: The kinds of change of the live model after which the conditions are
#: looked at again (L{lbproxy.core.model.StateChange}).
_RELEVANT = frozenset({"listener", "server", "server-removed", "server-added", "pool"})


@dataclass
class ConditionState:
    """
    One condition, for the snapshot.

    @ivar detail: what was last found (C{"1 of 2 servers up"}, a command's
        exit status...).
    """

    config: TrackConfig
    ok: bool = True
    detail: str = ""
    successes: int = 0
    failures: int = 0

    def plain(self) -> dict:
        return {
            "name": self.config.name,
            "ok": self.ok,
            "action": "fault" if not self.config.weight else f"priority -{self.config.weight}",
            "detail": self.detail,
        }


class Tracker:
    """
    Follows the conditions and tells C{changed(fault, penalty)} whenever
    their sum changes (see L{lbproxy.ha.machine.Heartbeat.setHealth}).
    """

    log = Logger()

    def __init__(
        self,
        conditions: tuple[TrackConfig, ...],
        balancer: IBalancerHealth,
        changed: Callable[[str | None, int], None],
        reactor,
        runner=runCommand,
    ) -> None:
        """
        @param runner: runs a check command (L{runCommand}'s signature).
        """
        self._runner = runner
        self.states = [ConditionState(c) for c in conditions]
        self._balancer = balancer
        self._changed = changed
        self._reactor = reactor
        self._loops: list[LoopingCall] = []
        self._observing = False
        self._running: dict[int, object] = {}
        self._summary: tuple[str | None, int] = (None, 0)
        self._stopped = False

    def summary(self) -> tuple[str | None, int]:
        """
        C{(fault, penalty)} now: the failed fault conditions named (or
        None), and the weights of the failed weighted ones added up.
        """
        faults = [s.config.name for s in self.states if not s.ok and not s.config.weight]
        penalty = sum(s.config.weight for s in self.states if not s.ok)
        fault = ("failed: " + "; ".join(faults)) if faults else None
        return fault, penalty

    def start(self) -> None:
        """
        Look at every condition now, then follow them.
        """
        for state in self.states:
            if state.config.kind == "command":
                loop = LoopingCall(self._runCheck, state)
                loop.clock = self._reactor
                loop.start(state.config.interval, now=True)
                self._loops.append(loop)
        self._balancer.addObserver(self._modelChanged)
        self._observing = True
        self._lookAtListeners()
        self._lookAtPools()
        self._summary = self.summary()

    def stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._observing:
            self._balancer.removeObserver(self._modelChanged)
            self._observing = False
        # A check command still running ends on its own (its timeout
        # bounds it); its result is not looked at.
        self._stopped = True

    # Looking

    def _set(self, state: ConditionState, ok: bool, detail: str) -> None:
        state.detail = detail
        if ok == state.ok:
            return
        state.ok = ok
        action = "fault" if not state.config.weight else f"priority -{state.config.weight}"
        if ok:
            self.log.info("ha: condition holds again: {name} ({detail})", name=state.config.name, detail=detail)
        else:
            self.log.warn(
                "ha: condition failed ({action}): {name} ({detail})",
                name=state.config.name,
                detail=detail,
                action=action,
            )
        summary = self.summary()
        if summary != self._summary:
            self._summary = summary
            self._changed(*summary)

    def _lookAtListeners(self) -> None:
        for state in self.states:
            if state.config.kind == "listeners":
                unbound = list(self._balancer.unboundListeners())
                self._set(
                    state,
                    not unbound,
                    "all bound" if not unbound else "not bound: " + ", ".join(unbound),
                )

    def _modelChanged(self, change) -> None:
        if change.kind in _RELEVANT:
            self._lookAtListeners()
            self._lookAtPools()

    def _lookAtPools(self) -> None:
        pools = self._balancer.pools
        for state in self.states:
            kind = state.config.kind
            if kind == "pool":
                pool = pools.get(state.config.pool)
                if pool is None:
                    self._set(state, False, "the pool is gone")
                    continue
                up = _up(pool)
                self._set(state, up >= state.config.minUp, f"{up} of {len(pool.servers)} servers up")
            elif kind == "pools":
                down = [name for name, pool in sorted(pools.items()) if not _up(pool)]
                self._set(
                    state,
                    len(down) < len(pools),
                    f"{len(pools) - len(down)} of {len(pools)} pools have a server up",
                )

    def _runCheck(self, state: ConditionState) -> None:
        key = id(state)
        if key in self._running:
            return
        config = state.config
        d = self._runner(self._reactor, config.command, config.timeout)
        self._running[key] = d

        def ended(result: CommandResult) -> None:
            self._running.pop(key, None)
            if self._stopped:
                return
            if result.ok:
                state.successes += 1
                state.failures = 0
            else:
                state.failures += 1
                state.successes = 0
            detail = result.describe()
            if state.ok and state.failures >= config.fall:
                self._set(state, False, f"{detail}, {state.failures} times in a row")
            elif not state.ok and state.successes >= config.rise:
                self._set(state, True, f"{detail}, {state.successes} times in a row")
            else:
                state.detail = detail

        d.addCallback(ended)


def _up(pool) -> int:
    return sum(1 for server in pool.servers if server.state is ServerState.UP)
