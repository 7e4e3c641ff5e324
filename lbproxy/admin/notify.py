"""
systemd's service notifications (sd_notify(3)) for a C{Type=notify} unit:
C{READY=1} once the listeners are bound and the reactor runs,
C{RELOADING=1} with C{MONOTONIC_USEC} when a reload begins and C{READY=1}
when it is done (with a C{STATUS} saying how it went), C{STOPPING=1} when
the stop begins.

The protocol is one datagram per notification to the UNIX socket named by
C{$NOTIFY_SOCKET} (a path, or an abstract name starting with C{@}): a few
lines of code, so no library is needed. Without C{$NOTIFY_SOCKET}
(not started by systemd) nothing is sent.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.interfaces import IReloadObserver


@implementer(IReloadObserver)
class SystemdNotifier(Service):
    """
    Tells systemd how the daemon is doing. A child of the
    L{lbproxy.service.BalancerService} (after its listeners), and one of
    its reload observers; it stops first, so C{STOPPING=1} goes out as
    soon as the stop begins.

    @ivar address: the socket's address (C{$NOTIFY_SOCKET}).
    """

    log = Logger()
    stopsFirst = True

    def __init__(self, address: str, reactor) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._reactor = reactor
        self._socket: socket.socket | None = None

    @classmethod
    def fromEnvironment(cls, reactor, environ=None) -> SystemdNotifier | None:
        """
        A notifier for C{$NOTIFY_SOCKET}, or None when it is not set.
        """
        address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
        return cls(address, reactor) if address else None

    def notify(self, *fields: str) -> bool:
        """
        Send one notification of C{fields} (C{"READY=1"}, ...); False when
        it could not be sent (logged).
        """
        message = "\n".join(fields).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message, self.address)
        except OSError as error:
            self.log.warn("cannot notify systemd at {address}: {error}", address=self.address.replace("\0", "@"), error=error.strerror)
            return False
        return True

    def startService(self) -> None:
        super().startService()
        parent = self.parent
        if parent is not None and hasattr(parent, "reloadObservers"):
            parent.reloadObservers.append(self)
        self._reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        self.notify("READY=1", f"MAINPID={os.getpid()}", "STATUS=serving")

    def stopService(self) -> None:
        super().stopService()
        self.notify("STOPPING=1", "STATUS=stopping: sessions finishing")
        parent = self.parent
        if parent is not None and self in getattr(parent, "reloadObservers", []):
            parent.reloadObservers.remove(self)
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    # IReloadObserver

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def reloaded(self, ok: bool, line: str) -> None:
        status = "serving" if ok else "serving the previous configuration: " + line
        self.notify("READY=1", "STATUS=" + status.replace("\n", " ")[:400])
