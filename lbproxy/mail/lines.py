"""
Line and byte-count reading for both sides of a mail session before the
relay: the client's commands and the server's answers.
"""

from __future__ import annotations


class LineBuffer:
    """
    Line and byte-count reading over a buffer.

    Subclasses define C{lineReceived(line)} and C{_lineOverflow()}, and set
    C{maxLine} (CRLF included) before data arrives. Delivery stops while
    C{_holding} (a login is being placed or answered) or C{_blocked} (the
    peer does not read what it is answered) is true, and resumes with
    L{_deliver}.

    The buffer is a C{bytearray}: removing a delivered line from its front
    costs nothing however much follows it, so a read of many short lines
    is taken apart in time proportional to its size.
    """

    maxLine = 8192

    def _initBuffer(self) -> None:
        self._buffer = bytearray()
        self._want: int | None = None
        self._wantCallback = None
        self._holding = False
        self._blocked = False
        self._delivering = False
        self._stopped = False

    def readBytes(self, count: int, callback) -> None:
        """
        Deliver the next C{count} bytes to C{callback} (one call, with all
        of them) instead of as lines: an IMAP literal.
        """
        self._want = count
        self._wantCallback = callback

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        self._deliver()

    def _deliver(self) -> None:
        if self._delivering:
            return
        self._delivering = True
        buffer = self._buffer
        try:
            while not (self._holding or self._blocked or self._stopped) and buffer:
                want = self._want
                if want is not None:
                    if len(buffer) < want:
                        return
                    chunk = bytes(buffer[:want])
                    del buffer[:want]
                    callback = self._wantCallback
                    self._want = self._wantCallback = None
                    callback(chunk)
                    continue
                end = buffer.find(b"\n", 0, self.maxLine)
                if end < 0:
                    if len(buffer) >= self.maxLine:
                        self._stopped = True
                        self._lineOverflow()
                    return
                line = bytes(buffer[: end - 1 if end and buffer[end - 1] == 13 else end])
                del buffer[: end + 1]
                self.lineReceived(line)
        finally:
            self._delivering = False

    def _takeBuffer(self) -> bytes:
        """
        Remove and return what is buffered but not delivered.
        """
        rest = bytes(self._buffer)
        del self._buffer[:]
        return rest
