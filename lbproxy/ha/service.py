"""
The heartbeat in the daemon: L{HAService} wires the state machine to its
socket, the channel (and the stick-table replication it carries), the
virtual addresses, the notify commands and the balancer's health, and
offers the node's HA state as plain data (L{HAService.snapshot}) and
observers of its role changes.

Start: in twistd's privileged start, the netlink and announcement
sockets are opened (a missing privilege or interface is one line and the
daemon does not start), virtual addresses left on the interface by a
previous run are removed (a node starts as backup), the advert socket is
bound and the channel listens. Then the machine starts, after the
listeners are bound.

Stop: the heartbeat stops before the listeners (L{stopsFirst}, see
L{lbproxy.service.BalancerService.stopService}): a master keeps its
addresses and keeps serving on them until the peer has taken over (see
L{lbproxy.ha.machine}), then removes them; only then do the listeners
close.

One instance per heartbeat, no module state: the control process of a
multi-process lbproxy runs it alone.
"""

from __future__ import annotations

import bisect
import errno

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.config.ha import HAConfig
from lbproxy.errors import CannotStart
from lbproxy.ha.addresses import NetlinkAddresses
from lbproxy.ha.advert import Address, Advert, Sequence, encode
from lbproxy.ha.channel import Channel
from lbproxy.ha.interfaces import IHeartbeatActions, IHeartbeatStatus, INotifier, IVirtualAddresses
from lbproxy.ha.machine import Heartbeat, MachineSettings, Role
from lbproxy.ha.notify import CommandNotifier
from lbproxy.ha.replication import Replication
from lbproxy.ha.tracking import Tracker
from lbproxy.ha.transport import AdvertFilter, AdvertSocket, openAdvertSocket
from lbproxy.interfaces import IBalancerHealth


class LatencyStats:
    """
    A bounded histogram of delays, in seconds: count, maximum and
    quantiles (to the bucket).
    """

    #: Bucket upper bounds, in milliseconds.
    BOUNDS = (0.1, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, float("inf"))

    def __init__(self) -> None:
        self.counts = [0] * len(self.BOUNDS)
        self.count = 0
        self.maximum = 0.0

    def record(self, seconds: float) -> None:
        ms = max(0.0, seconds * 1000)
        self.counts[bisect.bisect_left(self.BOUNDS, ms)] += 1
        self.count += 1
        self.maximum = max(self.maximum, ms)

    def quantile(self, q: float) -> float | None:
        """
        The upper bound (ms) of the bucket holding quantile C{q}, at most
        the maximum seen.
        """
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for bound, count in zip(self.BOUNDS, self.counts):
            seen += count
            if seen >= rank:
                return min(bound, self.maximum)
        return self.maximum

    def plain(self) -> dict:
        return {
            "count": self.count,
            "p50Ms": self.quantile(0.5),
            "p99Ms": self.quantile(0.99),
            "maxMs": round(self.maximum, 3) if self.count else None,
        }

    def describe(self) -> str:
        if not self.count:
            return "none"
        return f"p50 <= {self.quantile(0.5):.1f}ms, p99 <= {self.quantile(0.99):.1f}ms, max {self.maximum:.1f}ms"


