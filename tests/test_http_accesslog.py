"""
Tests for L{lbproxy.http.accesslog}: the documented line layout, escaping
of client-supplied values, file output with reopen, and twisted.logger
events.
"""

from __future__ import annotations

import re

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from lbproxy.core.format import SESSION_LINE
from lbproxy.http.accesslog import (
    FLUSH_INTERVAL,
    LINE_FORMAT,
    AccessLog,
    AccessRecord,
    escape,
    formatAcceptTime,
)

#: 2026-11-28 03:12:00.123 UTC
ACCEPT = 1795835520.123

#: A parser for the documented layout.
LINE = re.compile(
    r'(?P<client>\S+) \[(?P<accept>[^\]]+)\] (?P<listener>\S+) (?P<pool>\S+)/(?P<server>\S+) '
    r"(?P<tr>-?\d+)/(?P<tw>-?\d+)/(?P<tc>-?\d+)/(?P<tr_resp>-?\d+)/(?P<ta>-?\d+) "
    r"(?P<status>-?\d+) (?P<bytesOut>\d+) (?P<bytesIn>\d+) (?P<term>\S{2})(?P<cookie>\S{2}) "
    r'"(?P<xff>(?:[^"\\]|\\.)*)" "(?P<request>(?:[^"\\]|\\.)*)"'
)


def record(**overrides) -> AccessRecord:
    fields = dict(
        client=("127.0.0.1", 53210),
        listener="web",
        pool="web",
        server="web1",
        acceptTime=ACCEPT,
        tr=0,
        tw=0,
        tc=1,
        tr_resp=3,
        ta=4,
        status=200,
        bytesOut=612,
        bytesIn=87,
        termination="--",
        cookie="NI",
        xff=b"127.0.0.1",
        method=b"GET",
        target=b"/x",
        version=(1, 1),
    )
    fields.update(overrides)
    return AccessRecord(**fields)


def fileLog(tmp_path, clock=None) -> tuple[AccessLog, str]:
    path = str(tmp_path / "access.log")
    return AccessLog(path, clock or Clock()), path


def test_documentedExample():
    line = AccessLog(None, Clock()).format(record())
    assert line == (
        '127.0.0.1:53210 [28/Nov/2026:03:12:00.123] web web/web1 0/0/1/3/4 200 612 87 '
        '--NI "127.0.0.1" "GET /x HTTP/1.1"'
    )
    assert LINE.fullmatch(line)


def test_everyContractFieldAppears():
    line = AccessLog(None, Clock()).format(
        record(
            client=("192.0.2.9", 1234),
            listener="front",
            pool="api",
            server="api3",
            tr=11,
            tw=12,
            tc=13,
            tr_resp=14,
            ta=15,
            status=504,
            bytesOut=321,
            bytesIn=654,
            termination="sH",
            cookie="VN",
            xff=b"10.0.0.1, 192.0.2.9",
            method=b"POST",
            target=b"/submit?a=1",
            version=(1, 0),
        )
    )
    match = LINE.fullmatch(line)
    assert match.groupdict() == {
        "client": "192.0.2.9:1234",
        "accept": "28/Nov/2026:03:12:00.123",
        "listener": "front",
        "pool": "api",
        "server": "api3",
        "tr": "11",
        "tw": "12",
        "tc": "13",
        "tr_resp": "14",
        "ta": "15",
        "status": "504",
        "bytesOut": "321",
        "bytesIn": "654",
        "term": "sH",
        "cookie": "VN",
        "xff": "10.0.0.1, 192.0.2.9",
        "request": "POST /submit?a=1 HTTP/1.0",
    }


def test_refusedRequestDefaults():
    """
    A request refused before routing: no pool, no server, timers not
    reached, no request line.
    """
    line = AccessLog(None, Clock()).format(
        AccessRecord(
            client=("127.0.0.1", 1),
            listener="web",
            acceptTime=ACCEPT,
            tr=2,
            ta=2,
            status=400,
            bytesOut=90,
            bytesIn=40,
            termination="PR",
        )
    )
    assert line == (
        '127.0.0.1:1 [28/Nov/2026:03:12:00.123] web -/<NOSRV> 2/-1/-1/-1/2 400 90 40 '
        'PR-- "-" "<BADREQ>"'
    )
    assert LINE.fullmatch(line)


