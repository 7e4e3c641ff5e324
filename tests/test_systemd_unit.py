"""
conf/lbproxy.service: its commands, with the paths of this checkout, run
a real daemon that tells a fake NOTIFY_SOCKET it is ready, reloads on its
ExecReload (the check, then SIGHUP) and stops gracefully on its
KillSignal, writing no pid file.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
from pathlib import Path

from processes import processes, waitUntil  # noqa: F401
from support import CHECKOUT, checkoutEnvironment, freePort, twistd
from test_notify import CONFIG, received, receiver

UNIT = Path(CHECKOUT) / "conf" / "lbproxy.service"


def directives() -> list[tuple[str, str]]:
    """
    The unit's C{Key=value} lines, in order (a key may repeat).
    """
    found = []
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.append((key, value))
    return found


def command(value: str, config: Path, pid: int | None = None) -> list[str]:
    value = value.replace("/opt/lbproxy/bin/twistd", twistd()).replace("/etc/lbproxy/lbproxy.toml", str(config))
    if pid is not None:
        value = value.replace("$MAINPID", str(pid))
    return shlex.split(value)


def test_unitSettings():
    settings = dict(directives())
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["KillSignal"] == "SIGTERM"
    assert int(settings["TimeoutStopSec"]) > 30  # above the default [daemon] grace
    assert [v for k, v in directives() if k == "ExecReload"][-1] == "/bin/kill -HUP $MAINPID"


def test_unitCommands(processes, tmp_path):  # noqa: F811
    sock, path = receiver(tmp_path)
    port = freePort()
    config = tmp_path / "lbproxy.toml"
    config.write_text(CONFIG.format(backend=freePort(), port=port))
    settings = directives()
    (start,) = [v for k, v in settings if k == "ExecStart"]
    for key, value in settings:
        if key == "ExecStartPre":
            check = subprocess.run(command(value, config), cwd=tmp_path, env=checkoutEnvironment(), capture_output=True, text=True)
            assert check.returncode == 0, check.stderr
    daemon = processes(command(start, config), "lbproxy", {"NOTIFY_SOCKET": path})
    daemon.waitForPort(port)
    messages: list = []
    waitUntil(lambda: messages.extend(received(sock)) or messages, "READY=1", timeout=30)
    assert messages[0]["READY"] == "1"
    for value in [v for k, v in settings if k == "ExecReload"]:
        done = subprocess.run(command(value, config, daemon.pid), cwd=tmp_path, env=checkoutEnvironment(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    waitUntil(lambda: messages.extend(received(sock)) or len(messages) >= 3, "the reload's notifications", timeout=30)
    assert [sorted(m) for m in messages[1:3]] == [["MONOTONIC_USEC", "RELOADING", "STATUS"], ["READY", "STATUS"]]
    daemon.popen.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == -signal.SIGTERM
    messages.extend(received(sock))
    assert messages[3]["STOPPING"] == "1"
    assert not list(tmp_path.glob("*.pid"))
    assert "reload asked by SIGHUP applied" in daemon.stdout
