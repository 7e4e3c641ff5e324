"""
Separate hosts on one machine: network namespaces joined by a bridge, for
the HA tests and the failover benchmark.

Every namespace is named C{lbha<pid>-<host>} (the pid of the process that
made it), the bridge and its ports live in a namespace of their own
(C{-sw}), so nothing is added to the namespace the tests run in. Each host
gets C{eth0} with an address of 192.0.2.0/24 and 2001:db8::/64
(documentation ranges, RFC 5737 and RFC 3849), and its loopback; DAD is
off (addresses usable at once). L{Hosts.close} removes them all;
L{removeLeftovers} removes those of earlier runs whose process is gone.

Needs root and C{ip} (iproute2). Stdlib only: the bench scripts load it
too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

PREFIX = "lbha"
SUBNET4 = "192.0.2"
SUBNET6 = "2001:db8:"
_NAME = re.compile(rf"{PREFIX}(\d+)-[a-z0-9]+$")


class NetnsUnavailable(Exception):
    """
    Namespaces cannot be made here (not root, no C{ip}, no kernel support):
    the message says which.
    """


def ipCommand() -> str:
    path = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    if path is None:
        raise NetnsUnavailable("the ip command (iproute2) is not installed")
    return path


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([ipCommand(), *argv], capture_output=True, text=True, timeout=30)
    if check and result.returncode:
        raise NetnsUnavailable(f"ip {' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result


def available() -> str | None:
    """
    Why namespaces cannot be made here, or None when they can.
    """
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        ipCommand()
    except NetnsUnavailable as e:
        return str(e)
    name = f"{PREFIX}{os.getpid()}-probe"
    result = run("netns", "add", name, check=False)
    if result.returncode:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    run("netns", "del", name, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def removeLeftovers() -> list[str]:
    """
    Delete the namespaces of this module's prefix whose creating process
    is gone (a run that crashed or was killed); returns their names.
    """
    removed = []
    for line in run("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            run("netns", "del", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Host:
    """
    One namespace with its C{eth0} on the bridge.
    """

    name: str
    namespace: str
    number: int

    @property
    def address(self) -> str:
        return f"{SUBNET4}.{self.number}"

    @property
    def address6(self) -> str:
        return f"{SUBNET6}:{self.number}"

    def argv(self, *command: str) -> list[str]:
        """
        C{command} run inside this host.
        """
        return [ipCommand(), "netns", "exec", self.namespace, *command]

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self.argv(*command), capture_output=True, text=True, timeout=30)
        if check and result.returncode:
            raise NetnsUnavailable(f"{self.name}: {' '.join(command)}: {result.stderr.strip()}")
        return result

    def addresses(self) -> set[str]:
        """
        The addresses on C{eth0} now (without prefix lengths).
        """
        out = run("-n", self.namespace, "-o", "addr", "show", "dev", "eth0").stdout
        return {m.group(1) for m in re.finditer(r"inet6? ([0-9a-f.:]+)/", out)}


@dataclass
class Hosts:
    """
    The hosts made by L{makeHosts}, by name; the switch namespace holds
    the bridge.
    """

    switch: str
    hosts: dict[str, Host] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def close(self) -> None:
        for host in self.hosts.values():
            run("netns", "del", host.namespace, check=False)
        run("netns", "del", self.switch, check=False)
        self.hosts.clear()


def _sysctl(namespace: str, *settings: str) -> None:
    subprocess.run(
        [ipCommand(), "netns", "exec", namespace, "sysctl", "-q", "-w", *settings],
        capture_output=True,
        timeout=30,
    )


def makeHosts(names: dict[str, int], tag: str = "") -> Hosts:
    """
    A namespace per entry of C{names} (host name -> last byte of its
    addresses), all on one bridge.

    @param tag: added to the namespace names, so that one process can
        make several sets.
    @raise NetnsUnavailable: they cannot be made (whatever was made is
        removed).
    """
    base = f"{PREFIX}{os.getpid()}{tag}"
    hosts = Hosts(f"{base}-sw")
    try:
        run("netns", "add", hosts.switch)
        run("-n", hosts.switch, "link", "add", "br0", "type", "bridge", "forward_delay", "0", "mcast_snooping", "0")
        run("-n", hosts.switch, "link", "set", "br0", "up")
        for name, number in names.items():
            namespace = f"{base}-{name}"
            run("netns", "add", namespace)
            host = Host(name, namespace, number)
            hosts.hosts[name] = host
            _sysctl(namespace, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
            run("-n", hosts.switch, "link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0", "netns", namespace)
            run("-n", hosts.switch, "link", "set", f"v-{name}", "master", "br0")
            run("-n", hosts.switch, "link", "set", f"v-{name}", "up")
            run("-n", namespace, "link", "set", "lo", "up")
            run("-n", namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
            run("-n", namespace, "addr", "add", f"{host.address6}/64", "dev", "eth0", "nodad")
            run("-n", namespace, "link", "set", "eth0", "up")
    except BaseException:
        hosts.close()
        raise
    return hosts
