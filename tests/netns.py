"""
Two lbproxy nodes of an HA pair, two backends, a client and a stranger,
each in a network namespace of its own (bench/netns.py), for end-to-end
tests of the heartbeat. Import the fixtures into the test module::

    from netns import haPair, processes  # noqa: F401

The namespaces are removed after each test, whatever happened, and those
left by earlier runs that crashed are removed first. Without root or
C{ip}, the tests skip (and fail under LBPROXY_REQUIRE_INTEGRATION=1).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from processes import Process, processes  # noqa: F401
from support import CHECKOUT, benchModule, missing, twistd

netns = benchModule("netns")
peers = benchModule("failover_peers")

#: Host name -> last byte of its addresses in 192.0.2.0/24 and 2001:db8::/64.
HOSTS = {"a": 11, "b": 12, "client": 50, "be1": 21, "be2": 22, "stranger": 66}
VIP = peers.VIP
VIP6 = peers.VIP6
KEY = b"0123456789abcdef-a-test-key-of-the-pair"
PEERS_SCRIPT = str(Path(CHECKOUT) / "bench" / "failover_peers.py")
#: Seconds a node may take to start (twistd's first plugin scan).
STARTUP = 30.0


class Node:
    """
    One lbproxy node of the pair.
    """

    def __init__(self, pair: HAPair, host, label: str) -> None:
        self.pair = pair
        self.host = host
        self.label = label
        self.process: Process | None = None
        self.configPath = pair.directory / f"{label}.toml"
        self.notifyLog = pair.directory / f"{label}.notify"

    def start(self) -> Process:
        argv = self.host.argv(
            twistd(),
            "-n",
            "--pidfile",
            str(self.pair.directory / f"{self.label}.pid"),
            "--logfile",
            "-",
            "lbproxy",
            "--config",
            str(self.configPath),
        )
        self.process = self.pair.processes(argv, self.label)
        return self.process

    @property
    def log(self) -> str:
        return self.process.stdout if self.process else ""

    def waitForLog(self, pattern: str, timeout: float = STARTUP, after: int = 0) -> re.Match:
        """
        Wait for a log line matching C{pattern} (searched from character
        C{after} of the log).
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log, after)
            if match:
                return match
            if self.process is not None and not self.process.running():
                pytest.fail(f"{self.label} exited before logging {pattern!r}:\n{self.process.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.label} did not log {pattern!r} within {timeout}s:\n{self.process.describe()}")
            time.sleep(0.02)

    def hasVIP(self) -> bool:
        return VIP in self.host.addresses()

    def notified(self) -> list[str]:
        if not self.notifyLog.exists():
            return []
        return self.notifyLog.read_text().split()

    def stop(self) -> None:
        """
        SIGTERM, and wait until the process has shut down cleanly (twistd
        then ends itself with the signal, as its status says).
        """
        self.process.popen.terminate()
        self.process.wait()
        assert "Server Shut Down." in self.log, self.process.describe()


