"""
What request and response parsing share (L{lbproxy.http.parser}):
buffering, pausing, the framing of header blocks and their limits, the
strict path and the head cache in front of it, the delivery of heads and
(with L{lbproxy.http.bodies}) of bodies.
"""

from __future__ import annotations

import re
import types

import httptools
from zope.interface import implementer

from lbproxy.http.bodies import (
    _CHUNK_DATA,
    _CHUNK_END,
    _CHUNK_LINE,
    _CLOSED,
    _COMPLETE,
    _DETACHED,
    _FAILED,
    _HEAD,
    _LENGTH,
    _TRAILERS,
    _TUNNEL,
    _UNTIL_CLOSE,
    _UPGRADE,
    BodySteps,
)
from lbproxy.http.errors import HTTPParseError
from lbproxy.http.headcache import HeadCache
from lbproxy.http.heads import SPECIAL, FramingFields, RequestRecord, ResponseRecord
from lbproxy.http.interfaces import IHTTPMessageParser, IHTTPMessageReceiver
from lbproxy.http.llhttp import FieldCollector, llhttpError
from lbproxy.http.message import BodyKind, RequestHead, ResponseHead

def _ownCopy(function):
    """
    A copy of C{function} with a code object of its own (see
    L{MessageParser.__init_subclass__}).
    """
    return types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )


#: Empty lines before a message (RFC 9112 §2.2).
_EMPTY_LINES = re.compile(rb"(?:\r\n)++")


