"""
The UDP socket adverts travel on, and the checks every received datagram
passes before the state machine sees it.

The socket is lbproxy's own (not Twisted's UDP port) because the checks
need what C{recvmsg} tells: the IP TTL / IPv6 hop limit, which must be
255 as in VRRP (a datagram that crossed a router, or was sent from
further away, has less), and the kernel's receive time, from which the
delay before the reactor handled the advert is measured.

Sent adverts leave with TTL / hop limit 255: to each peer (unicast), or
to the multicast group on the configured interface, with multicast loop
off. Every datagram is dropped unless it comes from a peer (unicast), has
TTL 255, decodes (L{lbproxy.ha.advert.decode}: length, version, group,
signature, fields), names its source as its sender, is not a replay, and
carries the same virtual addresses as ours. Drops are counted by cause
and logged at most once a second per cause (L{LimitLog}).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Callable

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.config.ha import HAConfig
from lbproxy.core.limits import LimitLog, plural
from lbproxy.ha.advert import DROP_CAUSES, MAX_SIZE, Address, Advert, AdvertRejected, ReplayGuard, decode

#: Datagrams read in one readiness event at most (the rest wait for the
#: next reactor iteration).
READS_PER_EVENT = 64

# Linux values the socket module may lack.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
_TIMESPEC = struct.Struct("@qq")
_INT = struct.Struct("@i")


class AdvertFilter:
    """
    Turns received datagrams into accepted adverts, counting the others.

    @ivar dropped: drops by cause (every cause of L{DROP_CAUSES}, 0 at
        first).
    """

    log = Logger()

    def __init__(self, config: HAConfig, reactor) -> None:
        self.config = config
        self.dropped = dict.fromkeys(DROP_CAUSES, 0)
        self._replays = ReplayGuard()
        self._limitLog = LimitLog(reactor)
        self._addresses = set(config.virtualAddresses)
        self._peers = set(config.peers)

    def check(self, data: bytes, source: Address, ttl: int | None) -> Advert | None:
        """
        The advert in C{data} from C{source}, or None when it is dropped
        (or is our own, looped back).
        """
        if source == self.config.address:
            return None
        try:
            if self._peers and source not in self._peers:
                raise AdvertRejected("source", f"{source} is not a configured peer")
            if ttl is not None and ttl != 255:
                raise AdvertRejected("ttl", f"TTL {ttl}, expected 255 (sent from beyond the link?)")
            advert = decode(data, self.config.key, self.config.group)
            if advert.sender != source:
                raise AdvertRejected("source", f"the advert names {advert.sender} as its sender")
            self._replays.check(advert)
            if set(advert.addresses) != self._addresses:
                raise AdvertRejected(
                    "addresses",
                    "its virtual addresses differ from ours: "
                    + ", ".join(str(a) for a in advert.addresses)
                    + " (the two nodes' virtual_addresses must be the same)",
                )
        except AdvertRejected as rejected:
            self._drop(rejected, source)
            return None
        return advert

    def _drop(self, rejected: AdvertRejected, source: Address) -> None:
        self.dropped[rejected.cause] += 1

        def emit(count: int) -> None:
            self.log.warn(
                "ha: dropped {what} from {source}: {cause}: {detail}",
                what=plural(count, "advert"),
                source=str(source),
                cause=rejected.cause,
                detail=rejected.detail,
            )

        self._limitLog.note(rejected.cause, emit)

    def flush(self) -> None:
        self._limitLog.flush()


def _family(address: Address) -> int:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def openAdvertSocket(config: HAConfig, interfaceIndex: int) -> socket.socket:
    """
    The bound, non-blocking UDP socket of the adverts.

    @raise OSError: it cannot be made or bound.
    """
    family = _family(config.address)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        group = config.multicastGroup
        if group is None:
            sock.bind((str(config.address), config.port))
        elif family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            request = group.packed + config.address.packed + struct.pack("@i", interfaceIndex)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, request)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, request)
            sock.bind((str(group), config.port))
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, interfaceIndex)
            sock.setsockopt(
                socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group.packed + struct.pack("@I", interfaceIndex)
            )
            sock.bind((str(group), config.port, 0, interfaceIndex))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@implementer(IReadDescriptor)
class AdvertSocket:
    """
    The advert socket in the reactor: sends, and hands each received
    datagram to C{received(data, source, ttl, delay)}, C{delay} being the
    seconds from the kernel's receive time to now.
    """

    log = Logger()

    def __init__(
        self,
        sock: socket.socket,
        config: HAConfig,
        received: Callable[[bytes, Address, int | None, float | None], None],
        reactor,
        interfaceIndex: int = 0,
    ) -> None:
        self.socket = sock
        self.config = config
        self._received = received
        self._reactor = reactor
        self._interfaceIndex = interfaceIndex
        self.sendErrors = 0
        family = _family(config.address)
        port = config.port
        self._ancillary = []
        if config.multicastGroup is not None and family == socket.AF_INET6:
            # The kernel would pick the link-local address as the source
            # of a link-scope multicast; the advert names our own.
            self._ancillary = [
                (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, config.address.packed + struct.pack("@I", interfaceIndex))
            ]
        if config.multicastGroup is not None:
            group = str(config.multicastGroup)
            self._destinations = [(group, port, 0, interfaceIndex) if family == socket.AF_INET6 else (group, port)]
        else:
            self._destinations = [
                (str(peer), port, 0, 0) if family == socket.AF_INET6 else (str(peer), port)
                for peer in config.peers
            ]

    def startReading(self) -> None:
        self._reactor.addReader(self)

    def close(self) -> None:
        self._reactor.removeReader(self)
        self.socket.close()

    def send(self, data: bytes) -> None:
        for destination in self._destinations:
            try:
                self.socket.sendmsg([data], self._ancillary, 0, destination)
            except OSError as e:
                # A full buffer or an unreachable peer: this advert is
                # lost, as it could be on the wire; the next one follows.
                self.sendErrors += 1
                self.log.debug("ha: advert to {to} not sent: {error}", to=destination[0], error=e)

    # IReadDescriptor

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "ha-adverts"

    def connectionLost(self, reason: Failure) -> None:
        pass

    def doRead(self) -> None:
        for _ in range(READS_PER_EVENT):
            try:
                data, ancillary, _, source = self.socket.recvmsg(MAX_SIZE + 1, 256)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EINTR, errno.ECONNREFUSED):
                    continue
                self.log.warn("ha: reading adverts failed: {error}", error=e)
                return
            ttl = None
            delay = None
            for level, kind, value in ancillary:
                if (level, kind) in ((socket.IPPROTO_IP, socket.IP_TTL), (socket.IPPROTO_IPV6, IPV6_HOPLIMIT)):
                    ttl = _INT.unpack_from(value)[0]
                elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                    delay = max(0.0, time.time() - (seconds + nanoseconds / 1e9))
            self._received(data, ipaddress.ip_address(source[0].split("%")[0]), ttl, delay)
