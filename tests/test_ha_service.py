"""
The heartbeat service with its system parts replaced: role changes act on
the addresses, notify and observers; adverts are signed and checked; the
snapshot is plain data; a master's stop waits for the handover; the
balancer stops the heartbeat before its listeners. And the received
adverts' checks (L{AdvertFilter}) one by one.
"""

from __future__ import annotations

import ipaddress
import io
import json

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from lbproxy import tap
from lbproxy.config import Config
from lbproxy.config.ha import HAConfig, NotifyConfig
from lbproxy.errors import CannotStart
from lbproxy.ha.addresses import NetlinkAddresses
from lbproxy.ha.advert import Advert, decode, encode
from lbproxy.ha.interfaces import IHeartbeatActions, IHeartbeatStatus, INotifier, IVirtualAddresses
from lbproxy.ha.machine import Role
from lbproxy.ha.notify import CommandNotifier
from lbproxy.ha.service import HAService, LatencyStats
from hamachines import KEY, OWN, PEER, VIPS, FakeAddresses, FakeBalancer, FakeNotifier, FakeSocket, haConfig
from lbproxy.interfaces import IBalancerHealth
from lbproxy.ha.transport import AdvertFilter
from lbproxy.core.pool import ServerState
from lbproxy.service import BalancerService

def running(config: HAConfig | None = None):
    """
    A started service on a Clock, its socket replaced by a L{FakeSocket}.
    """
    clock = Clock()
    addresses, notifier, balancer = FakeAddresses(), FakeNotifier(), FakeBalancer()
    service = HAService(config or haConfig(), balancer, clock, addresses, notifier)
    service.socket = FakeSocket()
    service._opened = True
    service.socket.startReading = lambda: None
    service.startService()
    return service, clock, addresses, notifier, balancer


def peerAdvert(priority: int, sequence: int, **changes) -> bytes:
    values = dict(group=51, priority=priority, interval=0.2, sequence=sequence, sender=PEER, addresses=VIPS)
    values.update(changes)
    return encode(Advert(**values), KEY)


def test_interfaces():
    service, *_ = running()
    assert verifyObject(IHeartbeatActions, service)
    assert verifyObject(IHeartbeatStatus, service)
    assert verifyObject(IVirtualAddresses, NetlinkAddresses("eth0", VIPS, Clock()))
    assert verifyObject(INotifier, CommandNotifier(NotifyConfig(), 51, Clock()))
    assert verifyObject(IBalancerHealth, FakeBalancer())


def test_keyMustBeLoaded():
    try:
        HAService(haConfig(key=b""), FakeBalancer(), Clock(), FakeAddresses(), FakeNotifier())
    except ValueError as e:
        assert "key is not loaded" in str(e)
    else:
        raise AssertionError("no error")


def test_becomingMasterAddsAndAnnounces():
    service, clock, addresses, notifier, _ = running()
    roles = []
    service.addObserver(lambda *change: roles.append(change))
    assert notifier.calls == [("backup", "init", "started")]
    clock.advance(0.3)
    assert service.machine.role is Role.MASTER
    assert addresses.calls == ["add", "announce"]
    assert notifier.calls[-1][:2] == ("master", "backup")
    assert roles == [("backup", "master", notifier.calls[-1][2])]


def test_steppingDownRemoves():
    service, clock, addresses, notifier, _ = running()
    clock.advance(0.3)
    service._received(peerAdvert(250, 10), PEER, 255, 0.001)
    assert service.machine.role is Role.BACKUP
    assert addresses.calls == ["add", "announce", "remove"]
    assert notifier.calls[-1][0] == "backup"
    # The yield advert went out before.
    assert decode(service.socket.sent[-1], KEY, 51).yielding


