"""
Weighted least-connections: the server with the fewest active connections
per unit of weight.
"""

from __future__ import annotations

from zope.interface import implementer

from lbproxy.interfaces import IBackendSelector
from lbproxy.selectors.base import lessLoaded, usable
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin


@implementer(IBackendSelector)
class WeightedLeastConnections:
    """
    Pick the usable server with the lowest C{active / weight}.

    Servers tied at the lowest ratio take turns by smooth weighted
    round-robin, so equal idle servers alternate instead of the first one
    in config order taking every short-lived connection.
    """

    def __init__(self) -> None:
        self._tieBreaker = SmoothWeightedRoundRobin()

    def pick(self, servers, context):
        tied: list = []
        for server in servers:
            if not usable(server, context):
                continue
            if not tied or lessLoaded(server, tied[0]):
                tied = [server]
            elif not lessLoaded(tied[0], server):
                tied.append(server)
        if len(tied) <= 1:
            return tied[0] if tied else None
        return self._tieBreaker.pick(tied, context)