def test_ipv6Client():
    line = AccessLog(None, Clock()).format(record(client=("::1", 40000)))
    assert line.startswith("[::1]:40000 [")


def test_xffAbsent():
    log = AccessLog(None, Clock())
    for value in (None, "-", b"-", b""):
        assert ' "-" "GET ' in log.format(record(xff=value))


def test_acceptTimeDefaultsToNow():
    clock = Clock()
    clock.advance(ACCEPT + 60)
    line = AccessLog(None, clock).format(record(acceptTime=None))
    assert "[28/Nov/2026:03:13:00.123]" in line


@pytest.mark.parametrize(
    "epoch, text",
    [
        (0, "01/Jan/1970:00:00:00.000"),
        (ACCEPT, "28/Nov/2026:03:12:00.123"),
        (1795835520.9999, "28/Nov/2026:03:12:00.999"),
        (951782400.5, "29/Feb/2000:00:00:00.500"),
    ],
)
def test_formatAcceptTime(epoch, text):
    assert formatAcceptTime(epoch) == text


@pytest.mark.parametrize(
    "value, quoted, expected",
    [
        (b"plain text", True, "plain text"),
        (b'say "hi"', True, 'say \\"hi\\"'),
        (b"back\\slash", True, "back\\\\slash"),
        (b"\r\n\x00\x1b\x7f", True, "\\x0d\\x0a\\x00\\x1b\\x7f"),
        (b"caf\xc3\xa9", True, "caf\\xc3\\xa9"),
        ("café", True, "caf\\xc3\\xa9"),
        (b"a b", False, "a\\x20b"),
    ],
)
def test_escape(value, quoted, expected):
    assert escape(value, quoted) == expected


def test_hostileValuesStayOnOneLineInTheirQuotes():
    log = AccessLog(None, Clock())
    xff = b'1.2.3.4" "GET /fake HTTP/1.1"\r\n127.0.0.1:1 [x] forged'
    target = b'/a"b\\c\x85{status}'
    line = log.format(record(xff=xff, target=target))
    assert "\n" not in line and "\r" not in line
    assert all(0x20 <= ord(c) < 0x7F for c in line)
    match = LINE.fullmatch(line)
    assert match is not None
    assert match["xff"] == '1.2.3.4\\" \\"GET /fake HTTP/1.1\\"\\x0d\\x0a127.0.0.1:1 [x] forged'
    assert match["request"] == 'GET /a\\"b\\\\c\\x85{status} HTTP/1.1'


def test_oddCodesKeepTheirWidth():
    log = AccessLog(None, Clock())
    match = LINE.fullmatch(log.format(record(termination="", cookie="V")))
    assert (match["term"], match["cookie"]) == ("--", "V-")
    match = LINE.fullmatch(log.format(record(termination="CDX", cookie=' "')))
    assert (match["term"], match["cookie"]) == ("CD", "??")


def test_textMethodAndTarget():
    line = AccessLog(None, Clock()).format(record(method="GET", target="/t"))
    assert line.endswith('"GET /t HTTP/1.1"')


