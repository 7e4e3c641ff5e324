"""
State machines of the heartbeat on one L{task.Clock}, with recorded
actions and, for several nodes, a simulated link between them that can
lose adverts or be cut; and stand-ins for the heartbeat service's system
parts (addresses, notify, socket, balancer).
"""

from __future__ import annotations

import ipaddress
import itertools

from twisted.internet.task import Clock
from zope.interface import implementer

from twisted.internet.defer import succeed

from lbproxy.config.ha import HAConfig, TrackConfig
from lbproxy.ha.advert import Advert
from lbproxy.ha.interfaces import IHeartbeatActions, INotifier, IVirtualAddresses
from lbproxy.ha.machine import Heartbeat, MachineSettings, Role
from lbproxy.interfaces import IBalancerHealth
from lbproxy.core.model import StateChange
from lbproxy.core.pool import Pool, Server
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin

GROUP = 51
_sequences = itertools.count(1)


def address(text: str):
    return ipaddress.ip_address(text)


def advertFrom(sender: str, priority: int, interval: float = 1.0, solicit: bool = False, yielding: bool = False) -> Advert:
    return Advert(
        group=GROUP,
        priority=priority,
        interval=interval,
        sequence=next(_sequences),
        sender=address(sender),
        solicit=solicit,
        yielding=yielding,
    )


@implementer(IHeartbeatActions)
class RecordingActions:
    """
    Records what the machine asks for; with a L{Link}, also sends the
    adverts over it.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, int, bool, float | None]] = []
        self.roles: list[tuple[float, Role, Role, str]] = []
        self.reannounced: list[str] = []
        self.yielded = 0
        self.link: Link | None = None
        self.machine: Heartbeat | None = None

    def sendAdvert(self, priority, solicit, due, yielding):
        self.sent.append((self.clock.seconds(), priority, solicit, due))
        if yielding:
            self.yielded += 1
        if self.link is not None:
            self.link.carry(self.machine, priority, solicit, yielding)

    def roleChanged(self, old, new, reason):
        self.roles.append((self.clock.seconds(), old, new, reason))

    def reannounce(self, reason):
        self.reannounced.append(reason)

    def priorities(self) -> list[int]:
        return [priority for _, priority, _, _ in self.sent]


def machine(clock: Clock | None = None, **settings) -> tuple[Heartbeat, RecordingActions, Clock]:
    clock = clock or Clock()
    values = dict(address=address("192.0.2.11"), priority=100, interval=1.0)
    values.update(settings)
    if isinstance(values["address"], str):
        values["address"] = address(values["address"])
    actions = RecordingActions(clock)
    heartbeat = Heartbeat(MachineSettings(**values), actions, clock)
    actions.machine = heartbeat
    return heartbeat, actions, clock


class Link:
    """
    Carries every advert a machine sends to the others after C{delay},
    unless the link is cut (or the sender or receiver is cut off).
    """

    def __init__(self, clock: Clock, delay: float = 0.001) -> None:
        self.clock = clock
        self.delay = delay
        self.machines: list[Heartbeat] = []
        self.cut: set[Heartbeat] = set()

    def join(self, heartbeat: Heartbeat, actions: RecordingActions) -> None:
        actions.link = self
        self.machines.append(heartbeat)

    def carry(self, sender: Heartbeat, priority: int, solicit: bool, yielding: bool = False) -> None:
        if sender in self.cut:
            return
        advert = Advert(
            group=GROUP,
            priority=priority,
            interval=sender.settings.interval,
            sequence=next(_sequences),
            sender=sender.settings.address,
            solicit=solicit,
            yielding=yielding,
        )
        for other in self.machines:
            if other is not sender:
                self.clock.callLater(self.delay, self._deliver, other, advert)

    def _deliver(self, receiver: Heartbeat, advert: Advert) -> None:
        if receiver not in self.cut and not any(m.settings.address == advert.sender for m in self.cut):
            receiver.receive(advert)


def pair(clock: Clock | None = None, first: dict | None = None, second: dict | None = None):
    """
    Two machines on one link: C{192.0.2.11} (priority 200) and
    C{192.0.2.12} (priority 100), both not started.
    """
    clock = clock or Clock()
    link = Link(clock)
    a, aActions, _ = machine(clock, **{"address": "192.0.2.11", "priority": 200, **(first or {})})
    b, bActions, _ = machine(clock, **{"address": "192.0.2.12", "priority": 100, **(second or {})})
    link.join(a, aActions)
    link.join(b, bActions)
    return link, (a, aActions), (b, bActions), clock


def masters(*machines: Heartbeat) -> list[Heartbeat]:
    return [m for m in machines if m.role is Role.MASTER]


# Stand-ins for the service's parts

KEY = b"k" * 32
OWN = ipaddress.ip_address("192.0.2.11")
PEER = ipaddress.ip_address("192.0.2.12")
VIPS = (ipaddress.ip_interface("192.0.2.100/24"),)


def haConfig(**changes) -> HAConfig:
    values = dict(
        group=51,
        priority=200,
        interval=0.2,
        interface="eth0",
        address=OWN,
        virtualAddresses=VIPS,
        keyFile="/unused",
        key=KEY,
        peers=(PEER,),
        channelPort=0,
        track=(TrackConfig("pool", pool="web"),),
    )
    values.update(changes)
    return HAConfig(**values)


@implementer(IVirtualAddresses)
class FakeAddresses:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def open(self):
        self.calls.append("open")

    def add(self):
        self.calls.append("add")

    def remove(self):
        self.calls.append("remove")

    def announce(self):
        self.calls.append("announce")

    def silence(self):
        self.calls.append("silence")

    def close(self):
        self.calls.append("close")


@implementer(INotifier)
class FakeNotifier:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def notify(self, role, previous, reason):
        self.calls.append((role, previous, reason))
        return succeed(None)


class FakeSocket:
    sendErrors = 0

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        self.closed = True


@implementer(IBalancerHealth)
class FakeBalancer:
    """
    A balancer's health as the live model gives it: pools whose servers'
    changes, and listeners whose binding, are announced to the observers.
    """

    def __init__(self) -> None:
        self.pools: dict[str, Pool] = {}
        self.unbound: list[str] = []
        self.observers: list = []
        self.addPool(Pool("web", [Server("a", "x:1"), Server("b", "x:2")], SmoothWeightedRoundRobin()))

    def unboundListeners(self):
        return list(self.unbound)

    def addObserver(self, observer) -> None:
        self.observers.append(observer)

    def removeObserver(self, observer) -> None:
        self.observers.remove(observer)

    def announce(self, kind: str, name: str, old: str, new: str) -> None:
        change = StateChange(kind, name, old, new, "", 0.0)
        for observer in list(self.observers):
            observer(change)

    def addPool(self, pool: Pool) -> None:
        self.pools[pool.name] = pool
        pool.addObserver(lambda server, old, new, reason: self.announce("server", server.name, old.value, new.value))
        self.announce("pool", pool.name, "", "added")

    def setUnbound(self, names: list[str]) -> None:
        self.unbound = list(names)
        self.announce("listener", ",".join(names), "serving", "stopped")