class HAPair:
    """
    The hosts, the backends, and nodes C{a} (priority 254) and C{b}
    (priority 250) configured but not started.
    """

    def __init__(self, hosts, processes, directory: Path) -> None:
        self.hosts = hosts
        self.processes = processes
        self.directory = directory
        self._clientOut: dict = {}
        self.keyFile = directory / "ha.key"
        self.keyFile.write_bytes(KEY)
        self.keyFile.chmod(0o600)
        self.a = Node(self, hosts["a"], "a")
        self.b = Node(self, hosts["b"], "b")
        for name in ("be1", "be2"):
            host = hosts[name]
            backend = processes(
                host.argv(sys.executable, PEERS_SCRIPT, "backend", "--address", host.address, "--port", "8080", "--name", name),
                name,
            )
            deadline = time.monotonic() + STARTUP
            while "listening" not in backend.stdout:
                if not backend.running() or time.monotonic() > deadline:
                    pytest.fail(f"backend {name} did not start:\n{backend.describe()}")
                time.sleep(0.02)

    def configure(
        self,
        interval: str = "200ms",
        extra: str = "",
        priorities=(254, 250),
        multicastIPv6: bool = False,
        tables: str = "",
    ) -> None:
        """
        Write both nodes' configurations: C{extra} keys of C{[ha]}, and
        C{tables} more tables (C{[pools.web.stick]}...).
        """
        for node, peer, priority in ((self.a, self.b, priorities[0]), (self.b, self.a, priorities[1])):
            notify = self.directory / f"notify-{node.label}.sh"
            notify.write_text(f'#!/bin/sh\necho "$1" >> "{node.notifyLog}"\n')
            notify.chmod(0o755)
            node.configPath.write_text(
                peers.lbproxyNodeConfig(
                    node.host, peer.host, str(self.keyFile), priority, interval, extra, notify=str(notify),
                    listeners=tables, multicastIPv6=multicastIPv6,
                )
            )

    def startBoth(self) -> None:
        """
        Start C{a}, wait until it is master, then C{b}, until it is
        backup with its channel up.
        """
        self.a.start()
        self.a.waitForLog(r"ha: master \(was backup\)")
        self.b.start()
        self.b.waitForLog(r"ha: backup \(was init\)")
        if "channel_port = 0" not in self.b.configPath.read_text() and "peers" in self.b.configPath.read_text():
            self.b.waitForLog(r"ha: channel to 192\.0\.2\.11 is up")
        assert self.a.hasVIP() and not self.b.hasVIP()

    def client(self, duration: float, address: str = VIP, timeout: float = 1.0) -> Process:
        """
        Start a client opening a connection to C{address} every 10 ms for
        C{duration} seconds; L{clientResults} reads what it found.
        """
        out = self.directory / f"client-{time.monotonic_ns()}.json"
        host = self.hosts["client"]
        process = self.processes(
            host.argv(
                sys.executable, PEERS_SCRIPT, "client", "--address", address, "--port", "80",
                "--out", str(out), "--duration", str(duration), "--timeout", str(timeout),
            ),
            f"client-{len(self.processes.started)}",
        )
        # Each client its own file: two may run at once (IPv4 and IPv6).
        self._clientOut[process] = out
        return process

    def clientResults(self, process: Process) -> list:
        import json

        process.wait(60)
        return json.loads(self._clientOut.pop(process).read_text())["requests"]

    def addClientAddresses(self, addresses: list[str]) -> None:
        """
        Give the client host more addresses to send from.
        """
        for address in addresses:
            self.hosts["client"].run("ip", "addr", "add", f"{address}/24", "dev", "eth0")

    def sticky(self, sources: list[str], address: str = VIP) -> list:
        """
        One request from each of C{sources} in turn; C{[source, ok,
        backend]} for each (see bench/failover_peers.py).
        """
        import json

        out = self.directory / f"sticky-{time.monotonic_ns()}.json"
        host = self.hosts["client"]
        process = self.processes(
            host.argv(
                sys.executable, PEERS_SCRIPT, "sticky", "--address", address, "--port", "80",
                "--out", str(out), "--sources", ",".join(sources),
                "--timeout", "2",
            ),
            f"sticky-{len(self.processes.started)}",
        )
        process.wait(60)
        return json.loads(out.read_text())["sticky"]

    def owners(self) -> list[str]:
        return [node.label for node in (self.a, self.b) if node.hasVIP()]


@pytest.fixture
def haHosts():
    reason = netns.available()
    if reason is not None:
        missing(reason)
    netns.removeLeftovers()
    hosts = netns.makeHosts(HOSTS)
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture
def haPair(haHosts, processes, tmp_path):  # noqa: F811
    pair = HAPair(haHosts, processes, tmp_path)
    yield pair
    processes.stopAll()


def waitFor(condition, what: str, timeout: float = 10.0, step: float = 0.005) -> float:
    """
    Poll C{condition} until true; the monotonic time it first held.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)
    return time.monotonic()
