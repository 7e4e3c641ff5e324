"""
Stick-table replication between the nodes of a pair, over the channel
(L{lbproxy.ha.channel}): affinity survives a failover.

Each node sends the entries its own traffic makes (L{Feed}) on the channel
connection it opened to a peer, and takes the peer's (L{Intake}) on the
one the peer opened: two one-way streams, the same code on both nodes.
Whichever node is master, its entries reach the other; a node coming
back after a failover is sent what the new master holds.

After the channel's handshake, on each connection::

    sender (connected)                      receiver (accepted)
    FEED <incarnation>                 ->
                                       <-   RESYNC | RESUME <seq>
    FULL <entries>                     ->                    (a full resync begins)
    U <seq> <pool> <server> <age-ms> <key> ->                (one entry)
    DONE                               ->                    (the full resync is complete)
                                       <-   ACK <seq>

The incarnation (16 random bytes in hex) names the sender's process; its
updates are numbered from 1, one by one, across its connections. The
receiver asks for a full resync (C{RESYNC}) unless it holds a complete copy
of that incarnation's stream, in which case it says up to which update
(C{RESUME}): a connection that broke and came back then costs only the
updates it missed. It acknowledges what it applied (C{ACK}, at most once
per reactor turn).

The sender:

  - coalesces: an entry to send is a key in an ordered set, its server
    and age read when it is sent, so an entry changed a thousand times
    while waiting goes once; and a table passes on an entry's reuse only
    every few seconds (L{lbproxy.core.stick.StickTable.refresh});
  - keeps at most L{WINDOW} updates unacknowledged: that bounds what waits
    in the connection's buffer, and a full resync streams the tables
    window by window as the acknowledgements come back, never as one
    write;
  - keeps the unacknowledged updates to send again after a reconnection
    (C{RESUME}), and at most L{MAX_PENDING} updates waiting while the peer
    is away; beyond that it drops them and the peer gets a full resync.

The receiver applies an entry only if its pool has a replicated stick
table here and the server exists in it (L{StickTable.apply}); others are
counted and logged once a minute. The grammar is strict: a line that does
not match it, a message out of order, an update number that does not
grow, an acknowledgement of an update never sent closes the connection
(the channel logs why). Lines are at most the channel's C{MAX_LINE}; a
peer that does not read what we send stops being read
(L{lbproxy.ha.channel}), so it cannot make us queue acknowledgements
without bound.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict, deque

from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.core.limits import LimitLog, plural
from lbproxy.core.stick import StickTable
from lbproxy.ha.advert import Address
from lbproxy.ha.interfaces import IChannelMessages

#: Most updates sent and not yet acknowledged, per peer.
WINDOW = 1024
#: Most updates waiting to be sent to a peer; beyond, it gets a full resync.
MAX_PENDING = 65536
#: Seconds new updates wait to be sent together.
FLUSH_DELAY = 0.02

_NUMBER = rb"(0|[1-9][0-9]{0,17})"
_NAME = rb"([A-Za-z0-9_.-]{1,64})"
_FEED = re.compile(rb"FEED ([0-9a-f]{32})")
_RESUME = re.compile(rb"RESUME " + _NUMBER)
_ACK = re.compile(rb"ACK " + _NUMBER)
_FULL = re.compile(rb"FULL " + _NUMBER)
_UPDATE = re.compile(rb"U " + _NUMBER + rb" " + _NAME + rb" " + _NAME + rb" ([0-9]{1,12}) ([0-9a-f]{32})")

# A feed's states.
IDLE = "idle"
ASKING = "asking"
STREAMING = "streaming"


def _verb(line: bytes) -> str:
    return repr(line[:16])


def _entries(count: int) -> str:
    return f"{count} entry" if count == 1 else f"{count} entries"


class Feed:
    """
    The updates this node sends one peer.

    @ivar state: C{"idle"} (no connection), C{"asking"} (C{FEED} sent,
        waiting for the peer's C{RESYNC} or C{RESUME}), C{"streaming"}.
    @ivar pending: (pool, key) waiting to be sent, oldest first.
    @ivar inflight: (update number, pool, key) sent and not acknowledged.
    """

    log = Logger()

    def __init__(self, replication: Replication, peer: Address) -> None:
        self.replication = replication
        self.peer = peer
        self.protocol = None
        self.state = IDLE
        self.seq = 0
        self.acked = 0
        self.pending: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self.inflight: deque[tuple[int, str, bytes]] = deque()
        #: A full resync being sent: the key lists left, by pool.
        self._walk: deque[tuple[str, list[bytes]]] = deque()
        self._walkIndex = 0
        self._full: dict | None = None
        #: Updates were dropped (too many pending): a full resync is due.
        self.needFull = False
        self.sent = 0
        self.acknowledged = 0
        self.dropped = 0
        self.resyncs = 0
        self.resumes = 0
        self.lastResync: dict | None = None
        self._flushCall = None

    def snapshot(self) -> dict:
        return {
            "connected": self.protocol is not None,
            "state": self.state,
            "resyncing": self._full is not None,
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "inflight": len(self.inflight),
            "pending": len(self.pending),
            "dropped": self.dropped,
            "resyncs": self.resyncs,
            "resumes": self.resumes,
            "lastResync": self.lastResync,
        }

    # The tables' changes

    def add(self, pool: str, key: bytes) -> None:
        """
        The entry of C{key} in C{pool}'s table is to be sent.
        """
        if self.needFull:
            return
        pending = self.pending
        item = (pool, key)
        if item in pending:
            return
        pending[item] = None
        if len(pending) > MAX_PENDING:
            self._overflow()
            return
        if self.state == STREAMING and self._flushCall is None:
            self._flushCall = self.replication.reactor.callLater(FLUSH_DELAY, self.flush)

    def _overflow(self) -> None:
        self.dropped += len(self.pending)
        self.pending.clear()
        self.log.warn(
            "ha: stick tables: more than {limit} updates waiting for {peer}; "
            "it gets a full resync {when}",
            limit=MAX_PENDING,
            peer=str(self.peer),
            when="now" if self.state == STREAMING else "when it connects",
        )
        if self.state == STREAMING:
            self._startFull()
            self.flush()
        else:
            self.needFull = True

    # The connection

    def attach(self, protocol) -> None:
        """
        Our connection to the peer is up: announce the stream.
        """
        if self.protocol is not None:
            self.detach()
        self.protocol = protocol
        self.state = ASKING
        protocol.sendLine(b"FEED " + self.replication.incarnation.hex().encode("ascii"))

    def detach(self) -> None:
        """
        Our connection to the peer is gone; the unacknowledged updates are
        kept for a C{RESUME}, an unfinished full resync is started again
        on the next connection.
        """
        self.protocol = None
        self.state = IDLE
        self.cancelFlush()
        if self._full is not None:
            self._full = None
            self._walk.clear()
            self.needFull = True

    def received(self, line: bytes) -> str | None:
        """
        A line from the peer on our connection: its sync request or an
        acknowledgement; why it is not acceptable, or None.
        """
        if line == b"RESYNC":
            return self._syncRequested(None)
        match = _RESUME.fullmatch(line)
        if match:
            return self._syncRequested(int(match.group(1)))
        match = _ACK.fullmatch(line)
        if match:
            return self._acknowledged(int(match.group(1)))
        return f"an unexpected line {_verb(line)} on our stick-table feed"

    def _syncRequested(self, resumeAfter: int | None) -> str | None:
        if self.state != ASKING:
            return "a second sync request on one connection"
        self.state = STREAMING
        if resumeAfter is None or self.needFull or not self.acked <= resumeAfter <= self.seq:
            self._startFull()
        else:
            again = [(pool, key) for seq, pool, key in self.inflight if seq > resumeAfter]
            self.inflight.clear()
            self.acked = resumeAfter
            waiting = self.pending
            self.pending = OrderedDict.fromkeys(again)
            self.pending.update(waiting)
            self.resumes += 1
            self.log.info(
                "ha: stick tables: updates to {peer} resume after update {seq} ({again} sent again)",
                peer=str(self.peer),
                seq=resumeAfter,
                again=len(again),
            )
        self.flush()
        return None

    def _acknowledged(self, seq: int) -> str | None:
        if self.state != STREAMING or seq > self.seq:
            return f"an acknowledgement of update {seq}, never sent"
        inflight = self.inflight
        while inflight and inflight[0][0] <= seq:
            inflight.popleft()
            self.acknowledged += 1
        self.acked = max(self.acked, seq)
        self.flush()
        return None

    # Sending

    def _startFull(self) -> None:
        tables = self.replication.tables
        self.pending.clear()
        self.inflight.clear()
        self.needFull = False
        self._walk = deque((name, list(table.entries)) for name, table in tables.items())
        self._walkIndex = 0
        entries = sum(len(keys) for _, keys in self._walk)
        self._full = {"started": self.replication.reactor.seconds(), "entries": entries}
        self.resyncs += 1
        self.protocol.sendLine(b"FULL %d" % entries)
        self.log.info(
            "ha: stick tables: full resync to {peer}: {entries}",
            peer=str(self.peer),
            entries=_entries(entries),
        )

    def _next(self) -> tuple[str, bytes] | None:
        if self.pending:
            return self.pending.popitem(last=False)[0]
        walk = self._walk
        while walk:
            name, keys = walk[0]
            if self._walkIndex < len(keys):
                self._walkIndex += 1
                return name, keys[self._walkIndex - 1]
            walk.popleft()
            self._walkIndex = 0
        return None

    def cancelFlush(self) -> None:
        call, self._flushCall = self._flushCall, None
        if call is not None and call.active():
            call.cancel()

    def flush(self) -> None:
        """
        Send what is waiting, as far as the window allows; end a full
        resync whose entries have all been sent.
        """
        self.cancelFlush()
        if self.state != STREAMING:
            return
        tables = self.replication.tables
        inflight = self.inflight
        lines = []
        while len(inflight) < WINDOW:
            item = self._next()
            if item is None:
                break
            name, key = item
            table = tables.get(name)
            current = table.current(key) if table is not None else None
            if current is None:
                continue
            server, age = current
            self.seq += 1
            inflight.append((self.seq, name, key))
            lines.append(
                b"U %d %s %s %d %s\n"
                % (
                    self.seq,
                    name.encode("ascii"),
                    server.encode("ascii"),
                    max(0, int(age * 1000)),
                    key.hex().encode("ascii"),
                )
            )
        self.sent += len(lines)
        full = self._full
        if full is not None and not self._walk:
            self._full = None
            now = self.replication.reactor.seconds()
            self.lastResync = {"time": now, "entries": full["entries"], "seconds": round(now - full["started"], 3)}
            lines.append(b"DONE\n")
            self.log.info(
                "ha: stick tables: full resync to {peer} sent: {entries} in {seconds:.3f}s",
                peer=str(self.peer),
                entries=_entries(full["entries"]),
                seconds=now - full["started"],
            )
        if lines:
            self.protocol.transport.writeSequence(lines)


class Intake:
    """
    What this node holds of one peer's stream, and the counts of what it
    took.

    @ivar incarnation: the peer's stream this node holds, or None.
    @ivar seq: the last update of it applied.
    @ivar complete: a full resync of that stream was received whole.
    """

    def __init__(self) -> None:
        self.incarnation: bytes | None = None
        self.seq = 0
        self.complete = False
        self.connections = 0
        self.received = 0
        self.applied = 0
        self.rejected = 0
        self.resyncs = 0
        self.lastResync: dict | None = None
        self.full: dict | None = None

    def snapshot(self) -> dict:
        return {
            "connected": self.connections > 0,
            "inSync": self.complete,
            "received": self.received,
            "applied": self.applied,
            "rejected": self.rejected,
            "resyncs": self.resyncs,
            "lastResync": self.lastResync,
        }


class _Incoming:
    """
    One connection the peer opened to us: its stream's state.
    """

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.fed = False
        self.ackCall = None


@implementer(IChannelMessages)
class Replication:
    """
    The stick-table replication of this node with its peers.

    @param tables: the replicated stick tables by pool name (possibly
        none: the node still takes part, so a peer with tables is not
        refused).
    @param peers: the peers' addresses.
    """

    log = Logger()

    def __init__(self, tables: dict[str, StickTable], peers, reactor, incarnation: bytes | None = None) -> None:
        self.tables = tables
        self.reactor = reactor
        self.incarnation = incarnation if incarnation is not None else os.urandom(16)
        self.feeds = {peer: Feed(self, peer) for peer in peers}
        self.intakes = {peer: Intake() for peer in peers}
        self._incoming: dict = {}
        self._limitLog = LimitLog(reactor, period=60.0)
        for table in tables.values():
            table.changed = self.changed

    def changed(self, table: StickTable, key: bytes) -> None:
        """
        An entry of C{table} is new or changed: every peer is to hear of it.
        """
        name = table.pool.name
        for feed in self.feeds.values():
            feed.add(name, key)

    def stop(self) -> None:
        """
        Write the pending log summaries and cancel what is scheduled.
        """
        for feed in self.feeds.values():
            feed.cancelFlush()
        for incoming in self._incoming.values():
            if incoming.ackCall is not None and incoming.ackCall.active():
                incoming.ackCall.cancel()
        self._limitLog.flush()

    def snapshot(self) -> dict:
        """
        The replication's state as plain data: the replicated tables, and
        per peer what is sent and what is received.
        """
        return {
            "tables": sorted(self.tables),
            "peers": {
                str(peer): {"sending": self.feeds[peer].snapshot(), "receiving": self.intakes[peer].snapshot()}
                for peer in self.feeds
            },
        }

    # IChannelMessages

    def connectionUp(self, protocol) -> None:
        if protocol.connector:
            self.feeds[protocol.peer].attach(protocol)
        else:
            intake = self.intakes[protocol.peer]
            intake.connections += 1
            self._incoming[protocol] = _Incoming(intake)

    def connectionLost(self, protocol) -> None:
        if protocol.connector:
            feed = self.feeds.get(protocol.peer)
            if feed is not None and feed.protocol is protocol:
                feed.detach()
            return
        incoming = self._incoming.pop(protocol, None)
        if incoming is not None:
            incoming.intake.connections -= 1
            if incoming.ackCall is not None and incoming.ackCall.active():
                incoming.ackCall.cancel()

    def lineReceived(self, protocol, line: bytes) -> str | None:
        if protocol.connector:
            return self.feeds[protocol.peer].received(line)
        incoming = self._incoming.get(protocol)
        if incoming is None:
            return f"an unexpected line {_verb(line)}"
        intake = incoming.intake
        if line.startswith(b"U "):
            match = _UPDATE.fullmatch(line)
            if match is None or not incoming.fed:
                return f"a malformed or early update {_verb(line)}"
            return self._update(protocol, incoming, match)
        if not incoming.fed:
            match = _FEED.fullmatch(line)
            if match is None:
                return f"{_verb(line)} where FEED was expected"
            incoming.fed = True
            incarnation = bytes.fromhex(match.group(1).decode("ascii"))
            if intake.incarnation == incarnation and intake.complete:
                protocol.sendLine(b"RESUME %d" % intake.seq)
            else:
                intake.incarnation = incarnation
                intake.seq = 0
                intake.complete = False
                protocol.sendLine(b"RESYNC")
            return None
        match = _FULL.fullmatch(line)
        if match:
            intake.complete = False
            intake.full = {"started": self.reactor.seconds(), "entries": int(match.group(1)), "applied": intake.applied}
            return None
        if line == b"DONE":
            return self._done(protocol, intake)
        return f"an unexpected line {_verb(line)}"

    # Receiving

    def _update(self, protocol, incoming: _Incoming, match) -> str | None:
        intake = incoming.intake
        seq = int(match.group(1))
        if seq <= intake.seq:
            return f"update {seq} after update {intake.seq}"
        intake.seq = seq
        intake.received += 1
        pool = match.group(2).decode("ascii")
        server = match.group(3).decode("ascii")
        table = self.tables.get(pool)
        if table is None:
            self._reject(protocol.peer, "no replicated stick table for its pool here", pool)
        elif not table.apply(bytes.fromhex(match.group(5).decode("ascii")), server, int(match.group(4)) / 1000):
            self._reject(protocol.peer, "no such server in its pool here", f"{pool}/{server}")
        else:
            intake.applied += 1
        if incoming.ackCall is None:
            incoming.ackCall = self.reactor.callLater(0, self._acknowledge, protocol, incoming)
        return None

    def _acknowledge(self, protocol, incoming: _Incoming) -> None:
        incoming.ackCall = None
        protocol.sendLine(b"ACK %d" % incoming.intake.seq)

    def _done(self, protocol, intake: Intake) -> str | None:
        full = intake.full
        if full is None:
            return "DONE without FULL"
        intake.full = None
        intake.complete = True
        intake.resyncs += 1
        now = self.reactor.seconds()
        applied = intake.applied - full["applied"]
        intake.lastResync = {
            "time": now,
            "entries": full["entries"],
            "applied": applied,
            "seconds": round(now - full["started"], 3),
        }
        self.log.info(
            "ha: stick tables: full resync from {peer} received: {entries} in {seconds:.3f}s",
            peer=str(protocol.peer),
            entries=_entries(applied) + " applied",
            seconds=now - full["started"],
        )
        return None

    def _reject(self, peer: Address, why: str, what: str) -> None:
        self.intakes[peer].rejected += 1

        def emit(count: int) -> None:
            self.log.warn(
                "ha: stick tables: dropped {count} from {peer}: {why} (last: {what})",
                count=plural(count, "update"),
                peer=str(peer),
                why=why,
                what=what,
            )

        self._limitLog.note((peer, why), emit)
