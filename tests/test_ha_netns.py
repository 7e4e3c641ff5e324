"""
The HA pair end to end: two real lbproxy nodes, two backends, a client
using the virtual address, each in a network namespace (tests/netns.py).

Figures (the gap the client sees, requests lost) are printed; the
assertions allow a loaded machine generous time, except where the
behaviour is exact: no request lost on a graceful stop, exactly one
master after a heal, forged adverts change nothing.
"""

from __future__ import annotations

import time

import pytest

from lbproxy.ha.advert import Advert, encode
from lbproxy.ha.machine import masterDownInterval
from netns import KEY, VIP, VIP6, haHosts, haPair, peers, processes, waitFor  # noqa: F401

pytestmark = pytest.mark.integration

#: Master_Down_Interval of b (priority 250, adverts every 0.2 s).
DOWN = masterDownInterval(250, 0.2)


def report(what: str, figures: dict) -> None:
    print(f"\n{what}: {figures}")


def killDuringTraffic(pair, what: str) -> tuple[float, dict]:
    """
    SIGKILL node a 1 s into 3 s of client traffic: the seconds until b
    owns the address, and what the client saw.
    """
    pair.startBoth()
    client = pair.client(3.0)
    time.sleep(1.0)
    killed = time.monotonic()
    pair.a.process.kill()
    took = waitFor(pair.b.hasVIP, "b to own the virtual address") - killed
    figures = peers.analyse(pair.clientResults(client))
    report(what, {"takeoverMs": round(took * 1000, 1), **figures})
    return took, figures


def test_sigkillMasterDuringTraffic(haPair):
    """
    The master's process is killed: its kernel closes the channel and
    refuses the reconnection, and the backup takes over at once.
    """
    haPair.configure()
    took, figures = killDuringTraffic(haPair, "SIGKILL")
    assert took < DOWN + 1.0
    haPair.b.waitForLog(r"ha: master \(was backup\): master 192\.0\.2\.11 is gone: its channel closed")
    assert figures["servedBy"] == ["be1", "be2"]
    assert figures["lost"] < figures["requests"] / 4
    # The dead node's kernel lets the addresses go when their lifetime
    # runs out; hosts asking for them from then on find only b (IPv6 too).
    waitFor(lambda: not haPair.a.hasVIP(), "the addresses to expire on the dead node", timeout=10)
    after = haPair.client(0.3, address=VIP6)
    assert all(ok for _, _, ok, _ in haPair.clientResults(after))
    assert haPair.b.notified() == ["backup", "master"]


def test_sigkillMasterWithoutChannel(haPair):
    """
    Without the channel the backup notices only when the adverts stop:
    after Master_Down_Interval.
    """
    haPair.configure(extra="channel_port = 0")
    took, figures = killDuringTraffic(haPair, "SIGKILL without channel")
    haPair.b.waitForLog(r"ha: master \(was backup\): master 192\.0\.2\.11 silent for 0\.605s")
    assert took < DOWN + 1.0
    assert figures["lost"] < figures["requests"] / 2


def test_gracefulStopLosesNothing(haPair):
    """
    SIGTERM: the master advertises priority 0 but keeps serving the
    addresses until b advertises as master, then lets go: no request of
    the client fails, over IPv4 and IPv6.
    """
    haPair.configure()
    haPair.startBoth()
    client4 = haPair.client(2.5)
    client6 = haPair.client(2.5, address=VIP6)
    time.sleep(1.0)
    stopping = time.monotonic()
    haPair.a.stop()
    stopped = time.monotonic() - stopping
    figures4 = peers.analyse(haPair.clientResults(client4))
    report("graceful stop, IPv4", {"stopMs": round(stopped * 1000), **figures4})
    assert figures4["lost"] == 0, figures4
    assert haPair.b.hasVIP() and not haPair.a.hasVIP()
    haPair.a.waitForLog(r"ha: init \(was master\): stopped; handed over to 192\.0\.2\.12")
    haPair.b.waitForLog(r"ha: master \(was backup\): master 192\.0\.2\.11 is leaving \(priority 0\)")
    # The stop waited for the handover, not for the timeout.
    assert "no peer took over" not in haPair.a.log
    assert haPair.a.notified() == ["backup", "master", "stop"]
    assert haPair.b.notified() == ["backup", "master"]
    figures6 = peers.analyse(haPair.clientResults(client6))
    report("graceful stop, IPv6", figures6)
    assert figures6["lost"] == 0, figures6


