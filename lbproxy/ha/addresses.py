"""
The virtual addresses on this node's interface: added and removed over
netlink (pyroute2, no C{ip} command run), and announced to the link:

  - IPv4: a gratuitous ARP (a request for the address from the address,
    broadcast) on a packet socket, so that hosts holding the previous
    master's link-layer address for it take ours;
  - IPv6: an unsolicited neighbour advertisement (override flag set) to
    all nodes (ff02::1), hop limit 255.

An announcement goes out at once, then C{count - 1} more times every
C{interval} (a host may miss one); removing the addresses stops the
repeats.

The addresses are added with a lifetime (C{lifetime} seconds, the
kernel's own address lifetimes, for IPv4 as for IPv6) that the master
renews every third of it. When lbproxy is killed (SIGKILL, a crash) it
cannot remove them, but the kernel does once the lifetime runs out:
until then that host still answers ARP and neighbour solicitations for
them, with connection refusals, for hosts that ask it rather than the
new master. IPv6 addresses are added without duplicate address detection
(C{nodad}): DAD would leave them unusable ("tentative") for a second or
more, while the peer that held them is the very node DAD would find.

The netlink and packet sockets are opened in L{NetlinkAddresses.open}
(twistd's privileged start): the kernel checks C{CAP_NET_ADMIN} and
C{CAP_NET_RAW} against whoever opened them, so they keep working once
twistd has dropped its privileges (C{--uid}).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.errors import CannotStart
from lbproxy.ha.advert import Interface
from lbproxy.ha.interfaces import IVirtualAddresses

ETH_P_ARP = 0x0806
_BROADCAST = b"\xff" * 6
_ALL_NODES = "ff02::1"
#: Linux capability numbers, for the one line a missing privilege gets.
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


def gratuitousARP(mac: bytes, address: ipaddress.IPv4Address) -> bytes:
    """
    The Ethernet frame of a gratuitous ARP request for C{address}.
    """
    arp = struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, address.packed, b"\0" * 6, address.packed
    )
    return _BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def unsolicitedNA(mac: bytes, address: ipaddress.IPv6Address) -> bytes:
    """
    The ICMPv6 message of an unsolicited neighbour advertisement for
    C{address} (the kernel fills in the checksum).
    """
    override = 0x20000000
    return struct.pack("!BBHI16sBB6s", 136, 0, 0, override, address.packed, 2, 1, mac)


def capabilities() -> int:
    """
    The effective capabilities of this process (a bit per capability).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


