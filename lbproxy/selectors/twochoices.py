"""
Random with two choices ("power of two choices").

Two random servers are drawn and the less loaded one takes the flow. This
keeps the load almost as even as least-connections while every lbproxy
node (or a node with stale counters) picks independently, without all of
them rushing to the same least-loaded server.
"""

from __future__ import annotations

import random

from zope.interface import implementer

from lbproxy.interfaces import IBackendSelector
from lbproxy.selectors.base import lessLoaded, usable


@implementer(IBackendSelector)
class RandomTwoChoices:
    """
    Draw two distinct usable servers, each with probability proportional to
    its weight, and pick the one with fewer active connections per unit of
    weight (the first drawn on a tie).

    @param rng: the source of randomness; tests pass a seeded one.
    """

    def __init__(self, rng: random.Random) -> None:
        self._random = rng

    def pick(self, servers, context):
        candidates = [s for s in servers if s.weight > 0 and usable(s, context)]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        choices = self._random.choices
        first = choices(candidates, [s.weight for s in candidates])[0]
        rest = [s for s in candidates if s is not first]
        second = choices(rest, [s.weight for s in rest])[0]
        return second if lessLoaded(second, first) else first
