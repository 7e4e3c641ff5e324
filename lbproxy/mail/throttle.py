"""
Failed logins counted per client address, across connections.

C{auth.max_failures} closes a connection after a few failed logins, but a
password guesser simply opens the next one. So each mail listener also
counts the failed logins of every client address: once an address has
C{auth.address_max_failures} of them within C{auth.address_window}, its
further logins are refused until that window ends, answered exactly like
a failed login (the same reply, after C{auth.failure_delay}, counted
against C{auth.max_failures}) without asking any store. The first refusal
of a window is logged; the others are not.

A window is fixed: it starts with an address's first counted failure and
lasts C{address_window}; the next failure after it starts a new one.
Refused logins are not counted (an address is not locked out for longer
by trying on), and neither is anything on success (one user logging in
behind a shared address does not clear another's failures).

The client address is the one the session logs (a trusted proxy's PROXY
header's, with C{accept_proxy}). IPv4-mapped IPv6 addresses count as IPv4;
other IPv6 addresses are counted by their first C{address_ipv6_prefix}
bits (128, the default: each address; 64: each /64, what one subscriber
usually holds).

Memory stays bounded whatever an attacker sprays: at most
C{address_table_size} addresses are counted at once. Windows that are
over are dropped as failures come in (the table is in the order the
windows started), and when the table is full the address whose window
started longest ago is forgotten; that is logged once per window.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

from lbproxy.mail.config import AddressFailureLimit


class _Window:
    """
    The failed logins of one address since C{start}.
    """

    __slots__ = ("start", "count", "logged")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.logged = False


class FailedLogins:
    """
    The failed logins of one listener's client addresses.

    @ivar limit: the listener's L{AddressFailureLimit}.
    """

    log = Logger()

    def __init__(self, limit: AddressFailureLimit, reactor, listener: str = "") -> None:
        """
        @param reactor: provides C{seconds()}.
        @param listener: the listener's name, for the log.
        """
        self.limit = limit
        self.listener = listener
        self._reactor = reactor
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._fullLogged: float | None = None

    def __len__(self) -> int:
        return len(self._windows)

    def keyFor(self, address: IAddress | None) -> str | None:
        """
        What the failures of C{address} are counted under: its IP address,
        or its IPv6 network; None for an address without an IP (a UNIX
        socket), which is not counted.
        """
        host = getattr(address, "host", None)
        if not isinstance(host, str):
            return None
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return None
        if ip.version == 6:
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            prefix = self.limit.ipv6Prefix
            if prefix < 128:
                return str(ipaddress.IPv6Network((ip, prefix), strict=False))
        return str(ip)

    def refused(self, address: IAddress | None, protocol: str) -> bool:
        """
        Whether logins from C{address} are refused now: it reached the
        limit in its current window. The first refusal of a window is
        logged.

        @param protocol: C{"imap"} or C{"pop3"}, for the log.
        """
        key = self.keyFor(address)
        if key is None:
            return False
        now = self._reactor.seconds()
        self._expire(now)
        window = self._windows.get(key)
        if window is None or window.count < self.limit.maxFailures:
            return False
        if not window.logged:
            window.logged = True
            self.log.warn(
                "{protocol} client {address} of listener {listener} had {count} failed logins "
                "within {window}s (auth.address_max_failures): its logins are refused for "
                "{remaining}s",
                protocol=protocol,
                address=key,
                listener=self.listener,
                count=window.count,
                window=f"{self.limit.window:g}",
                remaining=f"{window.start + self.limit.window - now:.0f}",
            )
        return True

    def failed(self, address: IAddress | None) -> None:
        """
        Count a failed login of C{address}.
        """
        key = self.keyFor(address)
        if key is None:
            return
        now = self._reactor.seconds()
        self._expire(now)
        windows = self._windows
        window = windows.get(key)
        if window is None:
            if len(windows) >= self.limit.tableSize:
                self._forgetOldest(now)
            window = windows[key] = _Window(now)
        if window.count < self.limit.maxFailures:
            window.count += 1

    def _expire(self, now: float) -> None:
        """
        Drop the windows that are over: the oldest come first.
        """
        windows = self._windows
        length = self.limit.window
        while windows:
            key, window = next(iter(windows.items()))
            if window.start + length > now:
                return
            del windows[key]

    def _forgetOldest(self, now: float) -> None:
        self._windows.popitem(last=False)
        if self._fullLogged is None or now - self._fullLogged >= self.limit.window:
            self._fullLogged = now
            self.log.warn(
                "listener {listener} counts failed logins of {size} client addresses "
                "(auth.address_table_size): forgetting the oldest",
                listener=self.listener,
                size=self.limit.tableSize,
            )