@implementer(IHeartbeatActions, IHeartbeatStatus)
class HAService(Service):
    """
    The heartbeat of one node.

    @ivar machine: the L{Heartbeat} state machine.
    @ivar sendLate: how late periodic adverts went out (L{LatencyStats}).
    @ivar receiveDelay: from the kernel receiving an advert to the
        machine handling it.
    """

    log = Logger()
    #: See L{lbproxy.service.BalancerService.stopService}.
    stopsFirst = True

    def __init__(
        self,
        config: HAConfig,
        balancer: IBalancerHealth,
        reactor,
        addresses: IVirtualAddresses | None = None,
        notifier: INotifier | None = None,
        sequence: Sequence | None = None,
        stickTables: dict | None = None,
    ) -> None:
        """
        @param stickTables: the stick tables to replicate to the peers over
            the channel, by pool name (L{lbproxy.ha.replication}).
        """
        if not config.key:
            raise ValueError("the [ha] key is not loaded (see lbproxy.config.ha.loadFiles)")
        self.config = config
        self._reactor = reactor
        self.addresses = addresses or NetlinkAddresses(
            config.interface,
            config.virtualAddresses,
            reactor,
            config.announceCount,
            config.announceInterval,
            config.addressLifetime,
        )
        self.notifier = notifier or CommandNotifier(config.notify, config.group, reactor)
        self._sequence = sequence or Sequence()
        self.machine = Heartbeat(
            MachineSettings(
                address=config.address,
                priority=config.priority,
                interval=config.interval,
                preempt=config.preempt,
                preemptDelay=config.preemptDelay,
                handoverTimeout=config.handoverTimeout,
            ),
            self,
            reactor,
        )
        self.filter = AdvertFilter(config, reactor)
        self.tracker = Tracker(config.track, balancer, self.machine.setHealth, reactor)
        self.replication = Replication(stickTables or {}, config.peers, reactor) if config.channelPort else None
        self.channel = (
            Channel(config, reactor, self.machine.peerGone, messages=self.replication) if config.channelPort else None
        )
        self.socket: AdvertSocket | None = None
        self.advertsSent = 0
        self.sendLate = LatencyStats()
        self.receiveDelay = LatencyStats()
        self._observers: list = []
        self._notified: Deferred = succeed(None)
        self._opened = False

    # Service

    def privilegedStartService(self) -> None:
        self.addresses.open()
        self._opened = True
        # A node starts as backup: addresses left by a run that was killed
        # go (an operator or the kernel would otherwise answer for them).
        self.addresses.remove()
        try:
            sock = openAdvertSocket(self.config, getattr(self.addresses, "index", 0))
        except OSError as e:
            self.addresses.close()
            where = self.config.multicastGroup or self.config.address
            raise CannotStart(
                f"ha: cannot open the advert socket on {where} port {self.config.port}: "
                f"{e.strerror or errno.errorcode.get(e.errno, e)}"
            )
        self.socket = AdvertSocket(sock, self.config, self._received, self._reactor, getattr(self.addresses, "index", 0))
        if self.channel is not None:
            self.channel.listen()
        super().privilegedStartService()

    def startService(self) -> None:
        if not self._opened:
            self.privilegedStartService()
        super().startService()
        self.log.info(
            "ha: group {group} on {interface}, priority {priority}, adverts every {interval:g}s to {to}; "
            "virtual addresses {addresses}",
            group=self.config.group,
            interface=self.config.interface,
            priority=self.config.priority,
            interval=self.config.interval,
            to=", ".join(map(str, self.config.peers)) or str(self.config.multicastGroup),
            addresses=", ".join(map(str, self.config.virtualAddresses)),
        )
        self.socket.startReading()
        if self.channel is not None:
            self.channel.start()
        self.tracker.start()
        self.machine.setHealth(*self.tracker.summary())
        self.machine.start()

    def stopService(self) -> Deferred:
        super().stopService()
        self.tracker.stop()
        # A host that heard our repeat after the new master's announcement
        # would send to us once we have let the addresses go.
        self.addresses.silence()
        if self.channel is not None:
            awaitPeer = self.channel.connected()
        else:
            awaitPeer = bool(self.machine.peers)
        d = self.machine.stop(awaitPeer=awaitPeer)
        d.addCallback(lambda _: self._close())
        return d

    def _close(self) -> Deferred:
        self.socket.close()
        self.addresses.close()
        self._opened = False
        self.filter.flush()
        self.log.info(
            "ha: stopped; {sent} adverts sent, late by {late}; adverts handled after {delay}; "
            "dropped: {dropped}",
            sent=self.advertsSent,
            late=self.sendLate.describe(),
            delay=self.receiveDelay.describe(),
            dropped=", ".join(f"{k} {v}" for k, v in self.filter.dropped.items() if v) or "none",
        )
        waits = [self._notified]
        if self.replication is not None:
            self.replication.stop()
        if self.channel is not None:
            stopped = self.channel.stop()
            if stopped is not None:
                waits.append(stopped)
        return DeferredList(waits)

    # IHeartbeatActions

    def sendAdvert(self, priority: int, solicit: bool, due: float | None, yielding: bool = False) -> None:
        advert = Advert(
            group=self.config.group,
            priority=priority,
            interval=self.config.interval,
            sequence=self._sequence.next(),
            sender=self.config.address,
            addresses=self.config.virtualAddresses,
            solicit=solicit,
            yielding=yielding,
        )
        if due is not None:
            self.sendLate.record(self._reactor.seconds() - due)
        self.socket.send(encode(advert, self.config.key))
        self.advertsSent += 1

    def roleChanged(self, old: Role, new: Role, reason: str) -> None:
        if new is Role.MASTER:
            self.addresses.add()
            self.addresses.announce()
        elif old is Role.MASTER:
            self.addresses.remove()
        self._notified = self.notifier.notify(new.value, old.value, reason)
        for observer in list(self._observers):
            try:
                observer(old.value, new.value, reason)
            except Exception:
                self.log.failure("ha: role observer {observer!r} failed", observer=observer)

    def reannounce(self, reason: str) -> None:
        self.log.info("ha: announcing the virtual addresses again: {reason}", reason=reason)
        self.addresses.announce()

    # Receiving

    def _received(self, data: bytes, source: Address, ttl: int | None, delay: float | None) -> None:
        advert = self.filter.check(data, source, ttl)
        if advert is None:
            return
        if delay is not None:
            self.receiveDelay.record(delay)
        self.machine.receive(advert)

    # IHeartbeatStatus

    def addObserver(self, observer) -> None:
        self._observers.append(observer)

    def removeObserver(self, observer) -> None:
        self._observers.remove(observer)

    def snapshot(self) -> dict:
        machine = self.machine
        now = self._reactor.seconds()
        last = machine.transitions[-1] if machine.transitions else None
        return {
            "group": self.config.group,
            "role": machine.role.value,
            "reason": last.reason if last else "",
            "since": last.time if last else None,
            "leaving": machine.leaving,
            "priority": {"effective": machine.priority, "configured": self.config.priority},
            "interval": self.config.interval,
            "interface": self.config.interface,
            "address": str(self.config.address),
            "virtualAddresses": [str(a) for a in self.config.virtualAddresses],
            "master": str(machine.master) if machine.master else None,
            "peers": {
                str(address): {
                    "lastSeen": seen.time,
                    "secondsAgo": round(now - seen.time, 3),
                    "priority": seen.priority,
                    "master": seen.master,
                    "channel": self.channel.connected(address) if self.channel else None,
                }
                for address, seen in machine.peers.items()
            },
            "channel": (
                {str(p): self.channel.connected(p) for p in self.config.peers} if self.channel else None
            ),
            "transitions": [
                {"time": t.time, "from": t.old.value, "to": t.new.value, "reason": t.reason}
                for t in machine.transitions
            ],
            "dropped": dict(self.filter.dropped),
            "replication": self.replication.snapshot() if self.replication is not None else None,
            "conditions": [state.plain() for state in self.tracker.states],
            "fault": machine.fault,
            "adverts": {
                "sent": self.advertsSent,
                "sendErrors": self.socket.sendErrors if self.socket else 0,
                "sendLate": self.sendLate.plain(),
                "receiveDelay": self.receiveDelay.plain(),
            },
        }


def attach(balancerService, config: HAConfig, reactor) -> HAService:
    """
    Add the heartbeat of C{config} to C{balancerService} (after its
    listeners, so it starts once they are bound, and stops before them).
    """
    balancer = balancerService.balancer
    tables = {
        name: pool.stick for name, pool in balancer.pools.items() if pool.stick is not None and pool.stick.replicate
    }
    ha = HAService(config, balancer, reactor, stickTables=tables)
    ha.setName("ha")
    ha.setServiceParent(balancerService)
    balancer.addPart("ha", ha.snapshot)
    ha.addObserver(lambda old, new, reason: balancer.announce("ha", f"group {config.group}", old, new, reason))
    return ha

