"""
Tests for lbproxy.admin.notify: systemd's notifications over a datagram
socket the test makes, in memory; and on a real twistd (READY once
listening, RELOADING/READY around a SIGHUP, STOPPING on SIGTERM).
"""

from __future__ import annotations

import signal
import socket
import time

from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock

from lbproxy.admin.notify import SystemdNotifier
from processes import processes, waitUntil  # noqa: F401
from support import freePort


def receiver(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0)
    return sock, path


def received(sock) -> list[dict]:
    messages = []
    while True:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return messages
        messages.append(dict(line.split("=", 1) for line in data.decode().split("\n")))


def test_fromEnvironment():
    reactor = MemoryReactorClock()
    assert SystemdNotifier.fromEnvironment(reactor, {}) is None
    assert SystemdNotifier.fromEnvironment(reactor, {"NOTIFY_SOCKET": "/run/x"}).address == "/run/x"
    assert SystemdNotifier.fromEnvironment(reactor, {"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"


def test_lifecycle(tmp_path):
    """
    READY=1 once the reactor runs, RELOADING=1 with MONOTONIC_USEC then
    READY=1 around a reload (with how it went), STOPPING=1 on stop.
    """
    sock, path = receiver(tmp_path)
    reactor = MemoryReactorClock()
    parent = MultiService()
    parent.reloadObservers = []
    notifier = SystemdNotifier(path, reactor)
    notifier.setServiceParent(parent)
    parent.startService()
    assert received(sock) == []
    reactor.run()
    (ready,) = received(sock)
    assert ready["READY"] == "1" and ready["STATUS"] == "serving"
    assert parent.reloadObservers == [notifier]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    notifier.reloaded(False, "reload asked by SIGHUP refused: lb.toml: pools: bad")
    reloading, again = received(sock)
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) >= before
    assert again["READY"] == "1"
    assert again["STATUS"] == "serving the previous configuration: reload asked by SIGHUP refused: lb.toml: pools: bad"
    parent.stopService()
    (stopping,) = received(sock)
    assert stopping["STOPPING"] == "1"
    assert parent.reloadObservers == []


def test_unreachableSocketIsLogged(tmp_path):
    notifier = SystemdNotifier(str(tmp_path / "nobody"), MemoryReactorClock())
    assert not notifier.notify("READY=1")


CONFIG = """
[pools.web]
servers = [{{ name = "a", address = "127.0.0.1:{backend}" }}]

[listeners.web]
bind = "tcp:{port}:interface=127.0.0.1"
pool = "web"
"""


def test_realDaemon(processes, tmp_path):  # noqa: F811
    """
    A real twistd with NOTIFY_SOCKET: READY=1 once it listens (its pid as
    MAINPID), RELOADING=1 then READY=1 around a SIGHUP, STOPPING=1 on
    SIGTERM.
    """
    sock, path = receiver(tmp_path)
    port = freePort()
    config = CONFIG.format(backend=freePort(), port=port)
    (tmp_path / "lbproxy.toml").write_text(config)
    from processes import lbproxyArgv

    daemon = processes(lbproxyArgv(tmp_path, "--config", str(tmp_path / "lbproxy.toml")), "lbproxy", {"NOTIFY_SOCKET": path})
    daemon.waitForPort(port)
    messages = []
    waitUntil(lambda: messages.extend(received(sock)) or messages, "READY=1", timeout=30)
    assert messages[0]["READY"] == "1" and messages[0]["MAINPID"] == str(daemon.pid)
    daemon.popen.send_signal(signal.SIGHUP)
    waitUntil(lambda: messages.extend(received(sock)) or len(messages) >= 3, "the reload's notifications", timeout=30)
    assert messages[1]["RELOADING"] == "1" and "MONOTONIC_USEC" in messages[1]
    assert messages[2]["READY"] == "1" and messages[2]["STATUS"] == "serving"
    daemon.popen.send_signal(signal.SIGTERM)
    # twistd ends by the signal that stopped it, once stopped cleanly.
    assert daemon.wait(30) == -signal.SIGTERM
    assert "Server Shut Down." in daemon.stdout
    messages.extend(received(sock))
    assert messages[3]["STOPPING"] == "1"
