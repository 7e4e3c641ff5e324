"""
How a mail session puts what it cannot trust, and TLS state, into its log
lines: client text escaped and cut, the TLS version of a completed
handshake, and why a store connection was lost.
"""

from __future__ import annotations

from twisted.python.failure import Failure

from lbproxy.tls.client import describeVerifyFailure, tlsFailureText
from lbproxy.tls.server import describeTLS


def printable(text: str, limit: int = 256) -> str:
    """
    C{text} safe for one log line: control characters, spaces and
    backslashes escaped, cut at C{limit} characters.
    """
    out = []
    for ch in text[:limit]:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable() and ch != " ":
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
    if len(text) > limit:
        out.append("...")
    return "".join(out)


def tlsVersion(transport) -> str | None:
    """
    The negotiated TLS version of C{transport} (e.g. C{"TLSv1.3"}), or
    None when it is not a TLS transport or the handshake is not done.
    """
    described = describeTLS(transport)
    if described is None:
        return None
    version = described["version"]
    if not version or version == "Unknown":
        return None
    return version


def describeLost(reason: Failure, handshaking: bool = False) -> str:
    """
    One line saying why a backend connection was lost before the relay
    (during a STARTTLS handshake, such as a certificate that does not
    verify, in L{describeVerifyFailure}'s words).
    """
    if handshaking:
        return describeVerifyFailure(reason)
    message = tlsFailureText(reason) or reason.getErrorMessage().strip().rstrip(".") or reason.type.__name__
    return "connection lost: " + message.splitlines()[0]
