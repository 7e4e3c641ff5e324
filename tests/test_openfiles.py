"""
The open-file limit: raised at start as far as the listeners' maxconn
need, or one warning with the numbers and the remedy.
"""

from __future__ import annotations

import os
import re
import resource
import shutil

from twisted.logger import Logger, formatEvent

from lbproxy.config import loadBytes
from lbproxy.openfiles import OWN_DESCRIPTORS, OpenFileLimit, descriptorsNeeded
from processes import STARTUP, lbproxyArgv, processes, waitUntil  # noqa: F401 (a fixture)
from support import freePort, missing

CONFIG = """\
[listeners.web]
bind = "tcp:{port}:interface=127.0.0.1"
pool = "web"
maxconn = {maxconn}

[pools.web]
servers = [{{ name = "a", address = "127.0.0.1:8081" }}]
"""

#: Two TCP listeners, an HTTP one with an access log and reused server
#: connections, a checked pool of three servers.
MIXED = """\
[listeners.a]
bind = "tcp:8080:interface=127.0.0.1"
pool = "tcp"
maxconn = 100

[listeners.b]
bind = "tcp:8081:interface=127.0.0.1"
pool = "tcp"
maxconn = 50

[listeners.c]
bind = "tcp:8082:interface=127.0.0.1"
mode = "http"
pool = "web"
maxconn = 1000
access_log = "access.log"

[pools.tcp]
servers = [{ name = "a", address = "127.0.0.1:9001" }, { name = "b", address = "127.0.0.1:9002" }, { name = "c", address = "127.0.0.1:9003" }]
health = { type = "tcp" }

[pools.web]
reuse = { max_idle = 8 }
servers = [{ name = "a", address = "127.0.0.1:9011" }, { name = "b", address = "127.0.0.1:9012" }]
"""


def load(text: str):
    return loadBytes(text.encode(), "lb.toml")


def test_descriptorsNeeded():
    """
    2 per connection, 1 per listener, the HTTP listener's idle server
    connections (8 per server), a check per checked server, the access log
    and the daemon's own.
    """
    need = descriptorsNeeded(load(MIXED))
    assert need.connections == 1150
    assert need.other == OWN_DESCRIPTORS + 3 + 8 * 2 + 3 + 1
    assert need.total == 2 * 1150 + need.other


def test_noMaxconnIsUnlimited():
    need = descriptorsNeeded(load(CONFIG.format(port=8080, maxconn=0)))
    assert (need.connections, need.total, need.unlimited) == (None, None, ("web",))


class FakeLimits:
    """
    getrlimit/setrlimit on a limit held in memory; setting the hard limit
    above its value fails unless C{privileged}.
    """

    def __init__(self, soft: int, hard: int, privileged: bool = False) -> None:
        self.limits = (soft, hard)
        self.privileged = privileged
        self.calls: list[tuple[int, int]] = []

    def getrlimit(self, which):
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which, limits):
        assert which == resource.RLIMIT_NOFILE
        self.calls.append(limits)
        soft, hard = limits
        if soft > hard or (hard > self.limits[1] and not self.privileged):
            raise ValueError("not allowed to raise maximum limit")
        self.limits = limits


def apply(maxconn: int, limits: FakeLimits) -> tuple[int, list[str]]:
    events: list[dict] = []
    limit = OpenFileLimit(load(CONFIG.format(port=8080, maxconn=maxconn)), limits.getrlimit, limits.setrlimit)
    limit.log = Logger(namespace="lbproxy.openfiles", observer=events.append)
    result = limit.apply()
    return result, [f"{event['log_level'].name}: {formatEvent(event)}" for event in events]


def need(maxconn: int) -> int:
    return 2 * maxconn + OWN_DESCRIPTORS + 1


def test_enoughAlready():
    limits = FakeLimits(65536, 65536)
    assert apply(10000, limits) == (65536, [f"info: open files: the limit of 65536 covers the {need(10000)} that maxconn needs"])
    assert limits.calls == []


def test_raisedWithinHardLimit():
    limits = FakeLimits(1024, 65536)
    assert apply(10000, limits) == (
        need(10000),
        [f"info: open files: limit raised from 1024 to {need(10000)}, what maxconn needs"],
    )
    assert limits.limits == (need(10000), 65536)


