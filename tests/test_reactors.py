"""
The tests run on lbproxy's reactor, what C{twistd lbproxy} runs on under
Linux (tests/conftest.py installs it); the in-process loopback tests,
which drive lbproxy's data path over real sockets, run again here on
Twisted's own epoll reactor, what an operator gets with
C{--reactor=epoll}, so that both stay right. (With
LBPROXY_TEST_REACTOR=epoll the run is on Twisted's reactor and the loopback
tests run again on lbproxy's.)

The loopback tests run again in a subprocess (a process has one reactor);
a failure there fails L{test_loopbackOnTheOtherReactor} with the
subprocess's report, which names each failing test and shows its output.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from support import CHECKOUT, TEST_REACTOR_VARIABLE, TEST_REACTORS, checkoutEnvironment, reactorUnderTest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="lbproxy's reactor is epoll, Linux only")

#: The in-process tests over real sockets that drive the data path: the
#: TCP, HTTP, TLS and mail fronts, the relay, the write batch, health
#: checks, a reload's sockets and a graceful stop.
LOOPBACK = (
    "tests/test_tcp_loopback.py",
    "tests/test_tcp_sni_loopback.py",
    "tests/test_http_loopback.py",
    "tests/test_http_requeststart.py",
    "tests/test_http_response_faults_loopback.py",
    "tests/test_tls_loopback.py",
    "tests/test_tls_transport.py",
    "tests/test_tls_backend_loopback.py",
    "tests/test_writebatch.py",
    "tests/test_health_loopback.py",
    "tests/test_reload.py",
    "tests/test_shutdown.py",
    "tests/test_mail_prelogin.py",
    "tests/test_mail_imap_dovecot.py",
    "tests/test_mail_pop3_dovecot.py",
)

#: Tests of those files left out of the second run: they wait out login
#: failure delays (lbproxy's and the store's), which no reactor changes,
#: or start the daemon, which installs its own reactor.
NOT_AGAIN = (
    "tests/test_mail_imap_dovecot.py::IMAPDovecotTests::test_failuresPerAddress",
    "tests/test_mail_imap_dovecot.py::IMAPDovecotTests::test_wrongPassword",
    "tests/test_mail_imap_dovecot.py::test_twistdIMAP",
    "tests/test_mail_pop3_dovecot.py::POP3DovecotTests::test_wrongPassword",
)

#: Seconds the second run may take, far above what it needs.
TIMEOUT = 1200


def test_installedReactor():
    """
    The reactor installed is the one this run was meant to have (run
    again in the subprocess, where it is Twisted's).
    """
    from twisted.internet import reactor

    name = reactorUnderTest()
    expected = importlib.import_module(TEST_REACTORS[name]).EPollReactor
    assert type(reactor) is expected, f"{name}: {type(reactor)!r} installed"


def test_loopbackOnTheOtherReactor():
    """
    The loopback tests pass on the other reactor too: Twisted's epoll
    reactor when this run is on lbproxy's (or the other way round).
    """
    other = "lbproxy" if reactorUnderTest() == "epoll" else "epoll"
    environment = checkoutEnvironment()
    environment[TEST_REACTOR_VARIABLE] = other
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rfEs",
        f"{__file__}::test_installedReactor",
        *LOOPBACK,
        *(f"--deselect={test}" for test in NOT_AGAIN),
    ]
    where = f"the loopback tests on {TEST_REACTOR_VARIABLE}={other}"
    try:
        result = subprocess.run(
            argv,
            cwd=CHECKOUT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{where} did not finish within {TIMEOUT}s:\n{e.output or ''}", pytrace=False)
    report = result.stdout
    print(f"{where}: {report.rstrip().rsplit(chr(10), 1)[-1]}")
    if result.returncode != 0:
        pytest.fail(f"{where} exited with {result.returncode}:\n{report}", pytrace=False)
