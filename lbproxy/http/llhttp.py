"""
llhttp (through httptools), as the parsers use it: the syntax check of a
header block, the field lines it splits, and the method a request starts
with.
"""

from __future__ import annotations

import re

import httptools

from lbproxy.http.errors import HTTPParseError
from lbproxy.http.heads import SPECIAL
from lbproxy.http.message import FieldEntry
from lbproxy.http.syntax import isToken

#: The bytes a method may start with, up to its longest length.
_METHOD_CHARS = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{0,64}+")
_MAX_METHOD = 64
#: Why a request starting with a TLS record (handshake type 0x16, version
#: 3.x) is refused: a client speaking TLS to a plaintext port.
TLS_ON_PLAINTEXT = "TLS handshake on a plaintext HTTP listener"


class FieldCollector:
    """
    The callback object httptools calls; its method names are the ones
    httptools looks up.

    Only header fields are collected, as they come: the request or status
    line is parsed from the raw head, so no URL or status callbacks are
    needed, and the field count is checked once the block is complete (the
    block's size limit already bounds it while it grows).

    @ivar items: the fields, with the values' trailing whitespace removed
        (llhttp removes the leading whitespace only).
    @ivar special: those of L{items} that the framing and routing checks
        look at (L{lbproxy.http.heads.SPECIAL}), so that they need not go
        over every field again.
    """

    __slots__ = ("items", "special", "complete")

    def __init__(self) -> None:
        self.items: list[FieldEntry] = []
        self.special: list[FieldEntry] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        item = (lowered, name, value.rstrip(b" \t"))
        self.items.append(item)
        if lowered in SPECIAL:
            self.special.append(item)

    def on_headers_complete(self) -> None:
        self.complete = True


def llhttpError(error: httptools.HttpParserError, status: int) -> HTTPParseError:
    """
    The L{HTTPParseError} for an error raised by llhttp: ours when one of
    our callbacks raised it, else llhttp's fixed description.
    """
    context = error.__context__
    if isinstance(context, HTTPParseError):
        return context
    description = str(error) or "malformed message"
    return HTTPParseError(status, f"malformed message: {description}")


def checkMethodStart(buf: bytes, pos: int, end: int) -> None:
    """
    Refuse the start C{buf[pos:end]} of a request unless it can begin with a
    method: up to 64 token characters, then SP. Refused at the first byte
    that cannot be part of one, whatever follows.

    @raise HTTPParseError: 400.
    """
    stop = pos + _MAX_METHOD + 1
    if stop > end:
        stop = end
    after = _METHOD_CHARS.match(buf, pos, stop).end()
    if after == stop:
        if after - pos <= _MAX_METHOD:
            # Token characters so far: wait for the rest.
            return
    elif after > pos and buf[after] == 32:
        return
    if buf[pos] == 0x16 and (end - pos < 2 or buf[pos + 1] == 3):
        raise HTTPParseError(400, TLS_ON_PLAINTEXT)
    raise HTTPParseError(400, "invalid method")


def methodComplete(buf: bytes, pos: int, end: int) -> bool:
    """
    Whether the method a request starts with at C{buf[pos:end]} is complete
    (or too long to be one), so that llhttp may be fed: an unknown method
    then gets the same answer however the bytes were split.
    """
    return buf.find(b" ", pos, end) >= 0 or end - pos > _MAX_METHOD


def unknownMethod(buf: bytes, pos: int) -> HTTPParseError:
    """
    The error for the method llhttp refused at C{buf[pos:]}: llhttp knows
    every registered method, so a well-formed other token is a method this
    server does not implement (501, RFC 9110 §9.1); anything else is 400.
    """
    space = buf.find(b" ", pos, pos + _MAX_METHOD)
    if space > pos and isToken(buf[pos:space]):
        return HTTPParseError(501, "method not implemented")
    return HTTPParseError(400, "invalid method")
