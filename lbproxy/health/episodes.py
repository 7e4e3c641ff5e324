"""
What the health monitor logs about failing servers: state changes once,
then a reminder every few minutes, not a line per probe.

A server whose checks fail is an episode: it begins with the first failed
probe of a serving server (or with the server going down, actively or
passively) and ends with a passing probe of a serving server (or with the
server coming back up). During an episode:

  - the server going down or coming up is logged by the pool, once
    (C{server web/web2 is down (was up): 3 checks failed, last: ...});
  - the first failed probe of a serving server is logged (debug), as the
    start of what may become a down;
  - further failed probes are not logged, except a reminder at most every
    L{REPEAT_INTERVAL} while the episode lasts (C{server web/web2 still
    down since 2026-11-28 03:12:00 UTC (20m), 600 checks failed, last:
    connection refused});
  - a changed failure reason is logged at once (C{... now fails with
    status 503, was connection refused}), at most once per
    L{REPEAT_INTERVAL}; a reason that keeps changing shows in the
    reminders.

So a server down for hours gives a few lines an hour, however short the
check interval.
"""

from __future__ import annotations

import time

from twisted.logger import Logger

from lbproxy.core.limits import plural
from lbproxy.core.pool import Server, ServerState

#: Seconds between two reminders that a server is still down (or its checks
#: still failing), and between two lines about its failure reason changing.
REPEAT_INTERVAL = 300.0


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m" + (f"{seconds}s" if seconds else "")
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h" + (f"{minutes}m" if minutes else "")


class _Episode:
    __slots__ = ("down", "since", "failed", "reason", "lastLine", "lastReasonLine")

    def __init__(self, down: bool, since: float, reason: str | None) -> None:
        #: Whether the server is down (else serving with failing checks).
        self.down = down
        self.since = since
        #: Failed probes since C{since}.
        self.failed = 0
        #: The failure reason last logged (None: none yet since going down).
        self.reason = reason
        self.lastLine = since
        self.lastReasonLine: float | None = None


class FailureLog:
    """
    The failure episodes of one pool's servers (see the module docstring).
    """

    log = Logger()

    def __init__(self, reactor, repeatInterval: float = REPEAT_INTERVAL) -> None:
        """
        @param reactor: provides C{seconds}.
        """
        self._reactor = reactor
        self.repeatInterval = repeatInterval
        self._episodes: dict[Server, _Episode] = {}

    def stateChanged(self, server: Server, old: ServerState, new: ServerState, reason: str) -> None:
        """
        A pool observer: the pool logged the change; an episode of a server
        going down starts now, any other change ends the episode.
        """
        if new is ServerState.DOWN:
            # The reason of the change is in the pool's line; the probes'
            # reason is taken, without a line, from the next failed one.
            self._episodes[server] = _Episode(True, self._reactor.seconds(), None)
        else:
            self._episodes.pop(server, None)

    def probed(self, server: Server, healthy: bool, reason: str) -> None:
        """
        A probe of C{server} finished without changing its state.
        """
        now = self._reactor.seconds()
        episode = self._episodes.get(server)
        if healthy:
            if episode is not None and not episode.down:
                del self._episodes[server]
                self.log.debug(
                    "health check of {server} passes again after {failed}",
                    server=server.qualifiedName,
                    failed=plural(episode.failed, "failed check"),
                )
            return
        if episode is None:
            episode = self._episodes[server] = _Episode(False, now, reason)
            episode.failed = 1
            self.log.debug(
                "health check of {server} failed: {reason}",
                server=server.qualifiedName,
                reason=reason,
            )
            return
        episode.failed += 1
        repeat = self.repeatInterval
        if episode.reason is None:
            episode.reason = reason
        elif reason != episode.reason and (
            episode.lastReasonLine is None or now - episode.lastReasonLine >= repeat
        ):
            self.log.info(
                "health check of {server} now fails with {reason}, was {previous}; "
                "{state} since {since} ({duration}), {failed} failed",
                previous=episode.reason,
                **self._fields(server, episode, reason, now),
            )
            episode.reason = reason
            episode.lastLine = episode.lastReasonLine = now
        elif now - episode.lastLine >= repeat:
            self.log.info(
                "server {server} still {state} since {since} ({duration}), {failed} failed, "
                "last: {reason}",
                **self._fields(server, episode, reason, now),
            )
            episode.reason = reason
            episode.lastLine = now

    def _fields(self, server: Server, episode: _Episode, reason: str, now: float) -> dict:
        return {
            "server": server.qualifiedName,
            "state": "down" if episode.down else "failing checks",
            "since": _when(episode.since),
            "duration": _duration(now - episode.since),
            "failed": plural(episode.failed, "check"),
            "reason": reason,
            "sinceSeconds": episode.since,
            "failedChecks": episode.failed,
        }

    def forget(self) -> None:
        """
        Drop every episode (the monitor stopped).
        """
        self._episodes.clear()

    def forgetServer(self, server: Server) -> None:
        """
        Drop the episode of C{server} (it left the pool).
        """
        self._episodes.pop(server, None)
