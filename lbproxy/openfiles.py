"""
The open-file limit (C{RLIMIT_NOFILE}) the configuration needs.

Every proxied connection holds two descriptors, the client's and the
server's; on top of those come the listening sockets, idle keep-alive
connections to HTTP servers, one health check per checked server, the
access log files, and the daemon's own (standard streams, its log, the
reactor, a margin). With the common soft limit of 1,024 the daemon would
run out of descriptors long before a listener's C{maxconn} of 10,000, and
refuse connections with C{EMFILE} instead of C{maxconn}.

At start (L{lbproxy.service.BalancerService.privilegedStartService},
before listening and before twistd drops privileges) L{OpenFileLimit}
raises the soft limit as far as needed, up to the hard limit, and the hard
limit too when the process may (root, C{CAP_SYS_RESOURCE}). It logs one
line with the limit set, or one warning with the numbers and the remedy
when the limit stays too low. It never lowers a limit.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from twisted.logger import Logger

from lbproxy.config import Config

#: Descriptors of the daemon itself: standard streams, its log file, the
#: reactor's epoll and waker, DNS lookups, certificate files being read,
#: and a margin.
OWN_DESCRIPTORS = 64


@dataclass(frozen=True)
class DescriptorNeed:
    """
    How many descriptors a configuration can hold at once.

    @ivar connections: proxied connections at once (the listeners'
        C{maxconn} summed); None when a listener has no C{maxconn} (0).
    @ivar unlimited: the listeners without a C{maxconn}.
    @ivar other: every other descriptor (listening sockets, idle server
        connections, health checks, log files, the daemon's own).
    """

    connections: int | None
    other: int
    unlimited: tuple[str, ...] = ()

    @property
    def total(self) -> int | None:
        return None if self.connections is None else 2 * self.connections + self.other


def descriptorsNeeded(config: Config) -> DescriptorNeed:
    """
    The descriptors C{config} can hold at once.
    """
    connections = 0
    other = OWN_DESCRIPTORS
    logs = set()
    unlimited = []
    for listener in config.listeners.values():
        other += 1
        if listener.maxconn:
            connections += listener.maxconn
        else:
            unlimited.append(listener.name)
        if listener.mode == "http":
            for name in listener.poolsUsed():
                pool = config.pools[name]
                if pool.reuseMaxIdle and pool.sendProxy == "none":
                    other += pool.reuseMaxIdle * len(pool.servers)
            if listener.accessLog is not None:
                logs.add(listener.accessLog)
    for pool in config.pools.values():
        if pool.health is not None:
            other += len(pool.servers)
    other += len(logs)
    return DescriptorNeed(None if unlimited else connections, other, tuple(unlimited))


class OpenFileLimit:
    """
    Sets C{RLIMIT_NOFILE} for a configuration (see the module docstring).

    @ivar need: what the configuration needs.
    """

    log = Logger()

    def __init__(self, config: Config, getrlimit=resource.getrlimit, setrlimit=resource.setrlimit) -> None:
        self.need = descriptorsNeeded(config)
        self._getrlimit = getrlimit
        self._setrlimit = setrlimit

    def apply(self) -> int:
        """
        Raise the limit as far as needed and log the outcome.

        @return: the soft limit in force afterwards.
        """
        soft, hard = self._getrlimit(resource.RLIMIT_NOFILE)
        needed = self.need.total
        if needed is None:
            return self._unlimited(soft, hard)
        if _atLeast(soft, needed):
            self.log.info(
                "open files: the limit of {soft} covers the {needed} that maxconn needs",
                soft=soft,
                needed=needed,
            )
            return soft
        if _atLeast(hard, needed):
            self._setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        else:
            try:
                self._setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            except (OSError, ValueError):
                return self._tooLow(soft, hard, needed)
        self.log.info(
            "open files: limit raised from {soft} to {needed}, what maxconn needs",
            soft=soft,
            needed=needed,
        )
        return needed

    def _toHard(self, soft: int, hard: int) -> int:
        """
        Raise the soft limit to the hard limit: the soft limit after.
        """
        if soft == hard:
            return soft
        try:
            self._setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            return soft
        return hard

    def _unlimited(self, soft: int, hard: int) -> int:
        soft = self._toHard(soft, hard)
        self.log.info(
            "open files: limit set to {soft}, the most allowed: maxconn = 0 (no limit) on {names}",
            soft=soft,
            names=", ".join(f"listeners.{name}" for name in self.need.unlimited),
        )
        return soft

    def _tooLow(self, soft: int, hard: int, needed: int) -> int:
        hard = self._toHard(soft, hard)
        capacity = max(0, hard - self.need.other) // 2
        self.log.warn(
            "open files: maxconn needs {needed} descriptors (2 per proxied connection plus "
            "{other} for listeners, health checks, logs and the daemon), but the limit is "
            "{hard} and lbproxy may not raise it: about {capacity} connections fit; raise "
            "the limit before starting lbproxy (ulimit -n {needed}, or LimitNOFILE={needed} "
            "in its systemd unit) or lower maxconn",
            needed=needed,
            other=self.need.other,
            hard=hard,
            capacity=capacity,
        )
        return hard


def _atLeast(limit: int, needed: int) -> bool:
    return limit == resource.RLIM_INFINITY or limit >= needed
