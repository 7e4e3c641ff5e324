"""
The HTTP access log: one line per request, modelled on HAProxy's httplog.

Format (fields separated by one space; the last two are double-quoted)::

    CLIENT [ACCEPT] LISTENER POOL/SERVER TR/Tw/Tc/Tr/Ta STATUS BYTES_OUT BYTES_IN TERMCOOKIE "XFF" "REQUEST"

for example::

    127.0.0.1:53210 [28/Nov/2026:03:12:00.123] web web/web1 0/0/1/3/4 200 612 87 --NI "127.0.0.1" "GET /x HTTP/1.1"

Fields:
  - CLIENT: client address and port, C{host:port}; an IPv6 address is
    written in brackets (C{[::1]:53210}).
  - ACCEPT: when the proxy accepted the request (the connection, for the
    first request of a connection; the end of the previous response on a
    keep-alive connection), UTC, C{day/Mon/year:hour:min:sec.millis}.
  - LISTENER: the listener's name.
  - POOL/SERVER: the pool the request was routed to and the server that
    served it; C{<NOSRV>} when none did (refused request, no server
    available), C{-} as the pool when the request failed before routing.
  - TR/Tw/Tc/Tr/Ta: timers in milliseconds, C{-1} for a phase not reached:
    TR the time to receive the whole request head, Tw time waiting for a
    server (queue), Tc time to connect to the server, Tr time from the
    request sent to the response head received, Ta the total time from
    ACCEPT to the last byte sent to the client.
  - STATUS: the status sent to the client, C{-1} when none was.
  - BYTES_OUT: bytes sent to the client (head and body);
    BYTES_IN: bytes received from the client for this request.
  - TERMCOOKIE: always four characters, as in HAProxy's termination state: the
    first two say how the transaction ended (first: C{C} client aborted,
    C{S} server aborted or failed, C{P} the proxy refused it, C{R} out of a
    resource, C{c} client timeout, C{s} server timeout, C{-} normal end;
    second: the phase, C{R} waiting for the request, C{Q} queued, C{C}
    connecting, C{H} waiting for the response head, C{D} transferring data,
    C{L} sending the last bytes, C{T} in a tunnel, C{-} normal end); the
    last two are the persistence cookie outcome of
    L{lbproxy.http.persistence} (request side, response side; C{--} for a
    pool without cookie persistence).
  - XFF: the X-Forwarded-For value sent to the server, C{-} when none.
  - REQUEST: the request line C{METHOD TARGET HTTP/x.y}; C{<BADREQ>} when
    no request line was accepted.

Everything that comes from the client (XFF, the request line) is escaped:
bytes outside printable ASCII become C{\\xHH}, and C{"} and C{\\} are
written C{\\"} and C{\\\\}, so a line never holds raw control characters
and the quoted fields always end at their closing quote. The other fields
are escaped the same way (with a space as C{\\x20}) should they ever hold
such bytes.

With a file path the lines are appended to that file, which is opened once
(line-buffered); L{AccessLog.reopen} opens it again after log rotation.
Without one, each line is a twisted.logger event at level info, namespace
C{lbproxy.http.accesslog.AccessLog}: the line is its C{line}
(L{lbproxy.core.format.SESSION_LINE}), and its other keys are the fields
above (see L{AccessLog.fields}), so JSON log observers get them as
separate values.
"""

from __future__ import annotations

import re
import time
from typing import Any, NamedTuple, TextIO

from twisted.logger import Logger

from lbproxy.core.format import SESSION_LINE

#: Lines written to a file are buffered (one write system call per request
#: costs more than formatting the line) and reach the file at the latest
#: FLUSH_INTERVAL seconds later, when the buffer fills, or on close/reopen.
FILE_BUFFER = 65536
FLUSH_INTERVAL = 1.0

