"""
The heartbeat's advert: what a node says about itself every interval, on
the wire.

Layout (network byte order), 36 bytes of header, 17 bytes per virtual
address, then a 32-byte HMAC-SHA256 over everything before it::

    0   magic       b"LBHA"
    4   version     1
    5   kind        1 (advert)
    6   group       1-255: nodes of one group share addresses (VRRP's VRID)
    7   priority    0-254; 0: the sender is leaving, take over now
    8   interval    centiseconds between adverts, 10-4095 (0.1 s to 40.95 s)
    10  flags       bit 0: solicit (a starting node asks the master to
                    advertise at once); bit 1: yield (the sender was
                    master and steps down for the receiver); the other
                    bits are 0
    11  count       virtual addresses that follow
    12  sequence    64 bits, strictly increasing per sender (see L{Sequence})
    20  sender      16 bytes: the sender's address (IPv4 as ::ffff:a.b.c.d),
                    which must be the datagram's source
    36  addresses   count x (16 bytes of address, 1 byte of prefix length)
    ..  hmac        HMAC-SHA256(key, every byte above)

Parsing is strict: the length must be exactly what C{count} says, every
field must be in range, and the signature must verify; anything else is
rejected with one of L{DROP_CAUSES}, which the receiver counts. The order
of the checks decides the cause: a datagram too short to be an advert is
C{truncated}, one of another protocol or version is C{version}, one for
another group is C{group} (its key may well differ: it is not ours to
judge), one whose signature does not verify is C{auth}, and only a signed
one can be C{malformed} (fields out of range) or a C{replay}.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAGIC = b"LBHA"
VERSION = 1
KIND_ADVERT = 1
#: A starting node asks the master to advertise at once.
FLAG_SOLICIT = 0x01
#: A master steps down for a better one (which then announces again).
FLAG_YIELD = 0x02
_FLAGS = FLAG_SOLICIT | FLAG_YIELD

_HEADER = struct.Struct("!4sBBBBHBBQ16s")
_ADDRESS = struct.Struct("!16sB")
DIGEST_SIZE = hashlib.sha256().digest_size
HEADER_SIZE = _HEADER.size
MIN_SIZE = HEADER_SIZE + DIGEST_SIZE
#: Virtual addresses one advert can carry (the configuration allows fewer).
MAX_ADDRESSES = 64
MAX_SIZE = MIN_SIZE + MAX_ADDRESSES * _ADDRESS.size

#: Shortest and longest advert intervals, in centiseconds (VRRPv3's field).
MIN_INTERVAL_CS = 10
MAX_INTERVAL_CS = 4095

#: Why a received datagram was dropped, in the order the checks run (the
#: transport adds C{ttl} and C{source}, the receiver C{replay} and
#: C{addresses}).
DROP_CAUSES = ("truncated", "version", "group", "ttl", "source", "auth", "malformed", "replay", "addresses")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class AdvertRejected(Exception):
    """
    A datagram is not an advert this node accepts.

    @ivar cause: one of L{DROP_CAUSES}.
    @ivar detail: one line for the log (never the key).
    """

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
        self.detail = detail


@dataclass(frozen=True)
class Advert:
    """
    One advert, decoded (or to be encoded).

    @ivar interval: seconds between the sender's adverts (a multiple of
        0.01).
    @ivar addresses: the sender's virtual addresses with their prefix
        lengths, in its configuration's order.
    """

    group: int
    priority: int
    interval: float
    sequence: int
    sender: Address
    addresses: tuple[Interface, ...] = ()
    solicit: bool = False
    yielding: bool = False
    #: Set by L{decode}: the signed bytes, for tests and diagnostics.
    size: int = field(default=0, compare=False)

    @property
    def fromMaster(self) -> bool:
        """
        The sender says it is master (not a solicit, not a yield; priority
        0 is a master leaving).
        """
        return not self.solicit and not self.yielding

    @property
    def leaving(self) -> bool:
        """
        Priority 0: the sender stops being master now.
        """
        return self.priority == 0


def _pack16(address: Address) -> bytes:
    if address.version == 4:
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed).packed
    return address.packed


def _unpack16(raw: bytes) -> Address:
    address = ipaddress.IPv6Address(raw)
    return address.ipv4_mapped or address


def intervalCentiseconds(seconds: float) -> int:
    """
    C{seconds} as the advert's field, rounded to the nearest centisecond.

    @raise ValueError: outside 0.1 s to 40.95 s.
    """
    value = round(seconds * 100)
    if not MIN_INTERVAL_CS <= value <= MAX_INTERVAL_CS:
        raise ValueError(f"advert interval {seconds}s is not from 0.1s to 40.95s")
    return value


def encode(advert: Advert, key: bytes) -> bytes:
    """
    The signed bytes of C{advert}.
    """
    if not 1 <= advert.group <= 255 or not 0 <= advert.priority <= 254:
        raise ValueError(f"group {advert.group} or priority {advert.priority} out of range")
    if len(advert.addresses) > MAX_ADDRESSES:
        raise ValueError(f"{len(advert.addresses)} addresses, at most {MAX_ADDRESSES}")
    parts = [
        _HEADER.pack(
            MAGIC,
            VERSION,
            KIND_ADVERT,
            advert.group,
            advert.priority,
            intervalCentiseconds(advert.interval),
            (FLAG_SOLICIT if advert.solicit else 0) | (FLAG_YIELD if advert.yielding else 0),
            len(advert.addresses),
            advert.sequence,
            _pack16(advert.sender),
        )
    ]
    for interface in advert.addresses:
        parts.append(_ADDRESS.pack(_pack16(interface.ip), interface.network.prefixlen))
    body = b"".join(parts)
    return body + hmac.new(key, body, hashlib.sha256).digest()


def decode(data: bytes, key: bytes, group: int) -> Advert:
    """
    Check and decode one received datagram.

    @param group: this node's group; adverts of other groups are rejected.
    @raise AdvertRejected: with the cause; the datagram is to be dropped.
    """
    if len(data) < MIN_SIZE:
        raise AdvertRejected("truncated", f"{len(data)} bytes, an advert has at least {MIN_SIZE}")
    magic, version, kind, theirGroup, priority, interval, flags, count, sequence, sender = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or kind != KIND_ADVERT:
        raise AdvertRejected("version", f"not a version {VERSION} advert (magic {magic!r}, version {version}, kind {kind})")
    expected = MIN_SIZE + count * _ADDRESS.size
    if len(data) < expected:
        raise AdvertRejected("truncated", f"{len(data)} bytes, {count} addresses need {expected}")
    if theirGroup != group:
        raise AdvertRejected("group", f"group {theirGroup}, ours is {group}")
    if len(data) > expected:
        # Checked after the group: another group's adverts are not ours to
        # judge. Extra bytes are not signed-over garbage we could ignore.
        raise AdvertRejected("malformed", f"{len(data)} bytes, {count} addresses make {expected}")
    body, signature = data[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), signature):
        raise AdvertRejected("auth", "the signature does not verify with our key")
    if priority > 254:
        raise AdvertRejected("malformed", f"priority {priority}, expected 0 to 254")
    if not MIN_INTERVAL_CS <= interval <= MAX_INTERVAL_CS:
        raise AdvertRejected("malformed", f"interval {interval}cs, expected {MIN_INTERVAL_CS} to {MAX_INTERVAL_CS}")
    if flags & ~_FLAGS:
        raise AdvertRejected("malformed", f"unknown flags 0x{flags:02x}")
    senderAddress = _unpack16(sender)
    addresses = []
    for index in range(count):
        raw, prefix = _ADDRESS.unpack_from(data, HEADER_SIZE + index * _ADDRESS.size)
        address = _unpack16(raw)
        if prefix > address.max_prefixlen:
            raise AdvertRejected("malformed", f"address {address}/{prefix}: prefix length out of range")
        addresses.append(ipaddress.ip_interface((address, prefix)))
    return Advert(
        group=theirGroup,
        priority=priority,
        interval=interval / 100,
        sequence=sequence,
        sender=senderAddress,
        addresses=tuple(addresses),
        solicit=bool(flags & FLAG_SOLICIT),
        yielding=bool(flags & FLAG_YIELD),
        size=len(data),
    )


class Sequence:
    """
    The sequence numbers of this node's adverts: the wall clock in
    nanoseconds, and always at least one more than the last.

    The wall clock (not a counter from 0) keeps them increasing across a
    restart of the process, so a peer that remembers the last one it
    accepted keeps accepting ours, and a recorded advert of a previous run
    stays a replay. A clock set back by more than the restart took makes
    a peer drop our adverts as replays until it restarts too: the log
    line says so.
    """

    def __init__(self, nanoseconds: Callable[[], int] = time.time_ns) -> None:
        self._nanoseconds = nanoseconds
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, self._nanoseconds())
        return self._last


class ReplayGuard:
    """
    The last sequence accepted from each sender: an advert whose sequence
    is not above it is a replay (a recorded advert sent again, or a
    duplicate).

    The first advert of a sender since this node started is taken as it
    is: a node that just started can be fed adverts recorded earlier (at
    most one interval each, each higher than the one before); its peer's
    next real advert is higher still and is accepted.
    """

    def __init__(self) -> None:
        self._last: dict[Address, int] = {}

    def check(self, advert: Advert) -> None:
        """
        @raise AdvertRejected: C{replay}.
        """
        last = self._last.get(advert.sender)
        if last is not None and advert.sequence <= last:
            raise AdvertRejected(
                "replay",
                f"sequence {advert.sequence} from {advert.sender} is not above {last} "
                "(a replayed advert, or the sender's clock was set back across a restart)",
            )
        self._last[advert.sender] = advert.sequence
