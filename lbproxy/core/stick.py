"""
Stick tables: which server a client was sent to, so that its next flows
go there too (HAProxy's stick tables; README.rst, "Stick tables").

A pool with C{[pools.NAME.stick]} owns one L{StickTable} (C{pool.stick}).
Before its selector, the pool looks the flow's key up (L{StickTable.lookup}):
a pinned server that can take the flow serves it: up, or draining (pinned
clients still reach a draining server, as with HAProxy), never down or in
maintenance, nor one already tried for this flow or at its maxconn.
Otherwise the selector picks, and once connected the connector records the
server the flow reached after its retries (L{StickTable.record}): every
front (TCP, HTTP, mail) alike. An HTTP cookie pin is read before the pool
is asked, so it wins.

Bounded: an entry is the key's 16-byte keyed BLAKE2b digest (the table
never holds a client's address, header or cookie value, whatever its
length), the name of the server and the time of its last use. An
OrderedDict keeps the entries least recently used first: a lookup, a use
and an eviction cost O(1) and no request scans the table. Expired entries
go when a lookup meets them, a few from the old end on each use, up to
L{SWEEP_LIMIT} a second per table by L{StickSweeper}, and when the size
cap pushes them out.

Replication: C{changed(table, key)} is called when an entry is new, names
another server, or was last passed on long enough ago (L{StickTable.refresh})
that the peer's copy must hear of its use; L{lbproxy.ha.replication} sends
it to the peer, which L{StickTable.apply}s it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.logger import Logger

from lbproxy.config.stick import StickConfig
from lbproxy.core.pool import Server
from lbproxy.interfaces import ISelectionContext

#: Bytes of an entry's key (a BLAKE2b digest).
KEY_SIZE = 16
#: An entry used again is passed on to the peer once this share of its
#: expiry has gone by since it last was, at most every L{MAX_REFRESH}
#: seconds: a hot entry costs a few updates a minute, and the peer's copy
#: never looks older than that.
REFRESH_SHARE = 0.25
MAX_REFRESH = 10.0
#: The sweeper's period, and the most entries it drops per table each time.
SWEEP_INTERVAL = 1.0
SWEEP_LIMIT = 5000
#: Expired entries dropped from the old end on each use.
_SWEEP_ON_USE = 2


def keySalt(config) -> bytes:
    """
    The key of the tables' digests for C{config} (a L{lbproxy.config.Config}):
    derived from the HA key when C{[ha]} has one loaded, so that both
    nodes of a pair digest a client alike and their entries replicate;
    otherwise random for this process.
    """
    ha = getattr(config, "ha", None)
    if ha is not None and ha.key:
        return hmac.new(ha.key, b"lbproxy stick table keys", hashlib.sha256).digest()
    return os.urandom(32)


class StickEntry:
    """
    One client's pin: its server's name, when it was last used, and the
    last use passed on to the peer.
    """

    __slots__ = ("server", "used", "sent")

    def __init__(self, server: str, used: float) -> None:
        self.server = server
        self.used = used
        self.sent = used


class StickTable:
    """
    The stick table of one pool.

    @ivar entries: digest -> L{StickEntry}, least recently used first.
    @ivar changed: called with the table and a digest whose entry the
        peer must hear of (set by the replication), or None.
    @ivar hits: lookups that found a pin the flow could follow.
    @ivar misses: lookups that found no entry (or an expired one).
    @ivar redispatched: lookups whose pinned server could not take the
        flow (down, in maintenance, full, already tried): the selector
        picked, and the entry follows the new server.
    @ivar expired: entries dropped for their age.
    @ivar evictions: entries pushed out by the size cap.
    @ivar learned: entries taken from the peer.
    """

    log = Logger()

    def __init__(self, config: StickConfig, pool, salt: bytes) -> None:
        """
        @param pool: the L{lbproxy.core.pool.Pool} owning the table: its
            servers and its clock.
        @param salt: the key of the digests (L{keySalt}).
        """
        self.config = config
        self.pool = pool
        self.spec = config.on
        self.expire = config.expire
        self.size = config.size
        self.replicate = bool(config.replicate)
        self.refresh = min(config.expire * REFRESH_SHARE, MAX_REFRESH)
        self._salt = salt
        self.entries: OrderedDict[bytes, StickEntry] = OrderedDict()
        self.changed: Callable[[StickTable, bytes], None] | None = None
        self.hits = 0
        self.misses = 0
        self.redispatched = 0
        self.expired = 0
        self.evictions = 0
        self.learned = 0
        self._servers: tuple = ()
        self._byName: dict[str, Server] = {}

    def __repr__(self) -> str:
        return f"<StickTable {self.pool.name} on {self.spec} {len(self.entries)}/{self.size}>"

    def _now(self) -> float:
        return self.pool.clock.seconds()

    def keyOf(self, context: ISelectionContext) -> bytes | None:
        """
        The digest C{context}'s flow is remembered by; None when the flow
        has no value (or an empty one) for the table's key.
        """
        value = context.key(self.spec)
        if not value:
            return None
        return hashlib.blake2b(value, digest_size=KEY_SIZE, key=self._salt).digest()

    def server(self, name: str) -> Server | None:
        """
        The pool's server called C{name}, or None.
        """
        servers = self.pool.servers
        if servers is not self._servers:
            self._byName = {server.name: server for server in servers}
            self._servers = servers
        return self._byName.get(name)

    def lookup(self, context: ISelectionContext) -> Server | None:
        """
        The server C{context}'s flow is pinned to, when it can take the
        flow now; None to let the selector pick.
        """
        key = self.keyOf(context)
        if key is None:
            return None
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if self._now() - entry.used > self.expire:
            del self.entries[key]
            self.expired += 1
            self.misses += 1
            return None
        server = self.server(entry.server)
        if server is None or not server.pinnable or server in context.excluded:
            self.redispatched += 1
            return None
        self.hits += 1
        return server

    def record(self, context: ISelectionContext, server: Server) -> None:
        """
        C{context}'s flow reached C{server}: pin its key there, as the most
        recently used entry.
        """
        key = self.keyOf(context)
        if key is None:
            return
        now = self._now()
        entries = self.entries
        entry = entries.get(key)
        name = server.name
        if entry is None:
            entries[key] = StickEntry(name, now)
            if len(entries) > self.size:
                entries.popitem(last=False)
                self.evictions += 1
        else:
            entries.move_to_end(key)
            entry.used = now
            if entry.server == name and now - entry.sent < self.refresh:
                self.sweep(_SWEEP_ON_USE)
                return
            entry.server = name
            entry.sent = now
        if self.changed is not None:
            self.changed(self, key)
        self.sweep(_SWEEP_ON_USE)

    def apply(self, key: bytes, name: str, age: float) -> bool:
        """
        Take an entry from the peer: C{key} last used C{age} seconds ago
        on server C{name}. Kept unless expired or older than ours.

        @return: False when this pool has no server C{name} (the entry is
            dropped).
        """
        server = self.server(name)
        if server is None:
            return False
        if age > self.expire:
            return True
        used = self._now() - age
        entries = self.entries
        entry = entries.get(key)
        if entry is None:
            entries[key] = StickEntry(server.name, used)
            if len(entries) > self.size:
                entries.popitem(last=False)
                self.evictions += 1
        elif entry.used > used:
            return True
        else:
            entries.move_to_end(key)
            entry.server = server.name
            entry.used = entry.sent = used
        self.learned += 1
        return True

    def current(self, key: bytes) -> tuple[str, float] | None:
        """
        The server and age (seconds since last use) of the entry of
        C{key}, or None when there is none or it expired.
        """
        entry = self.entries.get(key)
        if entry is None:
            return None
        age = self._now() - entry.used
        if age > self.expire:
            return None
        return entry.server, age

    def sweep(self, limit: int = SWEEP_LIMIT) -> int:
        """
        Drop up to C{limit} expired entries from the old end; the number
        dropped.
        """
        entries = self.entries
        oldest = self._now() - self.expire
        dropped = 0
        while dropped < limit and entries:
            entry = entries[next(iter(entries))]
            if entry.used >= oldest:
                break
            entries.popitem(last=False)
            dropped += 1
        self.expired += dropped
        return dropped

    def snapshot(self) -> dict:
        """
        The table's settings and counters as plain data.
        """
        return {
            "on": self.spec,
            "expire": self.expire,
            "size": self.size,
            "replicate": self.replicate,
            "entries": len(self.entries),
            "hits": self.hits,
            "misses": self.misses,
            "redispatched": self.redispatched,
            "expired": self.expired,
            "evictions": self.evictions,
            "learned": self.learned,
        }


class StickSweeper(TimerService):
    """
    Drops the expired entries of every pool's stick table each
    L{SWEEP_INTERVAL}, L{SWEEP_LIMIT} per table at most (what is left
    goes on the next turns, or when met).
    """

    log = Logger()

    def __init__(self, balancer, reactor) -> None:
        """
        @param balancer: the L{lbproxy.core.model.Balancer}; its pools are
            read on each turn.
        """
        super().__init__(SWEEP_INTERVAL, self.sweep)
        self.clock = reactor
        self.balancer = balancer

    def sweep(self) -> None:
        for pool in self.balancer.pools.values():
            table = pool.stick
            if table is not None:
                try:
                    table.sweep()
                except Exception:
                    self.log.failure("sweeping the stick table of pool {pool} failed", pool=pool.name)
