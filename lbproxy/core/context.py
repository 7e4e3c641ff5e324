"""
Selection contexts: what a selector knows about the flow it places.

Hashing selectors take a C{key} option naming what to hash. Every flow
provides the client and local addresses (L{FlowContext}); each mode's
front adds its own keys in a subclass and lists them in its
C{selectionKeys} (L{lbproxy.modes}), so the config loader can refuse a key
that a listener's mode cannot provide.
"""

from __future__ import annotations

import ipaddress
import socket

from twisted.internet.interfaces import IAddress
from zope.interface import implementer

from lbproxy.interfaces import ISelectionContext

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


def addressBytes(address: IAddress) -> bytes:
    """
    The packed IP of an IPv4/IPv6 address, or the text of anything else
    (e.g. a UNIX socket path).
    """
    host = getattr(address, "host", None)
    if host is None:
        return str(address).encode()
    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        return str(host).encode()


@implementer(ISelectionContext)
class FlowContext:
    """
    Selection context of one TCP connection, the base of every front's.

    Fronts with more to offer (HTTP, mail) subclass it and extend L{key}.
    """

    protocol = "tcp"

    def __init__(self, client: IAddress, local: IAddress) -> None:
        self.client = client
        self.local = local
        self.excluded: set = set()

    def fiveTuple(self) -> tuple[int, int, int, int, int]:
        """
        (source address, destination address, source port, destination
        port, IP protocol number) as integers: the tutorial's hash input.
        """
        return (
            int.from_bytes(addressBytes(self.client), "big"),
            int.from_bytes(addressBytes(self.local), "big"),
            getattr(self.client, "port", 0) or 0,
            getattr(self.local, "port", 0) or 0,
            IPPROTO[self.protocol],
        )

    def key(self, spec: str) -> bytes | None:
        if spec == "src":
            return addressBytes(self.client)
        if spec == "dst":
            return addressBytes(self.local)
        if spec == "src_port":
            return addressBytes(self.client) + b"|%d" % (
                getattr(self.client, "port", 0) or 0,
            )
        if spec == "5tuple":
            return b"|".join(b"%d" % n for n in self.fiveTuple())
        return None
