"""
Hashing selector: the same key (by default the client address) goes to
the same server for as long as the set of eligible servers stays the same.

This is plain modulo hashing: when a server goes down or comes back, most
keys move. The C{maglev} selector moves only the keys it must.
"""

from __future__ import annotations

import bisect
import math

from zope.interface import implementer

from lbproxy.interfaces import IBackendSelector
from lbproxy.selectors.base import stableHash, usable
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin

METHODS = ("hash", "xor")


def xorFold(value: int, bits: int = 32) -> int:
    """
    Fold a non-negative integer to C{bits} bits by XOR-ing its C{bits}-wide
    words together (an IPv6 address becomes the XOR of its four 32-bit
    words; an IPv4 address stays as it is).
    """
    mask = (1 << bits) - 1
    folded = 0
    while value:
        folded ^= value & mask
        value >>= bits
    return folded


def xorFiveTuple(fiveTuple: tuple[int, int, int, int, int]) -> int:
    """
    The classic tutorial hash of a flow: source address XOR destination
    address XOR source port XOR destination port XOR IP protocol number,
    folded to 32 bits.
    """
    src, dst, srcPort, dstPort, protocol = fiveTuple
    return xorFold(src ^ dst ^ srcPort ^ dstPort ^ protocol)


@implementer(IBackendSelector)
class KeyHash:
    """
    Map C{context.key(key)} to a server.

    Each server owns C{weight} consecutive slots (weights divided by their
    greatest common divisor, so equal weights give one slot per server);
    the key's hash modulo the number of slots names the server. If that
    server is full or already tried for the flow, the next usable server
    in config order takes it, so every node decides the same.

    @param key: a key specification (L{lbproxy.modes.allSelectionKeys}).
    @param method: C{"hash"}: a stable 64-bit hash of the key's bytes
        (BLAKE2b); C{"xor"}: the XOR hash of the five-tuple when C{key} is
        C{"5tuple"} (L{xorFiveTuple}, so with equal weights the server is
        C{servers[xor % len(servers)]}), the key's bytes XOR-folded to 32
        bits for any other key. XOR is cheap and transparent but spreads
        poorly when the inputs differ in few bits.

    Flows without a value for the key (C{context.key()} returns None) are
    placed by round-robin.
    """

    def __init__(self, key: str = "src", method: str = "hash") -> None:
        if method not in METHODS:
            raise ValueError(f"expected one of {METHODS}, got {method!r}")
        self.key = key
        self.method = method
        self._fallback = SmoothWeightedRoundRobin()
        self._servers: tuple = ()
        self._bounds: list[int] = []

    def __repr__(self) -> str:
        return f"<KeyHash key={self.key!r} method={self.method!r}>"

    def _slots(self, servers) -> list[int]:
        """
        Cumulative slot bounds of C{servers}, cached on the tuple (the pool
        passes the same tuple until a server changes state).
        """
        if servers is not self._servers:
            divisor = math.gcd(*(s.weight for s in servers)) or 1
            bounds = []
            total = 0
            for server in servers:
                total += max(server.weight, 0) // divisor
                bounds.append(total)
            self._servers = servers
            self._bounds = bounds
        return self._bounds

    def hashOf(self, context) -> int | None:
        """
        The integer this selector reduces modulo the slot count, or None
        when the flow has no value for the key.
        """
        if self.method == "xor" and self.key == "5tuple":
            fiveTuple = getattr(context, "fiveTuple", None)
            if fiveTuple is not None:
                return xorFiveTuple(fiveTuple())
        data = context.key(self.key)
        if data is None:
            return None
        if self.method == "xor":
            return xorFold(int.from_bytes(data, "big"))
        return stableHash(data)

    def home(self, servers, context):
        """
        The server the flow's key maps to among C{servers}, whether or not
        it may take a flow now (full, tried, down...); None when the flow
        has no value for the key or no server has a weight. With all of
        C{servers} eligible, L{pick} chooses it first.
        """
        value = self.hashOf(context)
        if value is None or not servers:
            return None
        bounds = self._slots(servers)
        if not bounds[-1]:
            return None
        return servers[bisect.bisect_right(bounds, value % bounds[-1])]

    def pick(self, servers, context):
        if not servers:
            return None
        value = self.hashOf(context)
        if value is None:
            return self._fallback.pick(servers, context)
        bounds = self._slots(servers)
        if not bounds[-1]:
            return None
        start = bisect.bisect_right(bounds, value % bounds[-1])
        count = len(servers)
        for step in range(count):
            server = servers[(start + step) % count]
            if server.weight > 0 and usable(server, context):
                return server
        return None
