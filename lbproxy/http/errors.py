"""
The error every HTTP message problem is reported with.
"""


class HTTPParseError(Exception):
    """
    A message cannot be accepted.

    @ivar status: the status to answer with: 400, 413, 414, 431, 501 for
        requests; 502 for anything wrong in a backend's response.
    @ivar reason: a short fixed description for logs. It never contains
        bytes of the offending message, so it is safe to log; error
        responses do not expose it (see L{lbproxy.http.serialize}).
    """

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}")
