"""
First available: fill servers one after another, in config order.
"""

from __future__ import annotations

from zope.interface import implementer

from lbproxy.interfaces import IBackendSelector
from lbproxy.selectors.base import usable


@implementer(IBackendSelector)
class FirstAvailable:
    """
    Pick the first usable server in config order: the first server takes
    every flow until it reaches its maxconn, then the next one does. Useful
    to keep as few servers busy as possible (the rest can be powered down
    or kept warm) and for active/standby pairs without the backup flag.
    """

    def pick(self, servers, context):
        for server in servers:
            if usable(server, context):
                return server
        return None
