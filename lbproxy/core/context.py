"""
Selection contexts: what a selector knows about the flow it places.

Hashing selectors take a C{key} option naming what to hash. Which keys
exist depends on the listener's mode; L{KEYS} lists them so the config
loader can refuse a key that a listener's mode cannot provide.
"""

from __future__ import annotations

import ipaddress
import socket

from twisted.internet.interfaces import IAddress
from zope.interface import implementer

from lbproxy.interfaces import ISelectionContext

#: Key specifications each listener mode provides. A spec ending in ":" takes
#: an argument (e.g. "header:User-Agent").
_TCP_KEYS = frozenset({"src", "src_port", "dst", "5tuple"})
KEYS: dict[str, frozenset[str]] = {
    # "sni": the server name of the ClientHello, on TCP listeners with SNI
    # routes (lbproxy.tcp.front.SNIFlowContext; the config refuses it elsewhere).
    "tcp": _TCP_KEYS | {"sni"},
    # lbproxy.http.context.HTTPFlowContext provides these.
    "http": _TCP_KEYS
    | {"uri", "path", "host", "header:", "cookie:", "url_param:"},
    # The mail fronts place a session once the user has logged in: "user"
    # is the normalised user name (lbproxy.mail).
    "imap": _TCP_KEYS | {"user"},
    "pop3": _TCP_KEYS | {"user"},
}

#: Every key specification some listener mode provides, including those the
#: HTTP and mail fronts add: selector plugins check their C{key} option
#: against it, and the config loader then checks the key against the modes
#: of the listeners using the pool (L{keySupported}).
ALL_KEYS: frozenset[str] = frozenset().union(
    *KEYS.values(), {"uri", "header:", "user"}
)

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


def _specIn(kinds: frozenset[str], spec: str) -> bool:
    kind, sep, argument = spec.partition(":")
    if not sep:
        return spec in kinds
    return bool(argument) and (kind + ":") in kinds


def keySupported(mode: str, spec: str) -> bool:
    """
    Whether listeners in C{mode} can provide key C{spec}.
    """
    return _specIn(KEYS.get(mode, frozenset()), spec)


def keyKnown(spec: str) -> bool:
    """
    Whether C{spec} is a well-formed key of any listener mode: a known kind,
    or C{kind:argument} for a kind that takes an argument.
    """
    return _specIn(ALL_KEYS, spec)


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
