"""
What a mail client sends before login that lbproxy passes on to a store:
the checks each value passes first.

lbproxy routes a login on the user name it parsed, and the store
authenticates the name it receives. The two must be the same name: a
store that cuts a name at a NUL (C{alice\\0x} becomes C{alice}) would log
in a user lbproxy placed as someone else, on the wrong store or outside
its C{user_pools} entry. So a user name (and a SASL authorization
identity) with a control character, in whatever syntax it came (IMAP
atom, quoted string, literal, SASL PLAIN, POP3 USER), is refused before
any store sees it, and so is a name longer than the listener's
C{limits.user}, which a store would refuse in its own way (Dovecot's
login processes drop a client whose command parameters pass about 1 KiB).
A password may hold any character but NUL: stores cut it there too, and
SASL PLAIN, in which lbproxy may replay it, cannot carry one.
"""

from __future__ import annotations

from lbproxy.mail.sasl import Credentials


def asText(value: bytes) -> str:
    """
    C{value} as the session reads a user name: UTF-8, or Latin-1 when it
    is not valid UTF-8.
    """
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def hasControl(value: bytes) -> bool:
    """
    Whether C{value} holds a control character: C0 (NUL to US), DEL, or
    C1 (U+0080 to U+009F, in UTF-8 or as Latin-1 bytes).
    """
    return any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in asText(value))


def loginRefusal(credentials: Credentials, maxUser: int) -> str | None:
    """
    Why C{credentials} must not be passed to a store, in words for the
    log (never quoting the password), or None when they may.

    @param maxUser: the longest user name (and authorization identity)
        accepted, in bytes.
    """
    for name, value in (("user name", credentials.user), ("authorization identity", credentials.authzid)):
        if hasControl(value):
            return f"the {name} contains a control character"
        if len(value) > maxUser:
            return f"the {name} is {len(value)} bytes long, over limits.user ({maxUser})"
    if b"\0" in credentials.password:
        return "the password contains a NUL"
    return None
