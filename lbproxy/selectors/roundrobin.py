"""
Smooth weighted round-robin (the interleaving nginx uses).

Each pick adds every server's weight to its running score, takes the
highest score and subtracts the total weight from it. Weights 5, 1, 1 give
a, a, b, a, c, a, a rather than a burst of five a's.
"""

from __future__ import annotations

from zope.interface import implementer

from lbproxy.interfaces import IBackendSelector


@implementer(IBackendSelector)
class SmoothWeightedRoundRobin:
    """
    Weighted round-robin that spreads a heavy server's turns evenly.

    Running scores are kept per server object; a server skipped for a pick
    (full, or already tried for the flow) keeps its score and catches up
    when it can take flows again. Also the fallback of the hashing
    selectors when a flow has no value for their key.
    """

    def __init__(self) -> None:
        self._scores: dict = {}

    def pick(self, servers, context):
        best = None
        total = 0
        scores = self._scores
        excluded = context.excluded
        for server in servers:
            # usable(server, context), written out: this runs per request.
            if server.full or server in excluded:
                continue
            score = scores.get(server, 0) + server.weight
            scores[server] = score
            total += server.weight
            if best is None or score > scores[best]:
                best = server
        if best is not None:
            scores[best] -= total
        return best
