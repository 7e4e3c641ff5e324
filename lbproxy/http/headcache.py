"""
What the strict path made of heads accepted before, kept by their bytes.

Clients send the same head request after request (a load tester's, a
health checker's, an API client's), or the same field lines with a new
target (a browser's User-Agent, Accept, Cookie...), and a backend the same
response head for every response of the same second (its Date changes once
a second). A parser looks a complete header block up here before parsing
it:

  - a head whose bytes were accepted before gives the record the strict
    path made of them then (L{lbproxy.http.heads}), without llhttp or the
    checks running again;
  - a head whose field lines were all accepted before, in other heads, is
    built from them: llhttp checks its start line alone, the builder
    checks and decides everything else, as for any head (each field line
    is accepted or refused by llhttp on its own; what depends on several,
    such as two Content-Length fields, the builder refuses too);
  - anything else takes the strict path.

Only what the strict path accepted is kept, so the cache decides nothing:
it can only save work.

An attacker can send a new head (and new field lines) with every request.
Each one costs the strict path, as without the cache, and must cost no
memory beyond the bounds, nor push out what comes back. So a head (or a
field line) is kept only once it was accepted twice: the first time, its
bytes go on probation, a first-in first-out list of the last ones seen
once; the second time (while still there) it is kept, and the oldest kept
ones make room for it. Heads seen once (an attacker's, or a client's
one-off) only ever displace each other from probation; to displace a kept
head, an attacker must send a head twice within the probation window, two
strict parses per displaced entry, and a displaced head costs two strict
parses to come back. Heads and field lines are kept within their own
bounds (entries, and estimated bytes of memory: see L{recordWeight}), each
probation within a quarter of those bytes; a head longer than
C{maxHeadBytes} (a line longer than C{maxLineBytes}) is never kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

#: About the memory a key on probation costs besides its bytes (the bytes
#: object and its place in the table).
_OVERHEAD = 160


def recordWeight(head: bytes, record) -> int:
    """
    About the memory the record of C{head} and its place in the cache
    take: the head's bytes twice (the key, and the names and values of the
    record), about 170 bytes per field (the objects holding each), and the
    record's own (measured on CPython 3.11).
    """
    return 2 * len(head) + 170 * record.fieldCount + 400


def entryWeight(line: bytes, entry) -> int:
    """
    About the memory a field line and its C{(lowercased name, name,
    value)} entry take.
    """
    return 2 * len(line) + 300


class _Kept:
    """
    Values by their bytes, kept once added twice (see the module's
    docstring), within a count and an estimated weight.

    @ivar values: the values kept, oldest first.
    """

    __slots__ = (
        "values",
        "weight",
        "maxEntries",
        "maxBytes",
        "maxKey",
        "weigh",
        "seenOnce",
        "seenOnceBytes",
        "maxSeenOnce",
        "maxSeenOnceBytes",
    )

    def __init__(
        self,
        maxEntries: int,
        maxBytes: int,
        maxKey: int,
        probation: int,
        weigh: Callable[[bytes, object], int],
    ) -> None:
        self.values: OrderedDict = OrderedDict()
        self.weight = 0
        self.maxEntries = maxEntries
        self.maxBytes = maxBytes
        self.maxKey = maxKey
        self.weigh = weigh
        self.seenOnce: OrderedDict = OrderedDict()
        self.seenOnceBytes = 0
        self.maxSeenOnce = probation
        self.maxSeenOnceBytes = maxBytes // 4

    def add(self, key: bytes, value) -> None:
        """
        C{key} was accepted again: keep C{value} if it was accepted once
        before, else remember it was seen.
        """
        if len(key) > self.maxKey or key in self.values:
            return
        seenOnce = self.seenOnce
        size = seenOnce.pop(key, None)
        if size is None:
            size = len(key) + _OVERHEAD
            seenOnce[key] = size
            self.seenOnceBytes += size
            while len(seenOnce) > self.maxSeenOnce or self.seenOnceBytes > self.maxSeenOnceBytes:
                self.seenOnceBytes -= seenOnce.popitem(last=False)[1]
            return
        self.seenOnceBytes -= size
        weigh = self.weigh
        size = weigh(key, value)
        if size > self.maxBytes:
            return
        values = self.values
        values[key] = value
        self.weight += size
        while len(values) > self.maxEntries or self.weight > self.maxBytes:
            old, oldValue = values.popitem(last=False)
            self.weight -= weigh(old, oldValue)

    def clear(self) -> None:
        self.values.clear()
        self.seenOnce.clear()
        self.weight = 0
        self.seenOnceBytes = 0


class HeadCache:
    """
    Records of accepted heads by their bytes, and the entries of their
    field lines, for the parsers of one listener (requests) or of one
    pool's backend connections (responses).

    @ivar find: the record of a head, or L{None}: a plain dictionary
        lookup, as the parsers do one per message.
    @ivar findLine: the C{(lowercased name, name, value)} entry of a field
        line (without its CRLF), or L{None}.
    """

    def __init__(
        self,
        maxEntries: int = 512,
        maxBytes: int = 1 << 20,
        maxHeadBytes: int = 8192,
        probation: int = 512,
        maxLines: int = 2048,
        maxLineBytes: int = 1024,
    ) -> None:
        """
        @param maxEntries: most head records kept.
        @param maxBytes: most memory the head records may hold, as
            estimated by L{recordWeight}; the field lines get a quarter of
            it, and each probation a quarter of its table's (so a cache
            holds about 1.6 times C{maxBytes} at most: 1.6 MiB by
            default).
        @param maxHeadBytes: longest head (start line to final CRLF CRLF)
            kept.
        @param probation: most heads (and field lines) remembered as seen
            once.
        @param maxLines: most field lines kept.
        @param maxLineBytes: longest field line kept.
        """
        self._heads = _Kept(maxEntries, maxBytes, maxHeadBytes, probation, recordWeight)
        self._lines = _Kept(maxLines, maxBytes // 4, maxLineBytes, probation, entryWeight)
        self.find = self._heads.values.get
        self.findLine = self._lines.values.get

    def __len__(self) -> int:
        return len(self._heads.values)

    def __contains__(self, head: bytes) -> bool:
        return head in self._heads.values

    def __repr__(self) -> str:
        return (
            f"<HeadCache {len(self._heads.values)} heads, {len(self._lines.values)} "
            f"field lines, {self.weight + self.lineWeight} bytes>"
        )

    @property
    def weight(self) -> int:
        """
        The estimated memory the head records hold.
        """
        return self._heads.weight

    @property
    def lineWeight(self) -> int:
        """
        The estimated memory the field lines kept hold.
        """
        return self._lines.weight

    @property
    def lineCount(self) -> int:
        """
        How many field lines are kept.
        """
        return len(self._lines.values)

    @property
    def probationBytes(self) -> int:
        """
        The estimated memory the heads and field lines on probation hold.
        """
        return self._heads.seenOnceBytes + self._lines.seenOnceBytes

    @property
    def onProbation(self) -> int:
        """
        How many heads are remembered as seen once.
        """
        return len(self._heads.seenOnce)

    def add(self, head: bytes, record) -> None:
        """
        The strict path accepted the head C{head} and made C{record} of it:
        keep it if it was accepted once before, else remember it was seen.
        """
        self._heads.add(head, record)

    def addLines(self, head: bytes, record) -> None:
        """
        The strict path accepted the head C{head} (of C{record}): learn its
        field lines, each with the entry llhttp split it into, as
        L{add} learns heads.
        """
        items = record.items
        if not items:
            return
        lines = self._lines
        for line, entry in zip(head[record.lineBytes + 2 : -4].split(b"\r\n"), items):
            lines.add(line, entry)

    def clear(self) -> None:
        """
        Forget everything.
        """
        self._heads.clear()
        self._lines.clear()
