"""
Reading a message's body out of a parser's buffer: a known length, chunked
(decoded by a strict decoder, trailer section included), or everything
until the connection closes.

The parser states are named here too: each names the step of
L{lbproxy.http.parser} that runs next.
"""

from __future__ import annotations

from lbproxy.http.errors import HTTPParseError
from lbproxy.http.message import Headers
from lbproxy.http.syntax import CHUNK_LINE, FIELD_LINE

_HEAD = "head"
_LENGTH = "length"
_CHUNK_LINE = "chunk-line"
_CHUNK_DATA = "chunk-data"
_CHUNK_END = "chunk-end"
_TRAILERS = "trailers"
_UNTIL_CLOSE = "until-close"
_COMPLETE = "complete"
_UPGRADE = "upgrade"
_TUNNEL = "tunnel"
_CLOSED = "closed"
_DETACHED = "detached"
_FAILED = "failed"


class BodySteps:
    """
    The steps that read a body, part of the parsers of
    L{lbproxy.http.parser}, whose buffer, limits and error statuses they
    use: each takes what it can from C{_buf} at C{_pos}, passes the body
    to C{_receiver} as it arrives (never buffered whole), sets C{_state}
    to the step that follows, and returns whether it made progress.
    C{_remaining} is what is left of a length or a chunk, C{_bodyBytes}
    what was read of a body whose size is not known up front (checked
    against C{_maxBodySize}), and C{_eof} whether the peer closed.
    """

    __slots__ = ()

    def _deliver(self, count: int) -> None:
        """
        Pass the next C{count} buffered bytes to the receiver.
        """
        buf = self._buf
        pos = self._pos
        self._pos = pos + count
        if pos == 0 and count == len(buf):
            self._receiver.bodyData(buf)
        else:
            self._receiver.bodyData(buf[pos : pos + count])

    def _stepLength(self) -> bool:
        available = len(self._buf) - self._pos
        if not available:
            if self._eof:
                raise self._truncated("in the body")
            return False
        count = min(self._remaining, available)
        self._remaining -= count
        if not self._remaining:
            self._state = _COMPLETE
        self._deliver(count)
        return True

    def _stepChunkLine(self) -> bool:
        buf = self._buf
        pos = self._pos
        maxLine = self._maxChunkLineBytes
        newline = buf.find(b"\n", pos, pos + maxLine + 2)
        if newline < 0:
            if len(buf) - pos >= maxLine + 2:
                raise HTTPParseError(self._errorStatus, "chunk size line too long")
            if self._eof:
                raise self._truncated("in a chunk size line")
            return False
        if newline == pos or buf[newline - 1] != 13:
            raise HTTPParseError(self._errorStatus, "chunk size line not ended by CRLF")
        match = CHUNK_LINE.fullmatch(buf, pos, newline - 1)
        if match is None:
            raise HTTPParseError(self._errorStatus, "invalid chunk size line")
        size = int(match.group(1), 16)
        self._pos = newline + 1
        if not size:
            self._state = _TRAILERS
            return True
        self._bodyBytes += size
        if self._maxBodySize is not None and self._bodyBytes > self._maxBodySize:
            raise HTTPParseError(self._bodyTooLargeStatus, "body too large")
        self._remaining = size
        self._state = _CHUNK_DATA
        return True

    def _stepChunkData(self) -> bool:
        available = len(self._buf) - self._pos
        if not available:
            if self._eof:
                raise self._truncated("in chunk data")
            return False
        count = min(self._remaining, available)
        self._remaining -= count
        if not self._remaining:
            self._state = _CHUNK_END
        self._deliver(count)
        return True

    def _stepChunkEnd(self) -> bool:
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available >= 2:
            if buf[pos] != 13 or buf[pos + 1] != 10:
                raise HTTPParseError(self._errorStatus, "chunk data not followed by CRLF")
            self._pos = pos + 2
            self._state = _CHUNK_LINE
            return True
        if available == 1 and buf[pos] != 13:
            raise HTTPParseError(self._errorStatus, "chunk data not followed by CRLF")
        if self._eof:
            raise self._truncated("after chunk data")
        return False

    def _stepTrailers(self) -> bool:
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available >= 2 and buf[pos] == 13 and buf[pos + 1] == 10:
            self._pos = pos + 2
            self._state = _COMPLETE
            return True
        if available == 1 and buf[pos] == 13:
            if self._eof:
                raise self._truncated("in the trailer section")
            return False
        blockEnd = buf.find(b"\r\n\r\n", pos)
        if blockEnd < 0 or blockEnd + 4 - pos > self._maxHeaderBytes:
            if available >= self._maxHeaderBytes:
                raise HTTPParseError(self._headTooLargeStatus, "trailer section too large")
            if self._eof:
                raise self._truncated("in the trailer section")
            return False
        lines = buf[pos:blockEnd].split(b"\r\n")
        if len(lines) > self._maxHeaders:
            raise HTTPParseError(self._headTooLargeStatus, "too many trailer fields")
        items = []
        for line in lines:
            match = FIELD_LINE.fullmatch(line)
            if match is None:
                raise HTTPParseError(self._errorStatus, "malformed trailer field")
            name, value = match.groups()
            items.append((name.lower(), name, value))
        self._head.trailers = Headers._fromLowered(items)
        self._pos = blockEnd + 4
        self._state = _COMPLETE
        return True

    def _stepUntilClose(self) -> bool:
        available = len(self._buf) - self._pos
        if available:
            self._bodyBytes += available
            if self._maxBodySize is not None and self._bodyBytes > self._maxBodySize:
                raise HTTPParseError(self._bodyTooLargeStatus, "body too large")
            self._deliver(available)
            return True
        if self._eof:
            self._state = _COMPLETE
            return True
        return False