@implementer(IVirtualAddresses)
class NetlinkAddresses:
    """
    The virtual addresses of C{interface}, managed with pyroute2.
    """

    log = Logger()

    def __init__(
        self,
        interface: str,
        addresses: tuple[Interface, ...],
        reactor,
        count: int = 5,
        interval: float = 1.0,
        lifetime: int = 3,
    ) -> None:
        self.interface = interface
        self.addresses = addresses
        self._reactor = reactor
        self.count = count
        self.interval = interval
        self.index = 0
        self.mac = b""
        self._ipr = None
        self._packet: socket.socket | None = None
        self._icmp6: socket.socket | None = None
        self._repeat = None
        self.announcements = 0
        self.lifetime = lifetime
        self._renewal = None

    def open(self) -> None:
        """
        Open the netlink and announcement sockets and find the interface.

        @raise CannotStart: no such interface, or not privileged enough.
        """
        missing = [
            name
            for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_NET_RAW, "CAP_NET_RAW"))
            if not capabilities() & (1 << bit)
        ]
        if missing:
            raise CannotStart(
                f"ha: managing the virtual addresses needs {' and '.join(missing)} "
                "(run lbproxy as root; twistd --uid/--gid drops privileges after the start)"
            )
        from pyroute2 import IPRoute

        self._ipr = IPRoute()
        found = self._ipr.link_lookup(ifname=self.interface)
        if not found:
            self.close()
            raise CannotStart(f"ha: interface {self.interface!r} does not exist")
        self.index = found[0]
        link = self._ipr.link("get", index=self.index)[0]
        mac = link.get("IFLA_ADDRESS") or "00:00:00:00:00:00"
        self.mac = bytes(int(part, 16) for part in mac.split(":"))
        try:
            if any(a.version == 4 for a in self.addresses):
                self._packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
                self._packet.bind((self.interface, ETH_P_ARP))
                self._packet.setblocking(False)
            if any(a.version == 6 for a in self.addresses):
                self._icmp6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
                self._icmp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
                self._icmp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.index)
                self._icmp6.setblocking(False)
        except OSError as e:
            self.close()
            raise CannotStart(f"ha: cannot open the announcement sockets on {self.interface}: {e.strerror}")

    def close(self) -> None:
        self._stopRepeats()
        self._stopRenewal()
        for name in ("_packet", "_icmp6", "_ipr"):
            resource = getattr(self, name)
            if resource is not None:
                resource.close()
                setattr(self, name, None)

    def _change(self, command: str, interface: Interface) -> bool:
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

        extra = {}
        if command != "del":
            extra["IFA_CACHEINFO"] = {"ifa_preferred": self.lifetime, "ifa_valid": self.lifetime}
            if interface.version == 6:
                extra["flags"] = IFA_F_NODAD
        try:
            self._ipr.addr(
                command,
                index=self.index,
                address=str(interface.ip),
                prefixlen=interface.network.prefixlen,
                **extra,
            )
        except NetlinkError as e:
            if e.code in (errno.EEXIST, errno.EADDRNOTAVAIL, errno.ENOENT):
                return False
            self.log.error(
                "ha: cannot {command} {address} on {interface}: {error}",
                command=command,
                address=str(interface),
                interface=self.interface,
                error=e,
            )
            return False
        return True

    def add(self) -> None:
        done = [str(a) for a in self.addresses if self._change("add", a)]
        if done:
            self.log.info("ha: added {addresses} to {interface}", addresses=", ".join(done), interface=self.interface)
        if self._renewal is None:
            self._renewal = LoopingCall(self._renew)
            self._renewal.clock = self._reactor
            self._renewal.start(self.lifetime / 3, now=False)

    def _renew(self) -> None:
        for interface in self.addresses:
            # "replace" adds the address again if it expired meanwhile (a
            # stalled process).
            self._change("replace", interface)

    def _stopRenewal(self) -> None:
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        self._renewal = None

    def remove(self) -> None:
        self._stopRepeats()
        self._stopRenewal()
        done = [str(a) for a in self.addresses if self._change("del", a)]
        if done:
            self.log.info(
                "ha: removed {addresses} from {interface}", addresses=", ".join(done), interface=self.interface
            )

    def announce(self) -> None:
        self._stopRepeats()
        self._announceOnce(self.count)

    def _announceOnce(self, left: int) -> None:
        self._repeat = None
        for interface in self.addresses:
            try:
                if interface.version == 4 and self._packet is not None:
                    self._packet.send(gratuitousARP(self.mac, interface.ip))
                elif interface.version == 6 and self._icmp6 is not None:
                    self._icmp6.sendto(unsolicitedNA(self.mac, interface.ip), (_ALL_NODES, 0, 0, self.index))
            except OSError as e:
                self.log.warn(
                    "ha: announcing {address} on {interface} failed: {error}",
                    address=str(interface.ip),
                    interface=self.interface,
                    error=e,
                )
        self.announcements += 1
        if left > 1:
            self._repeat = self._reactor.callLater(self.interval, self._announceOnce, left - 1)

    def silence(self) -> None:
        self._stopRepeats()

    def _stopRepeats(self) -> None:
        if self._repeat is not None and self._repeat.active():
            self._repeat.cancel()
        self._repeat = None