@implementer(IHTTPMessageParser)
class MessageParser(BodySteps):
    """
    What request and response parsing share: buffering, pausing, header
    block framing and limits, and (with L{BodySteps}) body delimiting and
    chunked decoding.

    Subclasses set C{_parserFactory} and the error statuses, and provide
    C{_buildRecord}, C{_newHead}, C{_plainHead} and C{_afterMessage}; they
    may extend C{_beginMessage}.

    @ivar error: the L{HTTPParseError} the parser failed with, if any; it
        discards everything received afterwards.

    A parser lives as long as its connection, idle ones included: its
    attributes are slots, it holds no list of pending data until data must
    wait, and it lets go of a message's head once the next message may
    begin.
    """

    __slots__ = (
        "_receiver",
        "_cache",
        "_maxLineBytes",
        "_maxHeaderBytes",
        "_maxHeaders",
        "_maxBodySize",
        "_maxChunkLineBytes",
        "_maxBufferedBytes",
        "_buf",
        "_pos",
        "_pending",
        "_pendingBytes",
        "_state",
        "_inHead",
        "_leading",
        "_fedBytes",
        "_scanFrom",
        "_lineEnd",
        "_llhttp",
        "_callbacks",
        "_head",
        "_remaining",
        "_bodyBytes",
        "paused",
        "_processing",
        "_eof",
        "error",
    )

    _errorStatus = 400
    _lineTooLongStatus = 414
    _headTooLargeStatus = 431
    _bodyTooLargeStatus = 413
    _parserFactory = httptools.HttpRequestParser

    def __init_subclass__(cls, **kwargs) -> None:
        """
        Give each parser class its own copy of the methods it shares with
        the other (those it does not define itself).

        CPython specializes each instruction of a code object for the
        types it meets, and starts over when it meets others: with one
        copy, the request parsers and the response parsers of a process
        would take turns running the same code on their own attributes
        and heads, and it would keep starting over.
        """
        super().__init_subclass__(**kwargs)
        copies = {}
        for base in (MessageParser, BodySteps):
            for name, value in vars(base).items():
                if name in vars(cls) or name in copies:
                    continue
                if isinstance(value, types.FunctionType):
                    copies[name] = _ownCopy(value)
                elif isinstance(value, property):
                    copies[name] = property(_ownCopy(value.fget), doc=value.__doc__)
        for name, value in copies.items():
            setattr(cls, name, value)
        cls._steps = {
            state: getattr(cls, step.__name__) for state, step in MessageParser._steps.items()
        }

    def __init__(
        self,
        receiver: IHTTPMessageReceiver,
        *,
        maxLineBytes: int,
        maxHeaderBytes: int,
        maxHeaders: int,
        maxBodySize: int | None,
        maxChunkLineBytes: int,
        maxBufferedBytes: int,
        cache: HeadCache | None,
    ) -> None:
        self._receiver = receiver
        self._cache = cache
        self._maxLineBytes = maxLineBytes
        self._maxHeaderBytes = maxHeaderBytes
        self._maxHeaders = maxHeaders
        self._maxBodySize = maxBodySize
        self._maxChunkLineBytes = maxChunkLineBytes
        self._maxBufferedBytes = maxBufferedBytes
        self._buf = b""
        self._pos = 0
        # Data received while earlier data waits; None when there is none.
        self._pending: list[bytes] | None = None
        self._pendingBytes = 0
        self._state = _HEAD
        self._inHead = False
        #: Bytes of empty lines skipped before the next message.
        self._leading = 0
        self._fedBytes = 0
        self._scanFrom = 0
        self._lineEnd = -1
        self._llhttp = None
        self._callbacks: FieldCollector | None = None
        self._head: RequestHead | ResponseHead | None = None
        self._remaining = 0
        self._bodyBytes = 0
        #: Whether delivery of events is suspended (a plain attribute: the
        #: front reads it after every chunk).
        self.paused = False
        self._processing = False
        self._eof = False
        self.error: HTTPParseError | None = None

    # -- public interface ---------------------------------------------------

    @property
    def idle(self) -> bool:
        # Nothing buffered: bufferedBytes written out (checked after each
        # keep-alive response).
        return (
            self._state == _HEAD
            and not self._inHead
            and not (len(self._buf) - self._pos + self._pendingBytes)
        )

    @property
    def bufferedBytes(self) -> int:
        """
        Bytes received but not parsed yet (while paused, or a partial head or
        chunk line).
        """
        return len(self._buf) - self._pos + self._pendingBytes

    def dataReceived(self, data: bytes) -> None:
        state = self._state
        if state == _FAILED or state == _CLOSED or not data:
            return
        if state == _DETACHED:
            raise ValueError("the parser was detached for a tunnel")
        if self.paused:
            # Kept aside until a step needs more bytes, so that data piling
            # up while paused is not copied again with every arrival.
            self._hold(data)
            self._pendingBytes += len(data)
            if self.bufferedBytes > self._maxBufferedBytes:
                self._fail(HTTPParseError(self._errorStatus, "too much data while paused"))
            return
        if self._pos >= len(self._buf) and not self._pending and not self._processing:
            # Everything before was parsed: the data is the buffer.
            self._buf = data
            self._pos = 0
        else:
            self._hold(data)
            self._pendingBytes += len(data)
        self._process()

    def _hold(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [data]
        else:
            pending.append(data)

    def connectionLost(self) -> None:
        if self._state in (_FAILED, _CLOSED, _DETACHED):
            return
        self._eof = True
        if not self.paused:
            self._process()

    def pauseParsing(self) -> None:
        self.paused = True

    def resumeParsing(self) -> None:
        if self._state == _TUNNEL:
            return
        if self._state == _UPGRADE:
            if self._head.keepAlive:
                self._state = _HEAD
            else:
                self._closeQuietly()
        self.paused = False
        if (
            self._state == _HEAD
            and not self._inHead
            and not self._processing
            and not self._pending
            and not self._eof
            and self._pos >= len(self._buf)
        ):
            # Nothing waits: the next read starts the next message.
            return
        self._process()

    def wholeMessage(self, data: bytes) -> tuple[RequestHead | ResponseHead, bytes] | None:
        """
        Take C{data} at once when nothing waits in the parser and C{data}
        is exactly one whole message, with a head the strict path accepts
        (or accepted before: its record is in the cache, and within this
        parser's limits), after which HTTP goes on by itself: a request
        that asks for no upgrade and is not CONNECT, a final response that
        opens no tunnel. Nearly every message of a keep-alive connection
        is one; taking it in one step costs less than the events of
        L{dataReceived}, with the same head.

        On success the parser is where it would be after delivering the
        message, and the caller handles it as a receiver would (pausing
        the parser until a request is answered).

        @return: the head and the whole body (C{b""} for none); or L{None},
            when nothing was consumed: feed C{data} to L{dataReceived}
            (which refuses what the strict path refuses).
        """
        if (
            self._state != _HEAD
            or self.paused
            or self._pos < len(self._buf)
            or self._inHead
            or self._pending
            or self._processing
        ):
            return None
        headEnd = data.find(b"\r\n\r\n") + 4
        if headEnd < 4 or headEnd > self._maxHeaderBytes:
            return None
        key = data if headEnd == len(data) else data[:headEnd]
        cache = self._cache
        record = None
        if cache is not None:
            # Looked up as an attribute, then called: a method lookup of an
            # instance attribute takes CPython's slow path.
            find = cache.find
            record = find(key)
        # What the cache learns of the head once it is taken: nothing (it
        # held the record), the head (built from known field lines), or
        # the head and its field lines (parsed by the strict path).
        learn = 0
        if (
            record is None
            or record.lineBytes > self._maxLineBytes - self._leading
            or record.fieldCount > self._maxHeaders
        ):
            try:
                record = self._fromParts(data, 0, headEnd) if cache is not None else None
                learn = 1
                if record is None:
                    callbacks = FieldCollector()
                    llhttp = self._parserFactory(callbacks)
                    record = self._parseHead(data, 0, headEnd, llhttp, callbacks, 0)
                    learn = 2
            except HTTPParseError:
                return None
        head = self._plainHead(record)
        if head is None:
            return None
        length = len(data) - headEnd
        kind = head.bodyKind
        if kind is BodyKind.NONE:
            if length:
                return None
        elif (
            kind is not BodyKind.LENGTH
            or length != head.contentLength
            or (self._maxBodySize is not None and length > self._maxBodySize)
        ):
            return None
        if learn and cache is not None:
            cache.add(key, record)
            if learn == 2:
                cache.addLines(key, record)
        self._leading = 0
        self._head = head
        self._messageEnded(head)
        return head, data[headEnd:] if length else b""

    def detachTunnel(self) -> bytes:
        if self._state not in (_UPGRADE, _TUNNEL):
            raise ValueError("no tunnel was opened")
        self._merge()
        rest = self._buf
        self._buf = b""
        self._pos = 0
        self._state = _DETACHED
        return rest

    # -- processing loop ----------------------------------------------------

    def _fail(self, error: HTTPParseError) -> None:
        self.error = error
        self._state = _FAILED
        self._discard()
        self._llhttp = None
        raise error

    def _discard(self) -> None:
        self._buf = b""
        self._pos = 0
        self._pending = None
        self._pendingBytes = 0

    def _merge(self) -> None:
        """
        Make the unparsed bytes and the pending data one buffer, starting at
        position 0. Positions kept relative to the start of a header block
        stay valid, since the block starts at the current position.
        """
        pending = self._pending or []
        if self._pos < len(self._buf):
            pending.insert(0, self._buf[self._pos :] if self._pos else self._buf)
        if len(pending) == 1:
            self._buf = pending[0]
        else:
            self._buf = b"".join(pending)
        self._pos = 0
        self._pending = None
        self._pendingBytes = 0

    def _process(self) -> None:
        if self._processing:
            # Called from a receiver callback: the running loop goes on.
            return
        self._processing = True
        steps = self._steps
        try:
            while not self.paused:
                if self._pending:
                    self._merge()
                if not steps[self._state](self) and not self._pending:
                    break
        except HTTPParseError as error:
            self._fail(error)
        finally:
            self._processing = False

    def _truncated(self, where: str) -> HTTPParseError:
        return HTTPParseError(self._errorStatus, f"connection closed {where}")

    # -- header block -------------------------------------------------------

    def _stepHead(self) -> bool:
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if not self._inHead:
            if buf.startswith(b"\r\n", pos):
                pos = self._skipEmptyLines(buf, pos, end)
            self._pos = pos
            if pos >= end or (end - pos == 1 and buf[pos] == 13):
                if self._eof:
                    if pos < end:
                        raise self._truncated("before a message")
                    self._closeQuietly()
                return False
            self._beginMessage()
            crlfcrlf = buf.find(b"\r\n\r\n", pos)
            if crlfcrlf >= 0 and crlfcrlf + 4 - pos <= self._maxHeaderBytes:
                # The whole head arrived at once (the common case).
                headEnd = crlfcrlf + 4
                cache = self._cache
                if cache is not None:
                    key = buf if pos == 0 and headEnd == end else buf[pos:headEnd]
                    record = self._cached(key)
                    if record is None:
                        record = self._fromParts(buf, pos, headEnd)
                        if record is not None:
                            cache.add(key, record)
                    if record is not None:
                        return self._deliverHead(self._newHead(record), headEnd)
                self._checkStart(buf, pos, end)
                callbacks = FieldCollector()
                llhttp = self._parserFactory(callbacks)
                return self._headReceived(buf, pos, headEnd, llhttp, callbacks, 0)
            self._checkStart(buf, pos, end)
            callbacks = FieldCollector()
            self._callbacks = callbacks
            self._llhttp = self._parserFactory(callbacks)
            self._inHead = True
            self._fedBytes = 0
            self._scanFrom = 0
            self._lineEnd = -1
        elif not self._fedBytes:
            # The method was incomplete at the last read.
            self._checkStart(buf, pos, end)
        limit = self._maxHeaderBytes
        crlfcrlf = buf.find(b"\r\n\r\n", pos + self._scanFrom)
        if crlfcrlf < 0 or crlfcrlf + 4 - pos > limit:
            available = end - pos
            if self._lineEnd < 0:
                maxLine = self._maxLineBytes - self._leading
                lineEnd = buf.find(b"\r\n", pos + max(0, self._fedBytes - 1), pos + maxLine + 2)
                if lineEnd >= 0:
                    self._lineEnd = lineEnd - pos
                elif available >= maxLine + 2:
                    raise HTTPParseError(self._lineTooLongStatus, "start line too long")
            if crlfcrlf >= 0 or available >= limit:
                raise HTTPParseError(self._headTooLargeStatus, "header block too large")
            if self._eof:
                raise self._truncated("in the header block")
            # Feed what there is, so that llhttp rejects garbage early.
            if self._fedBytes or self._readyToFeed(buf, pos, end):
                self._feed(self._llhttp, buf, pos, pos + self._fedBytes, end)
                self._fedBytes = available
            self._scanFrom = max(0, available - 3)
            return False
        llhttp = self._llhttp
        callbacks = self._callbacks
        self._inHead = False
        self._llhttp = None
        self._callbacks = None
        return self._headReceived(buf, pos, crlfcrlf + 4, llhttp, callbacks, self._fedBytes)

    def _cached(self, head: bytes) -> RequestRecord | ResponseRecord | None:
        """
        The record of the header block C{head} when it was accepted before
        and is within this parser's limits (those left by empty lines
        before it included); else L{None}, and it is parsed.
        """
        record = self._cache.find(head)
        if (
            record is not None
            and record.lineBytes <= self._maxLineBytes - self._leading
            and record.fieldCount <= self._maxHeaders
        ):
            return record
        return None

    def _headReceived(
        self,
        buf: bytes,
        pos: int,
        headEnd: int,
        llhttp,
        callbacks: FieldCollector,
        fedBytes: int,
    ) -> bool:
        """
        The header block C{buf[pos:headEnd]} is complete, its first
        C{fedBytes} bytes already given to C{llhttp}: check it, keep its
        record in the cache and deliver it.
        """
        record = self._parseHead(buf, pos, headEnd, llhttp, callbacks, fedBytes)
        cache = self._cache
        if cache is not None:
            key = buf if pos == 0 and headEnd == len(buf) else buf[pos:headEnd]
            cache.add(key, record)
            cache.addLines(key, record)
        return self._deliverHead(self._newHead(record), headEnd)

    def _fromParts(
        self, buf: bytes, pos: int, headEnd: int
    ) -> RequestRecord | ResponseRecord | None:
        """
        The record of the complete header block C{buf[pos:headEnd]} built
        from its parts, when the cache holds the entry of each of its field
        lines (each accepted by llhttp in a head before): llhttp checks the
        start line alone, the builder the rest, within this parser's
        limits. L{None} when a field line is not known (or a limit is
        passed): the strict path parses the block.

        @raise HTTPParseError: the start line, or what the builder
            checks, is refused.
        """
        lineEnd = buf.find(b"\r\n", pos, headEnd)
        if lineEnd - pos > self._maxLineBytes - self._leading:
            return None
        lines = buf[lineEnd + 2 : headEnd - 4].split(b"\r\n") if lineEnd + 4 < headEnd else []
        if len(lines) > self._maxHeaders:
            return None
        items = list(map(self._cache.findLine, lines))
        if None in items:
            return None
        startLine = buf[pos : lineEnd + 2] + b"\r\n"
        callbacks = FieldCollector()
        self._feed(self._parserFactory(callbacks), startLine, 0, 0, len(startLine))
        if not callbacks.complete:
            raise HTTPParseError(self._errorStatus, "malformed start line")
        special = [item for item in items if item[0] in SPECIAL]
        return self._buildRecord(buf, pos, lineEnd, FramingFields(items, special, self._errorStatus))

    def _parseHead(
        self,
        buf: bytes,
        pos: int,
        headEnd: int,
        llhttp,
        callbacks: FieldCollector,
        fedBytes: int,
    ) -> RequestRecord | ResponseRecord:
        """
        The strict path: check the complete header block
        C{buf[pos:headEnd]}, its first C{fedBytes} bytes already given to
        C{llhttp}, within this parser's limits, and build its record.

        @raise HTTPParseError: the block is refused.
        """
        self._feed(llhttp, buf, pos, pos + fedBytes, headEnd)
        if not callbacks.complete:
            raise HTTPParseError(self._errorStatus, "malformed header block")
        lineEnd = buf.find(b"\r\n", pos, headEnd)
        if lineEnd - pos > self._maxLineBytes - self._leading:
            raise HTTPParseError(self._lineTooLongStatus, "start line too long")
        if len(callbacks.items) > self._maxHeaders:
            raise HTTPParseError(self._headTooLargeStatus, "too many header fields")
        fields = FramingFields(callbacks.items, callbacks.special, self._errorStatus)
        return self._buildRecord(buf, pos, lineEnd, fields)

    def _deliverHead(self, head: RequestHead | ResponseHead, headEnd: int) -> bool:
        """
        Hand C{head}, whose header block ends at C{headEnd}, to the
        receiver and read its body: a body over the size limit is refused
        before any of it is delivered when its length is known.
        """
        kind = head.bodyKind
        if kind is BodyKind.LENGTH:
            length = head.contentLength
            if self._maxBodySize is not None and length > self._maxBodySize:
                raise HTTPParseError(self._bodyTooLargeStatus, "body too large")
            if length:
                self._remaining = length
                state = _LENGTH
            else:
                state = _COMPLETE
        elif kind is BodyKind.CHUNKED:
            state = _CHUNK_LINE
        elif kind is BodyKind.UNTIL_CLOSE:
            state = _UNTIL_CLOSE
        else:
            state = _COMPLETE
        self._state = state
        self._leading = 0
        self._pos = headEnd
        self._head = head
        self._bodyBytes = 0
        self._receiver.headersComplete(head)
        return True

    def _buildRecord(
        self, buf: bytes, start: int, lineEnd: int, fields: FramingFields
    ) -> RequestRecord | ResponseRecord:
        """
        What the header block at C{buf[start:]}, with a start line ending
        at C{lineEnd} and C{fields}, means.
        """
        raise NotImplementedError()

    def _newHead(self, record: RequestRecord | ResponseRecord) -> RequestHead | ResponseHead:
        """
        A head for the next message, from its C{record}.
        """
        raise NotImplementedError()

    def _plainHead(
        self, record: RequestRecord | ResponseRecord
    ) -> RequestHead | ResponseHead | None:
        """
        What L{_newHead} gives, for a message after which HTTP goes on by
        itself (see L{wholeMessage}); L{None} for any other.
        """
        raise NotImplementedError()

    def _feed(self, llhttp, buf: bytes, pos: int, start: int, end: int) -> None:
        """
        Give C{llhttp} the bytes C{buf[start:end]} of the head at C{pos}.
        """
        if start >= end:
            return
        data = buf if start == 0 and end == len(buf) else memoryview(buf)[start:end]
        try:
            llhttp.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp stops at the end of an upgrade or CONNECT head, which is
            # where this feed ends anyway; the framing is decided here.
            pass
        except httptools.HttpParserInvalidMethodError:
            raise self._unknownMethod(buf, pos) from None
        except httptools.HttpParserError as error:
            raise llhttpError(error, self._errorStatus) from None

    def _skipEmptyLines(self, buf: bytes, pos: int, end: int) -> int:
        """
        Skip the empty lines at C{buf[pos:end]}, counting their bytes
        against the start-line limit of the message that follows (RFC 9112
        §2.2 asks to ignore at least one, not any number); return where
        they end.
        """
        budget = self._maxLineBytes - self._leading
        stop = pos + budget + 2
        after = _EMPTY_LINES.match(buf, pos, stop if stop < end else end).end()
        self._leading += after - pos
        if self._leading > self._maxLineBytes:
            raise HTTPParseError(self._errorStatus, "too many empty lines before the start line")
        return after

    def _checkStart(self, buf: bytes, pos: int, end: int) -> None:
        """
        Refuse the beginning C{buf[pos:end]} of a message as soon as it
        cannot start one (the request parser checks the method).
        """

    def _beginMessage(self) -> None:
        """
        The first byte of a message arrived. The response parser refuses
        bytes that answer no request here.
        """

    def _readyToFeed(self, buf: bytes, pos: int, end: int) -> bool:
        """
        Whether a partial head C{buf[pos:end]} may be given to llhttp yet.
        """
        return True

    def _unknownMethod(self, buf: bytes, pos: int) -> HTTPParseError:
        return HTTPParseError(self._errorStatus, "invalid method")

    def _closeQuietly(self) -> None:
        self._state = _CLOSED
        self._discard()

    def _stepComplete(self) -> bool:
        self._messageEnded(self._head)
        self._receiver.messageComplete()
        return True

    def _messageEnded(self, head: RequestHead | ResponseHead) -> None:
        """
        The message of C{head} is complete: what follows (L{_afterMessage});
        the head is let go of unless a tunnel or an upgrade still needs it.
        """
        self._afterMessage(head)
        if self._state != _UPGRADE and self._state != _TUNNEL:
            self._head = None

    def _stepStopped(self) -> bool:
        return False

    def _afterMessage(self, head: RequestHead | ResponseHead) -> None:
        """
        Choose what follows the complete message of C{head}, before the
        receiver hears of its completion: the next message when the
        connection persists (anything after a message that closes it is
        ignored), or a pause for a tunnel.
        """
        raise NotImplementedError()

    _steps = {
        _HEAD: _stepHead,
        _LENGTH: BodySteps._stepLength,
        _CHUNK_LINE: BodySteps._stepChunkLine,
        _CHUNK_DATA: BodySteps._stepChunkData,
        _CHUNK_END: BodySteps._stepChunkEnd,
        _TRAILERS: BodySteps._stepTrailers,
        _UNTIL_CLOSE: BodySteps._stepUntilClose,
        _COMPLETE: _stepComplete,
        _UPGRADE: _stepStopped,
        _TUNNEL: _stepStopped,
        _CLOSED: _stepStopped,
        _DETACHED: _stepStopped,
        _FAILED: _stepStopped,
    }