def test_hardLimitRaisedWhenPrivileged():
    limits = FakeLimits(1024, 4096, privileged=True)
    assert apply(10000, limits) == (need(10000), [f"info: open files: limit raised from 1024 to {need(10000)}, what maxconn needs"])
    assert limits.limits == (need(10000), need(10000))


def test_tooLowWarns():
    """
    The issue's case: a soft limit of 1,024, maxconn's default of 10,000.
    The soft limit goes as far as it may, and one warning says what to do.
    """
    limits = FakeLimits(1024, 4096)
    assert apply(10000, limits) == (
        4096,
        [
            f"warn: open files: maxconn needs {need(10000)} descriptors (2 per proxied connection plus "
            f"{OWN_DESCRIPTORS + 1} for listeners, health checks, logs and the daemon), but the limit is 4096 "
            f"and lbproxy may not raise it: about {(4096 - OWN_DESCRIPTORS - 1) // 2} connections fit; raise the "
            f"limit before starting lbproxy (ulimit -n {need(10000)}, or LimitNOFILE={need(10000)} in its "
            "systemd unit) or lower maxconn"
        ],
    )
    assert limits.limits == (4096, 4096)


def test_tooLowAtTheHardLimitAlready():
    limits = FakeLimits(1024, 1024)
    result, lines = apply(10000, limits)
    assert result == 1024
    assert lines[0].startswith(f"warn: open files: maxconn needs {need(10000)} descriptors")
    assert "the limit is 1024 " in lines[0]


def test_unlimitedTakesTheHardLimit():
    limits = FakeLimits(1024, 4096)
    assert apply(0, limits) == (
        4096,
        ["info: open files: limit set to 4096, the most allowed: maxconn = 0 (no limit) on listeners.web"],
    )


def test_neverLowered():
    limits = FakeLimits(1_000_000, 1_000_000)
    assert apply(10, limits)[0] == 1_000_000
    assert limits.calls == []


# The real daemon under a low limit.


def limits(pid: int) -> tuple[int, int]:
    """
    The soft and hard open-file limits of process C{pid}.
    """
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no Max open files line")


def prlimit() -> str:
    path = shutil.which("prlimit")
    if path is None:
        missing("prlimit (util-linux) is not installed")
    return path


def startUnder(processes, tmp_path, maxconn: int, prefix: list[str]):
    port = freePort()
    path = tmp_path / "lb.toml"
    path.write_text(CONFIG.format(port=port, maxconn=maxconn))
    process = processes([*prefix, prlimit(), "--nofile=1024:4096", "--", *lbproxyArgv(tmp_path, "--config", str(path))], "lbproxy")
    process.waitForPort(port)
    return process


def test_daemonRaisesItsLimit(tmp_path, processes):
    """
    Started with 1024:4096 and a maxconn of 1500, the daemon runs with a
    soft limit of what 1500 connections need.
    """
    process = startUnder(processes, tmp_path, 1500, [])
    assert limits(process.pid) == (need(1500), 4096)
    line = f"open files: limit raised from 1024 to {need(1500)}, what maxconn needs"
    assert line in process.stdout, process.describe()


def test_daemonWarnsWhenItMayNotRaise(tmp_path, processes):
    """
    maxconn's default needs more than the hard limit of 4096, which the
    daemon may not raise (root is started without CAP_SYS_RESOURCE): it
    runs at 4096 and says what to do.
    """
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            missing("setpriv (util-linux) is not installed")
        prefix = [setpriv, "--inh-caps=-sys_resource", "--bounding-set=-sys_resource", "--"]
    process = startUnder(processes, tmp_path, 10000, prefix)
    assert limits(process.pid) == (4096, 4096)
    waitUntil(lambda: "open files:" in process.stdout, "the open files line", STARTUP)
    assert re.search(
        rf"\[lbproxy\.openfiles\.OpenFileLimit#warn\] open files: maxconn needs {need(10000)} descriptors .* "
        rf"but the limit is 4096 .* \(ulimit -n {need(10000)}, or LimitNOFILE={need(10000)} in its systemd unit\)",
        process.stdout,
    ), process.describe()
