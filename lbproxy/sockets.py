"""
Listening sockets lbproxy builds itself, for the socket options Twisted's
endpoints do not set, handed to the reactor with C{adoptStreamPort}.

  - C{IP_FREEBIND} (C{IPV6_FREEBIND} for IPv6): bind to an address the
    host does not have (yet). A listener on a virtual address of the HA
    pair listens on the backup too, and serves the moment the address
    arrives, without a bind at takeover that could fail, and without the
    host-wide C{net.ipv4.ip_nonlocal_bind}.
  - C{SO_REUSEPORT}: several sockets listen on one address, one per worker
    process (L{lbproxy.workers}); the kernel spreads new connections over
    them by a hash of their addresses and ports.
"""

from __future__ import annotations

import socket

from twisted.internet.defer import fail
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

# Linux's values; the socket module has IP_FREEBIND only on some versions.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = 78


class _NullReactor:
    """
    Stands in for the reactor while a bind string is parsed.
    """


def tcpBind(bind: str) -> tuple[int, str, int, int] | None:
    """
    C{(family, host, port, backlog)} of a C{tcp:} or C{tcp6:} listener
    string, or None for any other kind (unix, ssl, systemd...).
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

    try:
        endpoint = serverFromString(_NullReactor(), bind)
    except Exception:
        return None
    if type(endpoint) is TCP6ServerEndpoint:
        return socket.AF_INET6, endpoint._interface or "::", endpoint._port, endpoint._backlog
    if type(endpoint) is TCP4ServerEndpoint:
        return socket.AF_INET, endpoint._interface or "0.0.0.0", endpoint._port, endpoint._backlog
    return None


def listeningSocket(
    family: int, host: str, port: int, backlog: int, freebind: bool = False, reusePort: bool = False, listen: bool = True
) -> socket.socket:
    """
    A non-blocking TCP socket listening on C{host}:C{port}.

    @param reusePort: set C{SO_REUSEPORT}, so that other sockets with it
        (of the same user) may listen on the same address.
    @param listen: False: only bound (a check that the address can be
        had; a socket that does not listen gets no connection).
    @raise OSError: the socket cannot be made or bound.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reusePort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if freebind:
            if family == socket.AF_INET6:
                try:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
                except OSError:
                    # Before Linux 4.15 the IPv4 option covers IPv6 too.
                    sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@implementer(IStreamServerEndpoint)
class BuiltSocketEndpoint:
    """
    A TCP server endpoint whose socket is built by L{listeningSocket} when
    it listens (in C{privilegedStartService}, so before twistd drops
    privileges, as Twisted's own endpoints).
    """

    def __init__(
        self,
        reactor,
        family: int,
        host: str,
        port: int,
        backlog: int = 50,
        freebind: bool = False,
        reusePort: bool = False,
    ) -> None:
        self._reactor = reactor
        self.family = family
        self.host = host
        self.port = port
        self.backlog = backlog
        self.freebind = freebind
        self.reusePort = reusePort

    def listen(self, factory):
        try:
            sock = listeningSocket(self.family, self.host, self.port, self.backlog, self.freebind, self.reusePort)
        except OSError as e:
            return fail(CannotListenError(self.host, self.port, e))
        return AdoptedStreamServerEndpoint(self._reactor, sock.detach(), self.family).listen(factory)


def serverEndpoint(reactor, bind: str, freebind: bool = False, reusePort: bool = False):
    """
    The endpoint a listener binds: Twisted's for C{bind}, or a
    L{BuiltSocketEndpoint} when it needs options of its own (C{freebind},
    C{reusePort}).
    """
    if freebind or reusePort:
        parsed = tcpBind(bind)
        if parsed is None:
            option = "freebind" if freebind else "SO_REUSEPORT"
            raise ValueError(f"{option} needs a tcp: or tcp6: listener, got {bind!r}")
        return BuiltSocketEndpoint(reactor, *parsed, freebind=freebind, reusePort=reusePort)
    return serverFromString(reactor, bind)