#: The line, as a format string over the keys of L{AccessLog.fields}.
LINE_FORMAT = (
    "{client} [{acceptDate}] {listener} {pool}/{server} "
    "{tr}/{tw}/{tc}/{tr_resp}/{ta} {status} {bytesOut} {bytesIn} "
    '{termination}{cookie} "{xff}" "{request}"'
)

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Printable ASCII except '"' and '\' stands for itself; everything else is
# escaped. Quoted fields keep spaces, bare fields escape them.
_QUOTED = {b: chr(b) for b in range(0x20, 0x7F)}
_QUOTED[0x22] = '\\"'
_QUOTED[0x5C] = "\\\\"
for _b in range(256):
    _QUOTED.setdefault(_b, f"\\x{_b:02x}")
_BARE = dict(_QUOTED)
_BARE[0x20] = "\\x20"
del _b


_PLAIN_QUOTED = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\x7e]*")
_PLAIN_BARE = re.compile(rb"[\x21\x23-\x5b\x5d-\x7e]*")
_PLAIN_CODE = re.compile(r"[A-Za-z0-9-]*")


def escape(value: bytes | str, quoted: bool = True) -> str:
    """
    C{value} with every byte outside printable ASCII written as C{\\xHH},
    and C{"} and C{\\} backslash-escaped (text is taken as UTF-8); with
    C{quoted=False} spaces are escaped too.
    """
    if isinstance(value, str):
        value = value.encode("utf-8")
    # Most values need no escaping: one scan instead of a table lookup per
    # byte (this runs several times per request).
    if (_PLAIN_QUOTED if quoted else _PLAIN_BARE).fullmatch(value) is not None:
        return value.decode("ascii")
    table = _QUOTED if quoted else _BARE
    return "".join([table[b] for b in value])


