"""
Credentials a mail client logs in with, and the SASL PLAIN mechanism
(RFC 4616) both fronts accept.
"""

from __future__ import annotations

import binascii
from base64 import b64decode, b64encode
from dataclasses import dataclass


class SASLError(ValueError):
    """
    A SASL response that cannot be decoded; the text says why (and never
    contains the response).
    """


@dataclass(frozen=True, repr=False)
class Credentials:
    """
    One login attempt's credentials, as the client sent them.

    @ivar user: the user name bytes (the authentication identity for SASL
        PLAIN); replayed to the server unchanged.
    @ivar password: the password bytes; never logged (C{repr} hides it).
    @ivar authzid: SASL PLAIN's authorization identity, or empty.
    @ivar mechanism: C{"LOGIN"} (IMAP LOGIN, POP3 USER/PASS) or
        C{"PLAIN"} (AUTHENTICATE/AUTH PLAIN): the backend dialog replays
        the login the same way when the server allows it.
    """

    user: bytes
    password: bytes
    authzid: bytes = b""
    mechanism: str = "LOGIN"

    def __repr__(self) -> str:
        return f"<Credentials {self.mechanism} user={self.user!r}>"

    def plainResponse(self) -> bytes:
        """
        The base64 SASL PLAIN response carrying these credentials (C{=}
        for an empty one is the caller's business: this is never empty).
        """
        return encodePlain(self.authzid, self.user, self.password)


def decodeBase64(data: bytes) -> bytes:
    """
    Decode a base64 SASL response strictly (RFC 4648: no whitespace, no
    characters outside the alphabet, correct padding).

    @raise SASLError: when C{data} is not valid base64.
    """
    try:
        return b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("invalid base64") from None


def decodePlain(data: bytes) -> Credentials:
    """
    Decode a base64 PLAIN response, C{authzid NUL authcid NUL passwd}.

    @param data: the base64 text, or C{b"="} for an empty response (which
        is refused: PLAIN needs an authcid and a password).
    @raise SASLError: for invalid base64, a message without exactly two
        NULs, an empty authcid, or a field that is not UTF-8.
    """
    if data == b"=":
        raise SASLError("empty PLAIN response")
    message = decodeBase64(data)
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SASLError("PLAIN response is not authzid NUL authcid NUL password")
    authzid, authcid, password = parts
    if not authcid:
        raise SASLError("PLAIN response has an empty authentication identity")
    for field in (authzid, authcid, password):
        try:
            field.decode("utf-8")
        except UnicodeDecodeError:
            raise SASLError("PLAIN response field is not UTF-8") from None
    return Credentials(authcid, password, authzid, "PLAIN")


def encodePlain(authzid: bytes, authcid: bytes, password: bytes) -> bytes:
    """
    The base64 PLAIN response for the three fields.
    """
    return b64encode(b"\0".join((authzid, authcid, password)))