def test_observerFailureLogged():
    service, clock, *_ = running()
    seen, events = [], []
    service.addObserver(lambda *change: 1 / 0)
    service.addObserver(lambda *change: seen.append(change))
    globalLogPublisher.addObserver(events.append)
    try:
        clock.advance(0.3)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert seen
    assert any("role observer" in e.get("log_format", "") for e in events)


def test_advertsSignedAndSequenced():
    service, clock, *_ = running()
    clock.advance(0.3)
    clock.pump([0.2] * 5)
    adverts = [decode(data, KEY, 51) for data in service.socket.sent]
    assert adverts[0].solicit
    assert all(a.sender == OWN and a.addresses == VIPS and a.priority == 200 for a in adverts)
    sequences = [a.sequence for a in adverts]
    assert sequences == sorted(set(sequences))
    assert service.sendLate.count == 5
    assert service.advertsSent == len(adverts)


def test_badAdvertsCountedGoodOnesHandled():
    service, clock, *_ = running()
    service._received(b"junk", PEER, 255, None)
    service._received(peerAdvert(250, 5), PEER, 64, None)
    service._received(peerAdvert(250, 5, group=9), PEER, 255, None)
    assert service.machine.peers == {}
    service._received(peerAdvert(250, 6), PEER, 255, 0.002)
    assert service.machine.master == PEER
    assert service.receiveDelay.count == 1
    dropped = service.snapshot()["dropped"]
    assert (dropped["truncated"], dropped["ttl"], dropped["group"]) == (1, 1, 1)


def test_snapshotIsPlainData():
    service, clock, _, _, balancer = running()
    clock.advance(0.3)
    service._received(peerAdvert(100, 7), PEER, 255, 0.001)
    balancer.pools["web"].servers[0].setState(ServerState.DOWN)
    balancer.pools["web"].servers[1].setState(ServerState.DOWN)
    snapshot = service.snapshot()
    json.dumps(snapshot)
    assert snapshot["role"] == "fault"
    assert snapshot["priority"] == {"effective": 200, "configured": 200}
    assert snapshot["peers"]["192.0.2.12"]["priority"] == 100
    assert snapshot["conditions"] == [
        {"name": "pool web has at least 1 server up", "ok": False, "action": "fault", "detail": "0 of 2 servers up"}
    ]
    assert [(t["from"], t["to"]) for t in snapshot["transitions"]] == [
        ("init", "backup"),
        ("backup", "master"),
        ("master", "fault"),
    ]
    assert snapshot["reason"] == "failed: pool web has at least 1 server up"
    assert snapshot["adverts"]["sendLate"]["count"] >= 0


def test_faultSendsPriorityZeroAndRemoves():
    service, clock, addresses, _, balancer = running()
    clock.advance(0.3)
    for server in balancer.pools["web"].servers:
        server.setState(ServerState.DOWN)
    assert decode(service.socket.sent[-1], KEY, 51).priority == 0
    assert addresses.calls[-1] == "remove"
    balancer.pools["web"].servers[0].setState(ServerState.UP)
    assert service.machine.role is Role.BACKUP


def test_stopAsMasterWaitsForThePeer():
    service, clock, addresses, notifier, _ = running()
    clock.advance(0.3)
    service.machine.peers[PEER] = None  # the channel would say a peer is there
    d = service.stopService()
    assert addresses.calls[-1] == "silence"
    assert not d.called
    assert decode(service.socket.sent[-1], KEY, 51).priority == 0
    service._received(peerAdvert(250, 20), PEER, 255, None)
    clock.advance(0.2)
    assert d.called
    assert addresses.calls[-3:] == ["silence", "remove", "close"]
    assert notifier.calls[-1] == ("init", "master", f"stopped; handed over to {PEER}")
    assert service.socket.closed


def test_stopAsBackup():
    service, clock, addresses, notifier, _ = running()
    d = service.stopService()
    assert d.called
    assert "remove" not in addresses.calls
    assert notifier.calls[-1] == ("init", "backup", "stopped")


