"""
The selection context of a mail session: a TCP flow with a user.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress

from lbproxy.core.context import FlowContext


class MailFlowContext(FlowContext):
    """
    A mail session being placed once its user is known.

    Key C{"user"} is the normalised user name as UTF-8 bytes, so hashing
    selectors send every session of a user to the same server; the TCP keys
    (C{src}, C{dst}...) work as for any flow.

    @ivar user: the normalised user name.
    """

    protocol = "tcp"

    def __init__(self, client: IAddress, local: IAddress, user: str) -> None:
        super().__init__(client, local)
        self.user = user

    def key(self, spec: str) -> bytes | None:
        if spec == "user":
            return self.user.encode("utf-8")
        return super().key(spec)
