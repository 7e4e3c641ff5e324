"""
Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
Software Network Load Balancer", NSDI 2016, section 3.4).

A lookup table of M slots (M prime) is filled by letting the servers take
turns: each server claims the next still-empty slot of its own permutation
of the slots. A key goes to C{table[hash(key) mod M]}. Every server ends up
with almost exactly its share of slots, and when a server leaves, the
other servers keep nearly all their slots, so only about 1/N of the keys
move.

Each server's permutation depends only on its name, and the turn order
only on the sorted names and the weights, so separate lbproxy nodes
configured with the same server names and weights build identical tables
and send a client to the same server without sharing any state.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from zope.interface import implementer

from lbproxy.interfaces import IBackendSelector
from lbproxy.selectors.base import stableHash, usable
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin

DEFAULT_TABLE_SIZE = 65537


def permutation(name: str, size: int) -> tuple[int, int]:
    """
    C{(offset, skip)} of a server's permutation of a table of C{size}
    slots: its preferred slots are C{(offset + j * skip) mod size} for
    j = 0, 1, ... Both come from BLAKE2b over the server's name (the
    paper's h1 and h2); as C{size} is prime and 1 <= skip < size, the
    sequence visits every slot once.
    """
    digest = hashlib.blake2b(
        name.encode("utf-8"), digest_size=16, person=b"lbproxy-maglev"
    ).digest()
    offset = int.from_bytes(digest[:8], "big") % size
    skip = int.from_bytes(digest[8:], "big") % (size - 1) + 1
    return offset, skip


def populate(names: Sequence[str], weights: Sequence[int], size: int) -> list[int]:
    """
    Fill a Maglev table of C{size} slots for servers C{names}; returns, for
    every slot, the index of its server in C{names}.

    Weights: the servers take turns in rounds, in the order of C{names};
    in each round a server claims C{weight} slots (after dividing all
    weights by their greatest common divisor), so its share of the table
    is C{weight / sum(weights)} to within one round. With equal weights
    this is exactly the paper's algorithm.

    @param weights: positive integers, one per name.
    """
    if not names:
        return []
    divisor = math.gcd(*weights)
    cursor = []
    turns = []
    for index, (name, weight) in enumerate(zip(names, weights)):
        offset, skip = permutation(name, size)
        cursor.append(offset)
        turns.append((index, skip, weight // divisor))
    owner = [0] * size
    taken = bytearray(size)
    left = size
    # The hot loop: a server's next preferred slot is found by stepping
    # through its permutation (adding skip modulo size) past taken slots.
    # A bytearray test and one addition per probe keep a 65537-slot table
    # for ten servers at a few tens of milliseconds.
    while True:
        for index, skip, weight in turns:
            slot = cursor[index]
            for _ in range(weight):
                while taken[slot]:
                    slot += skip
                    if slot >= size:
                        slot -= size
                taken[slot] = 1
                owner[slot] = index
                left -= 1
                if not left:
                    return owner
            cursor[index] = slot


@implementer(IBackendSelector)
class Maglev:
    """
    Maglev consistent hashing of C{context.key(key)}.

    The table is built on the first pick and rebuilt only when the
    eligible servers (their names and weights) change: the pool passes the
    same tuple until a server changes state, and a new tuple with the same
    names and weights reuses the table. Building costs tens of milliseconds
    for the default size; much larger tables take proportionally longer.

    If the key's server is full or was already tried for the flow, the
    following table slots are probed until one names a usable server, so
    every node makes the same second choice. Flows without a value for the
    key are placed by round-robin.

    @param key: a key specification (L{lbproxy.modes.allSelectionKeys}).
    @param table_size: the prime number of table slots, M. It should be
        well above 100 times the number of servers for an even spread (and
        must exceed the sum of the weights for every server to own slots).
    """

    def __init__(self, key: str = "src", table_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.key = key
        self.tableSize = table_size
        self._fallback = SmoothWeightedRoundRobin()
        self._servers: tuple = ()
        self._signature: tuple = ()
        self._members: list = []
        self._owned: list[int] = []
        self._owners: list = []
        self._table: list[int] = []

    def __repr__(self) -> str:
        return f"<Maglev key={self.key!r} table_size={self.tableSize}>"

    def table(self, servers) -> list:
        """
        The lookup table for C{servers}, as server objects per slot.
        """
        self._refresh(servers)
        members = self._members
        return [members[index] for index in self._table]

    def _refresh(self, servers) -> None:
        if servers is self._servers:
            return
        members = sorted((s for s in servers if s.weight > 0), key=lambda s: s.name)
        signature = tuple((s.name, s.weight) for s in members)
        if signature != self._signature:
            self._table = populate(
                [name for name, _ in signature],
                [weight for _, weight in signature],
                self.tableSize,
            )
            # With more turns per round than slots, some servers own none.
            self._owned = sorted(set(self._table))
            self._signature = signature
        self._members = members
        self._owners = [members[index] for index in self._owned]
        self._servers = servers

    def lookup(self, data: bytes, servers):
        """
        The server C{data} maps to among C{servers}, whether or not it can
        take a flow now; None when no server has a positive weight.
        """
        self._refresh(servers)
        if not self._table:
            return None
        return self._members[self._table[stableHash(data) % self.tableSize]]

    def home(self, servers, context):
        """
        The server the flow's key maps to among C{servers}, whether or not
        it may take a flow now (full, tried, down...); None when the flow
        has no value for the key or no server has a weight. With all of
        C{servers} eligible, L{pick} chooses it first.
        """
        data = context.key(self.key)
        if data is None:
            return None
        return self.lookup(data, servers)

    def pick(self, servers, context):
        data = context.key(self.key)
        if data is None:
            return self._fallback.pick(servers, context)
        self._refresh(servers)
        if not any(usable(s, context) for s in self._owners):
            # Only servers that own no slot (a table smaller than the
            # weights' sum) or none at all can take the flow.
            return self._fallback.pick(servers, context)
        members = self._members
        table = self._table
        size = self.tableSize
        slot = stableHash(data) % size
        for _ in range(size):
            server = members[table[slot]]
            if usable(server, context):
                return server
            slot += 1
            if slot == size:
                slot = 0
        return None