def test_latencyStats():
    stats = LatencyStats()
    assert stats.plain() == {"count": 0, "p50Ms": None, "p99Ms": None, "maxMs": None}
    for ms in (0.3, 0.4, 3, 4, 40):
        stats.record(ms / 1000)
    assert stats.quantile(0.5) == 5
    assert stats.plain()["maxMs"] == 40
    assert stats.describe() == "p50 <= 5.0ms, p99 <= 40.0ms, max 40.0ms"


# The balancer's service tree


class SlowStop(Service):
    stopsFirst = True

    def __init__(self) -> None:
        self.stopping = Deferred()

    def stopService(self):
        super().stopService()
        return self.stopping


class Recorded(Service):
    def __init__(self, log: list) -> None:
        self.log = log

    def stopService(self):
        super().stopService()
        self.log.append(self.name)


def test_balancerStopsTheHeartbeatFirst():
    """
    The listeners are asked to stop only once the heartbeat has handed
    over.
    """
    stopped: list[str] = []
    root = BalancerService(Config("x.toml", {}, {}), Clock(), serverTLS={})
    listener = Recorded(stopped)
    listener.setName("listener:web")
    listener.setServiceParent(root)
    ha = SlowStop()
    ha.setServiceParent(root)
    root.startService()
    d = root.stopService()
    assert stopped == [] and not d.called
    ha.stopping.callback(None)
    assert stopped == ["listener:web"] and d.called


def test_cannotStartIsOneLine():
    err = io.StringIO()
    seen = []
    hook = tap._BriefListenErrors(lambda *exc: seen.append(exc), err)
    hook(CannotStart, CannotStart("ha: interface 'eth9' does not exist"), None)
    assert err.getvalue() == "lbproxy: cannot start: ha: interface 'eth9' does not exist\n"
    assert seen == []


# Checks of received adverts


def checks(**changes):
    clock = Clock()
    return AdvertFilter(haConfig(**changes), clock), clock


def test_filterAcceptsAPeer():
    f, _ = checks()
    advert = f.check(peerAdvert(100, 1), PEER, 255)
    assert advert.sender == PEER
    assert not any(f.dropped.values())


def test_filterIgnoresItsOwnAdverts():
    f, _ = checks()
    assert f.check(peerAdvert(100, 1, sender=OWN), OWN, 255) is None
    assert not any(f.dropped.values())


def test_filterCauses():
    f, _ = checks()
    stranger = ipaddress.ip_address("192.0.2.66")
    cases = [
        (peerAdvert(100, 1, sender=stranger), stranger, 255, "source"),
        (peerAdvert(100, 2), PEER, 254, "ttl"),
        (peerAdvert(100, 3, sender=ipaddress.ip_address("192.0.2.13")), PEER, 255, "source"),
        (peerAdvert(100, 4, addresses=()), PEER, 255, "addresses"),
        (b"\0" * 10, PEER, 255, "truncated"),
    ]
    for data, source, ttl, cause in cases:
        before = f.dropped[cause]
        assert f.check(data, source, ttl) is None
        assert f.dropped[cause] == before + 1, cause
    assert f.check(peerAdvert(100, 10), PEER, 255) is not None
    assert f.check(peerAdvert(100, 10), PEER, 255) is None
    assert f.dropped["replay"] == 1


def test_filterMulticastTakesAnySource():
    f, _ = checks(peers=(), multicastGroup=ipaddress.ip_address("224.0.0.18"))
    other = ipaddress.ip_address("192.0.2.13")
    assert f.check(peerAdvert(100, 1, sender=other), other, 255) is not None


def test_filterLogsAtMostOnceASecondPerCause():
    f, clock = checks()
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        for sequence in range(5):
            f.check(b"\0" * 70, PEER, 255)
        clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if "dropped" in e.get("log_format", "")]
    assert [e["what"] for e in lines] == ["1 advert", "4 adverts"]
    assert all("k" * 8 not in str(e) for e in lines)