def test_multicastIPv6Adverts(haPair):
    """
    Without peers the adverts go to the multicast group ff02::12, from the
    nodes' IPv6 addresses; the pair works as with unicast.
    """
    haPair.configure(multicastIPv6=True)
    haPair.startBoth()
    client = haPair.client(2.0)
    time.sleep(0.8)
    haPair.a.stop()
    figures = peers.analyse(haPair.clientResults(client))
    report("graceful stop, multicast IPv6 adverts", figures)
    assert figures["lost"] == 0, figures
    haPair.b.waitForLog(r"ha: master \(was backup\): master 2001:db8::11 is leaving \(priority 0\)")
    assert "dropped" not in haPair.b.log


def partition(pair, add: bool) -> None:
    """
    Cut (or restore) the traffic between the two nodes only: each still
    reaches the backends and the client.
    """
    verb = "add" if add else "del"
    pair.a.host.run("ip", "route", verb, "prohibit", f"{pair.b.host.address}/32")
    pair.b.host.run("ip", "route", verb, "prohibit", f"{pair.a.host.address}/32")


def test_partitionThenHeal(haPair):
    """
    The nodes stop hearing each other: both become master. Heal: exactly
    one master afterwards (the higher priority), which announces its
    addresses again.
    """
    haPair.configure()
    haPair.startBoth()
    partition(haPair, True)
    waitFor(haPair.b.hasVIP, "b to take over during the partition")
    assert haPair.owners() == ["a", "b"]
    mark = len(haPair.a.log)
    partition(haPair, False)
    # Whichever node hears the other first, the winner announces again.
    haPair.a.waitForLog(r"ha: announcing the virtual addresses again: .*192\.0\.2\.12", after=mark)
    waitFor(lambda: not haPair.b.hasVIP(), "b to give the address back")
    haPair.b.waitForLog(r"ha: backup \(was master\): master 192\.0\.2\.11 has priority 254 above ours")
    time.sleep(1.0)
    assert haPair.owners() == ["a"]
    figures = peers.analyse(haPair.clientResults(haPair.client(0.5)))
    assert figures["lost"] == 0, figures
    assert figures["servedBy"] == ["be1", "be2"]


def test_allPoolsDownHandsOver(haPair):
    """
    The master's servers become unreachable (from the master only): its
    pool goes down, the node goes to fault and the backup takes over,
    without an operator. When the servers are back, it recovers and, with
    its higher priority, takes over again.
    """
    haPair.configure()
    haPair.startBoth()
    for backend in ("192.0.2.21", "192.0.2.22"):
        haPair.a.host.run("ip", "route", "add", "prohibit", f"{backend}/32")
    waitFor(haPair.b.hasVIP, "b to take over", timeout=15)
    haPair.a.waitForLog(r"ha: condition failed \(fault\): some pool has a server up \(0 of 1 pools have a server up\)")
    haPair.a.waitForLog(r"ha: fault \(was master\): failed: some pool has a server up")
    haPair.b.waitForLog(r"ha: master \(was backup\): master 192\.0\.2\.11 is leaving \(priority 0\)")
    assert not haPair.a.hasVIP()
    figures = peers.analyse(haPair.clientResults(haPair.client(0.5)))
    assert figures["lost"] == 0, figures
    for backend in ("192.0.2.21", "192.0.2.22"):
        haPair.a.host.run("ip", "route", "del", "prohibit", f"{backend}/32")
    haPair.a.waitForLog(r"ha: backup \(was fault\): recovered", timeout=15)
    haPair.a.waitForLog(r"ha: master \(was backup\): preempting master 192\.0\.2\.12")
    waitFor(lambda: haPair.owners() == ["a"], "a to be the only owner again")


def _send(host, data: bytes, source: str, ttl: int = 255, port: int = 5798, target: str = "192.0.2.12") -> None:
    """
    Send one datagram from the stranger's namespace, its source address
    C{source} (spoofed with IP_TRANSPARENT when not the stranger's own).
    """
    script = (
        "import socket,sys;"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        "s.setsockopt(socket.SOL_IP,19,1);"
        f"s.setsockopt(socket.IPPROTO_IP,socket.IP_TTL,{ttl});"
        f"s.bind(('{source}',0));"
        f"s.sendto(bytes.fromhex(sys.argv[1]),('{target}',{port}))"
    )
    import sys

    host.run(sys.executable, "-c", script, data.hex())


