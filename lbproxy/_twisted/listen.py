"""
Listening errors raised at startup instead of logged.

Twisted's C{StreamServerEndpointService} logs a failure to listen and
lets the daemon run on without the port, unless its private
C{_raiseSynchronously} flag is set: then C{privilegedStartService}
raises it (C{twisted.application.strports.service} sets the flag the
same way). lbproxy wants a listener that cannot listen to stop startup
with the reason, before twistd daemonizes.
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService


def raiseListenErrors(service: StreamServerEndpointService) -> StreamServerEndpointService:
    """
    Make C{service} raise from C{privilegedStartService} (or
    C{startService}, when that listens) a failure to listen that its
    endpoint reports at once (a taken port, a missing socket) instead of
    logging it; return C{service}. Twisted clears the flag once the
    service has listened.
    """
    service._raiseSynchronously = True
    return service