def test_fileAppendsLines(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("earlier line\n")
    clock = Clock()
    log = AccessLog(str(path), clock)
    log.log(record())
    # Buffered, but in the file within FLUSH_INTERVAL.
    assert path.read_text().splitlines() == ["earlier line"]
    clock.advance(FLUSH_INTERVAL)
    assert path.read_text().splitlines()[1].startswith("127.0.0.1:53210 ")
    assert clock.getDelayedCalls() == []
    log.log(record(status=404))
    assert len(clock.getDelayedCalls()) == 1
    log.close()
    assert clock.getDelayedCalls() == []
    lines = path.read_text().splitlines()
    assert lines[0] == "earlier line"
    assert [LINE.fullmatch(l)["status"] for l in lines[1:]] == ["200", "404"]


def test_reopenAfterRotation(tmp_path):
    log, path = fileLog(tmp_path)
    log.log(record(status=200))
    rotated = tmp_path / "access.log.1"
    (tmp_path / "access.log").rename(rotated)
    log.log(record(status=201))
    log.reopen()
    log.log(record(status=202))
    log.close()
    statuses = lambda p: [LINE.fullmatch(l)["status"] for l in p.read_text().splitlines()]
    assert statuses(rotated) == ["200", "201"]
    assert statuses(tmp_path / "access.log") == ["202"]


def test_reopenFailureKeepsTheOldFile(tmp_path):
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "access.log"
    log = AccessLog(str(path), Clock())
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        path.rename(tmp_path / "moved.log")
        directory.rmdir()
        log.reopen()
        log.log(record())
    finally:
        globalLogPublisher.removeObserver(events.append)
    log.close()
    assert any("cannot reopen access log" in formatEvent(e) for e in events if "log_failure" in e)
    assert (tmp_path / "moved.log").read_text().count("\n") == 1


def test_unopenablePath(tmp_path):
    with pytest.raises(OSError):
        AccessLog(str(tmp_path / "missing" / "access.log"), Clock())


def test_closedLogDropsRecords(tmp_path):
    log, path = fileLog(tmp_path)
    log.close()
    log.log(record())
    log.reopen()
    log.close()
    assert open(path).read() == ""


def test_eventsWithoutPath():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        log = AccessLog(None, Clock())
        log.log(record(target=b"/{notAField}"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get("log_namespace") == "lbproxy.http.accesslog.AccessLog"]
    assert event["log_level"] is LogLevel.info
    assert event["log_format"] == SESSION_LINE
    assert formatEvent(event) == log.format(record(target=b"/{notAField}"))
    assert event["status"] == 200
    assert event["tc"] == 1
    assert event["server"] == "web1"
    assert event["xff"] == "127.0.0.1"
    assert event["request"] == "GET /{notAField} HTTP/1.1"
    assert event["acceptTime"] == ACCEPT


def test_closeWithoutPath():
    log = AccessLog(None, Clock())
    log.close()
    log.reopen()
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        log.log(record())
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e for e in events if e.get("log_namespace") == "lbproxy.http.accesslog.AccessLog"] == []


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"client": ("::1", 1), "acceptTime": None},
        {"client": ("host with space", 7), "listener": "l\x00", "pool": 'p"', "server": "s\\"},
        {"termination": "", "cookie": "TOOLONG"},
        {"termination": "é!", "cookie": None},
        {"xff": None, "method": b"", "target": b""},
        {"xff": "-", "method": "PUT", "target": "/é", "version": (1, 0)},
        {"xff": b'1.2.3.4, "x"\r\n', "target": b"/\x7f\xff"},
        {"tr": 1.9, "ta": -1, "status": -1, "bytesOut": 0, "bytesIn": 10**12},
        {"acceptTime": 1795835520.9999},
        {"target": b"/" + b"a" * 300, "xff": "1.2.3.4, " * 40},
        {"target": b"/" + b"a" * 300},
        {"xff": b'"' * 300},
    ],
)
def test_lineIsTheDocumentedFormat(overrides):
    """
    The line written for a record is L{LINE_FORMAT} filled with the
    record's L{AccessLog.fields}, whatever the values, and stays so when the
    same names and clients come back.
    """
    clock = Clock()
    clock.advance(ACCEPT + 5)
    log = AccessLog(None, clock)
    for _ in range(2):
        expected = LINE_FORMAT.format(**log.fields(record(**overrides)))
        assert log.format(record(**overrides)) == expected


def test_lineDatesFollowTheMilliseconds():
    """
    Lines of records a millisecond, then a second apart each get their own
    date, and an earlier one after them its own again.
    """
    clock = Clock()
    log = AccessLog(None, clock)
    for acceptTime in (ACCEPT, ACCEPT + 0.001, ACCEPT + 0.0011, ACCEPT + 1.001, ACCEPT):
        expected = LINE_FORMAT.format(**log.fields(record(acceptTime=acceptTime)))
        assert log.format(record(acceptTime=acceptTime)) == expected