def test_forgedAdvertsChangeNothing(haPair):
    """
    A third host sends adverts: forged with another key, spoofing the
    master's address with priority 0, a replay of an old sequence, from
    beyond the link (TTL below 255), of another group, truncated. Each is
    dropped and counted by cause; the roles never change.
    """
    import ipaddress

    haPair.configure()
    haPair.startBoth()
    stranger = haPair.hosts["stranger"]
    addresses = (ipaddress.ip_interface(f"{VIP}/24"), ipaddress.ip_interface(f"{VIP6}/64"))

    def advert(key=KEY, sender="192.0.2.11", priority=0, sequence=None, group=51) -> bytes:
        return encode(
            Advert(
                group=group,
                priority=priority,
                interval=0.2,
                sequence=sequence if sequence is not None else time.time_ns() + 10**12,
                sender=ipaddress.ip_address(sender),
                addresses=addresses,
            ),
            key,
        )

    for _ in range(3):
        # Another key, spoofing the master, "leaving".
        _send(stranger, advert(key=b"not the key at all, sorry"), "192.0.2.11")
        # The stranger's own address: not a peer.
        _send(stranger, advert(sender="192.0.2.66", priority=254), "192.0.2.66")
        # The right key (stolen), but an old sequence: a replay.
        _send(stranger, advert(sequence=1), "192.0.2.11")
        # The right key from beyond the link.
        _send(stranger, advert(), "192.0.2.11", ttl=64)
        # Another group.
        _send(stranger, advert(group=52, key=b"their key of their group"), "192.0.2.11")
        # Truncated.
        _send(stranger, advert()[:40], "192.0.2.11")
        time.sleep(0.3)
    time.sleep(1.0)
    assert haPair.owners() == ["a"]
    assert "ha: master (was backup)" not in haPair.b.log
    haPair.b.waitForLog(r"ha: dropped 1 advert from 192\.0\.2\.11: auth: ")
    haPair.b.stop()
    summary = haPair.b.waitForLog(r"ha: stopped; .* dropped: (.*)").group(1)
    for cause in ("auth 3", "source 3", "replay 3", "ttl 3", "group 3", "truncated 3"):
        assert cause in summary, summary


STICK = """
[pools.web.stick]
on = "src"
expire = "30m"
"""


def test_stickEntriesSurviveFailover(haPair):
    """
    Clients pinned by their source address on the master keep their
    backend on the backup after the master is killed: the entries made
    before the backup joined (its full resync) and after (incremental
    updates). The killed node comes back as a new process: it is sent
    the new master's entries, its old ones and the new ones, before it
    preempts, and every client keeps its backend on it too.

    Round-robin alone would send every one of them elsewhere: a first
    request from the client's own address shifts the master's turns by
    one, and the nodes' turns would otherwise run alike.
    """
    before, during, after = peers.stickSources(130, 8), peers.stickSources(138, 8), peers.stickSources(146, 4)
    haPair.addClientAddresses(before + during + after)
    haPair.configure(tables=STICK, extra='preempt_delay = "3s"')
    a, b = haPair.a, haPair.b
    a.start()
    a.waitForLog(r"ha: master \(was backup\)")
    assert all(ok for _, ok, _ in haPair.sticky(["192.0.2.50"]))
    pinned = haPair.sticky(before)
    b.start()
    b.waitForLog(r"ha: stick tables: full resync from 192\.0\.2\.11 received: 9 entries applied")
    pinned += haPair.sticky(during)
    assert all(ok for _, ok, _ in pinned), pinned
    assert {backend for _, _, backend in pinned} == {"be1", "be2"}
    # The incremental updates go out within 20 ms; leave them ample time.
    time.sleep(2.0)
    a.process.kill()
    waitFor(b.hasVIP, "b to own the virtual address")
    onBackup = haPair.sticky(before + during)
    figures = peers.honoured(pinned, onBackup)
    report("stick entries honoured after SIGKILL of the master", figures)
    assert figures == {"honoured": 16, "of": 16}, (pinned, onBackup)
    pinned += haPair.sticky(after)
    assert all(ok for _, ok, _ in pinned), pinned
    mark = len(b.log)
    a.start()
    a.waitForLog(r"ha: stick tables: full resync from 192\.0\.2\.12 received: 21 entries applied")
    a.waitForLog(r"ha: master \(was backup\): preempting master 192\.0\.2\.12")
    waitFor(lambda: haPair.owners() == ["a"], "a to be the only owner again")
    b.waitForLog(r"ha: backup \(was master\)", after=mark)
    back = haPair.sticky(before + during + after)
    figures = peers.honoured(pinned, back)
    report("stick entries honoured on the old master back", figures)
    assert figures == {"honoured": 20, "of": 20}, (pinned, back)
