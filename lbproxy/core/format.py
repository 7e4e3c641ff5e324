"""
How log lines write addresses, durations and HTTP/2 error codes, the same
in every front, and the format of the one line a front logs per session or
request.
"""

from __future__ import annotations

from h2.errors import ErrorCodes
from twisted.internet.interfaces import IAddress


#: The C{log_format} of the one line a front logs per session (TCP, IMAP,
#: POP3) or per request (an HTTP access log without a file): the front
#: writes the line itself into the event's C{line}, beside the line's
#: fields, which JSON observers keep. Twisted's formatting of a format
#: string over a dozen fields costs about 13 us a line, the front's own
#: f-string under 1 us.
SESSION_LINE = "{line}"


def formatAddress(address: IAddress) -> str:
    """
    C{host:port}, C{[v6host]:port}, or the text of a non-IP address.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        name = getattr(address, "name", None)
        if isinstance(name, bytes):
            return name.decode("utf-8", "replace")
        return str(name or address)
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def formatSeconds(seconds: float | None) -> str:
    """
    A duration for a log line: milliseconds below a second, else seconds;
    C{-} for none.
    """
    if seconds is None:
        return "-"
    if seconds < 1.0:
        return f"{seconds * 1000:.1f}ms"
    return f"{seconds:.3f}s"


def formatErrorCode(code) -> str:
    """
    An HTTP/2 error code (an C{int}, or the h2 library's C{ErrorCodes} it
    knows) for a log line: its RFC 9113 name, or its hex value for a code
    without one.
    """
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"