def formatAcceptTime(epoch: float) -> str:
    """
    C{28/Nov/2026:03:12:00.123} (UTC, milliseconds truncated).
    """
    millis = int(epoch * 1000)
    t = time.gmtime(millis // 1000)
    return "%02d/%s/%04d:%02d:%02d:%02d.%03d" % (
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
        millis % 1000,
    )


class AccessRecord(NamedTuple):
    """
    What the access log says about one request (see the module docstring
    for each field's meaning).

    A named tuple: one is made per request, and a tuple is built, and
    taken apart when the line is written, in fewer steps than an object
    with attributes.

    @ivar client: C{(host, port)} of the client.
    @ivar acceptTime: epoch seconds; L{None} stands for the time the record
        is logged.
    @ivar xff: the X-Forwarded-For value sent to the server, or L{None} /
        C{"-"} when none was.
    @ivar method: the request method, C{b""} when no request line was
        accepted; C{target} and C{version} likewise.
    """

    client: tuple[str, int]
    listener: str
    pool: str = "-"
    server: str = "<NOSRV>"
    acceptTime: float | None = None
    tr: int = -1
    tw: int = -1
    tc: int = -1
    tr_resp: int = -1
    ta: int = -1
    status: int = -1
    bytesOut: int = 0
    bytesIn: int = 0
    termination: str = "--"
    cookie: str = "--"
    xff: bytes | str | None = None
    method: bytes | str = b""
    target: bytes | str = b""
    version: tuple[int, int] | None = None


def _asBytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _formatClient(client: Any) -> str:
    host, port = client
    return f"{_formatHost(host)}:{port}"


def _formatRequest(request: tuple) -> str:
    """
    The escaped request line of C{(method, target, version)}.
    """
    method, target, version = request
    version = version or (1, 1)
    return escape(
        _asBytes(method) + b" " + _asBytes(target) + b" HTTP/%d.%d" % (version[0], version[1])
    )


def _formatHost(host: Any) -> str:
    host = escape(str(host), quoted=False)
    if ":" in host:
        host = f"[{host}]"
    return host


def _code(value: str, width: int) -> str:
    """
    A fixed-width code field: padded with C{-}, cut to C{width}, any
    character other than a visible ASCII letter, digit or C{-} shown as
    C{?}.
    """
    text = (value or "").ljust(width, "-")[:width]
    if _PLAIN_CODE.fullmatch(text) is not None:
        return text
    return "".join(c if c.isascii() and (c.isalnum() or c == "-") else "?" for c in text)


#: The line as a %-format over the same values as L{LINE_FORMAT}: what
#: L{AccessLog.log} writes to a file. Formatted pieces come as one value
#: each: the client with the opening bracket, the date with the closing
#: one, the listener, pool and server, and the end of the line from the
#: termination and cookie codes on, line end included.
_LINE_PERCENT = "%s%s%s %d/%d/%d/%d/%d %d %d %d%s"

#: Entries kept by each of the memo tables below before they are emptied:
#: client hosts, names and codes repeat from one request to the next,
#: but there is no bound on how many different ones a listener sees.
_MEMO_SIZE = 4096
#: Longer values (request targets, X-Forwarded-For) are escaped each time
#: rather than kept.
_MEMO_VALUE_SIZE = 256


class _Memo(dict):
    """
    The results of a one-argument function, by argument, for the few
    values that come back request after request.
    """

    __slots__ = ("_function",)

    def __init__(self, function) -> None:
        super().__init__()
        self._function = function

    def __missing__(self, key):
        if len(self) >= _MEMO_SIZE:
            self.clear()
        value = self[key] = self._function(key)
        return value


class AccessLog:
    """
    Writes L{AccessRecord}s as lines to a file, or as twisted.logger events.
    """

    logger = Logger()

    def __init__(self, path: str | None, reactor) -> None:
        """
        @param path: the file lines are appended to, or L{None} for
            twisted.logger events.
        @param reactor: provides the time for records without an accept
            time.
        @raise OSError: the file cannot be opened.
        """
        self.path = path
        self._reactor = reactor
        self._file: TextIO | None = self._open() if path is not None else None
        self._closed = False
        self._flushCall = None
        self._second: int | None = None
        self._secondText = ""
        self._millis: int | None = None
        self._dateText = ""
        self._bare = _Memo(lambda value: escape(value, quoted=False))
        self._hosts = _Memo(_formatHost)
        self._quoted = _Memo(escape)
        self._requests = _Memo(_formatRequest)
        self._codes = _Memo(lambda value: _code(value, 2))
        self._places = _Memo(self._formatPlace)
        self._ends = _Memo(self._formatEnd)
        self._clients = _Memo(self._formatClient)
        self._tails = _Memo(self._formatTail)

    def _formatClient(self, client: tuple[str, int]) -> str:
        """
        C{host:port [} for C{(host, port)}, escaped.
        """
        host, port = client
        return f"{self._hosts[host]}:{port} ["

    def _formatTail(self, key: tuple) -> str:
        """
        The end of a line, from the space before the termination code on,
        for C{(termination, cookie, xff, method, target, version)}.
        """
        termination, cookie, xff, method, target, version = key
        if method:
            request = (method, target, version)
            if len(target) <= _MEMO_VALUE_SIZE:
                request = self._requests[request]
            else:
                request = _formatRequest(request)
        else:
            request = "<BADREQ>"
        if xff is None or xff in ("-", b"-", b"", ""):
            xff = "-"
        elif len(xff) <= _MEMO_VALUE_SIZE:
            xff = self._quoted[xff]
        else:
            xff = escape(xff)
        return f' {self._ends[(termination, cookie)]} "{xff}" "{request}"\n'

    def _formatPlace(self, key: tuple[str, str, str]) -> str:
        """
        C{listener pool/server}, escaped, for C{(listener, pool, server)}.
        """
        bare = self._bare
        listener, pool, server = key
        return f"{bare[listener]} {bare[pool]}/{bare[server]}"

    def _formatEnd(self, key: tuple[str, str]) -> str:
        """
        The four characters of C{(termination, cookie)}.
        """
        codes = self._codes
        termination, cookie = key
        return codes[termination] + codes[cookie]

    def _open(self) -> TextIO:
        return open(
            self.path, "a", buffering=FILE_BUFFER, encoding="ascii", errors="backslashreplace"
        )

    def _flush(self) -> None:
        self._flushCall = None
        try:
            self._file.flush()
        except OSError:
            self.logger.failure("cannot write to access log {path}", path=self.path)

    def fields(self, record: AccessRecord) -> dict[str, Any]:
        """
        The values L{LINE_FORMAT} is filled with: strings already escaped,
        timers, status and byte counts as integers.
        """
        acceptTime = record.acceptTime
        if acceptTime is None:
            acceptTime = self._reactor.seconds()
        if record.method:
            version = record.version or (1, 1)
            request = escape(
                _asBytes(record.method)
                + b" "
                + _asBytes(record.target)
                + b" HTTP/%d.%d" % (version[0], version[1])
            )
        else:
            request = "<BADREQ>"
        xff = record.xff
        return {
            "client": _formatClient(record.client),
            "acceptDate": formatAcceptTime(acceptTime),
            "acceptTime": acceptTime,
            "listener": escape(record.listener, quoted=False),
            "pool": escape(record.pool, quoted=False),
            "server": escape(record.server, quoted=False),
            "tr": int(record.tr),
            "tw": int(record.tw),
            "tc": int(record.tc),
            "tr_resp": int(record.tr_resp),
            "ta": int(record.ta),
            "status": int(record.status),
            "bytesOut": int(record.bytesOut),
            "bytesIn": int(record.bytesIn),
            "termination": _code(record.termination, 2),
            "cookie": _code(record.cookie, 2),
            "xff": "-" if xff is None or xff in ("-", b"-", b"", "") else escape(xff),
            "request": request,
        }

    def format(self, record: AccessRecord) -> str:
        """
        The log line of C{record}, without line end.
        """
        return self._line(record)[:-1]

    def _line(self, record: AccessRecord) -> str:
        """
        The log line of C{record} with its line end: L{LINE_FORMAT} filled
        with L{fields}, built in fewer steps since this runs once per
        request. The date is formatted once per millisecond (its seconds
        once per second); the client, the names and the end of the line
        (codes, X-Forwarded-For, request line) are formatted once per
        value they come with and remembered, unless long.
        """
        (
            client,
            listener,
            pool,
            server,
            acceptTime,
            tr,
            tw,
            tc,
            trResp,
            ta,
            status,
            bytesOut,
            bytesIn,
            termination,
            cookie,
            xff,
            method,
            target,
            version,
        ) = record
        if acceptTime is None:
            acceptTime = self._reactor.seconds()
        millis = int(acceptTime * 1000)
        if millis != self._millis:
            second = millis // 1000
            if second != self._second:
                self._secondText = formatAcceptTime(second)[:-4]
                self._second = second
            self._millis = millis
            self._dateText = "%s.%03d] " % (self._secondText, millis % 1000)
        tail = (termination, cookie, xff, method, target, version)
        if len(target) <= _MEMO_VALUE_SIZE and (xff is None or len(xff) <= _MEMO_VALUE_SIZE):
            tail = self._tails[tail]
        else:
            tail = self._formatTail(tail)
        return _LINE_PERCENT % (
            self._clients[client],
            self._dateText,
            self._places[(listener, pool, server)],
            tr,
            tw,
            tc,
            trResp,
            ta,
            status,
            bytesOut,
            bytesIn,
            tail,
        )

    def log(self, record: AccessRecord) -> None:
        """
        Write one line for C{record}. After L{close}, records are dropped.
        """
        if self._closed:
            return
        if self._file is None:
            self.logger.info(SESSION_LINE, line=self.format(record), **self.fields(record))
            return
        try:
            self._file.write(self._line(record))
        except OSError:
            self.logger.failure("cannot write to access log {path}", path=self.path)
        if self._flushCall is None:
            self._flushCall = self._reactor.callLater(FLUSH_INTERVAL, self._flush)

    def reopen(self) -> None:
        """
        Open the file again (after it was rotated away); on failure the old
        file is kept and the error logged.
        """
        if self.path is None or self._closed:
            return
        try:
            new = self._open()
        except OSError:
            self.logger.failure("cannot reopen access log {path}", path=self.path)
            return
        old, self._file = self._file, new
        if old is not None:
            self._closeFile(old)

    def close(self) -> None:
        """
        Close the file; later records are dropped.
        """
        self._closed = True
        if self._flushCall is not None:
            self._flushCall.cancel()
            self._flushCall = None
        if self._file is not None:
            self._closeFile(self._file)
            self._file = None

    def _closeFile(self, file: TextIO) -> None:
        try:
            file.close()
        except OSError:
            self.logger.failure("cannot write to access log {path}", path=self.path)
