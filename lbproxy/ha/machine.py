"""
The heartbeat's state machine: VRRPv3 (RFC 5798) roles and timers, with
lbproxy's additions, driven by an injected clock and acting only through
an L{IHeartbeatActions}: no sockets, no addresses, no processes, so every
transition and timer is tested on a L{twisted.internet.task.Clock}, and
another driver (a thread of its own) could run it unchanged.

Roles: C{INIT} (not running), C{BACKUP}, C{MASTER}, C{FAULT} (the local
balancer is unhealthy: this node must not serve).

The timers, as in VRRPv3, from the master's advertised interval::

    Skew_Time            = (256 - priority) * interval / 256
    Master_Down_Interval = 3 * interval + Skew_Time

What differs from VRRPv3, and why:

  - Start (and recovery from a fault): the node enters C{BACKUP}, sends a
    I{solicit} advert at once, which a master answers with an advert
    right away, and waits one interval plus its skew (instead of the whole
    Master_Down_Interval) before taking over. A master advertises every
    interval even if the solicit or its answer is lost, so hearing
    nothing for that long means there is none; a node configured as
    master is master after 1.0 to 1.1 intervals. The risk is a dual
    master when two adverts in a row are lost at boot (a link still
    coming up): it is resolved as any dual master is, the first time
    either node hears the other.
  - Preemption happens when it is due, not after the down timer: a
    backup with C{preempt} that hears a master of lower priority takes
    over at once, or after C{preemptDelay} of hearing such a master
    (counted from the first of its adverts; a better master heard in
    between starts the count again).
  - A peer whose process is known to be gone (L{peerGone}: the channel
    between the nodes was closed by the peer's kernel and new connections
    are refused) is treated as if it had sent priority 0: the backup
    takes over after its skew, without waiting for Master_Down_Interval.
  - Leaving (L{stop}) as master: priority 0 adverts every interval, but
    the node stays master, addresses and all, until it hears another node
    advertise as master (then waits one more interval for that node's
    announcements to reach the hosts), or until C{handoverTimeout}. A
    client thus always finds someone serving the addresses.
  - A master that hears a master of lower priority (a dual master, after
    a partition heals) stays master, advertises at once and announces its
    addresses again (L{IHeartbeatActions.reannounce}): hosts may have
    learned the loser's link-layer address. The loser may hear the winner
    first and step down before the winner ever hears it: so a master
    stepping down sends one last advert, flagged I{yield}, on which the
    winner announces again too.
  - Health (L{setHealth}): a failed condition of the C{fault} kind puts
    the node in C{FAULT} (a master sends priority 0 first, so the backup
    takes over after only its skew); weighted conditions lower the
    priority the node advertises.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from lbproxy.ha.advert import Address, Advert
from lbproxy.ha.interfaces import IHeartbeatActions

#: Transitions kept for the snapshot.
TRANSITIONS_KEPT = 32


class Role(enum.Enum):
    INIT = "init"
    BACKUP = "backup"
    MASTER = "master"
    FAULT = "fault"


@dataclass(frozen=True)
class MachineSettings:
    """
    What the state machine needs of the configuration.

    @ivar address: this node's own address, the tie-break between equal
        priorities (the higher address wins).
    @ivar priority: the configured priority, 1-254.
    @ivar interval: seconds between this node's adverts while master.
    @ivar preemptDelay: seconds a backup able to preempt waits first.
    @ivar handoverTimeout: the longest a leaving master waits for another
        node to take over.
    """

    address: Address
    priority: int = 100
    interval: float = 1.0
    preempt: bool = True
    preemptDelay: float = 0.0
    handoverTimeout: float = 3.0


@dataclass(frozen=True)
class Transition:
    """
    One role change, for the snapshot.

    @ivar time: the clock's C{seconds()} then.
    """

    time: float
    old: Role
    new: Role
    reason: str


@dataclass
class PeerSeen:
    """
    The last advert accepted from one peer.
    """

    time: float
    priority: int
    interval: float
    #: False for a starting node's solicit (it is not master).
    master: bool


def skewTime(priority: int, interval: float) -> float:
    return (256 - priority) * interval / 256


def masterDownInterval(priority: int, interval: float) -> float:
    return 3 * interval + skewTime(priority, interval)


class Heartbeat:
    """
    The state machine of one node of one group.

    @ivar role: the current L{Role}.
    @ivar master: the address of the master this backup follows, or None.
    @ivar masterInterval: the interval the master advertises (this node's
        own until one is heard), which its timers are computed from.
    @ivar peers: L{PeerSeen} by sender address.
    @ivar transitions: the last L{TRANSITIONS_KEPT} L{Transition}s.
    @ivar leaving: L{stop} was called while master: handing over.
    """

    log = Logger()

    def __init__(self, settings: MachineSettings, actions: IHeartbeatActions, clock) -> None:
        self.settings = settings
        self._actions = actions
        self._clock = clock
        self.role = Role.INIT
        self.master: Address | None = None
        self.masterInterval = settings.interval
        self.peers: dict[Address, PeerSeen] = {}
        self.transitions: collections.deque[Transition] = collections.deque(maxlen=TRANSITIONS_KEPT)
        self.leaving = False
        self._fault: str | None = None
        self._penalty = 0
        self._started = False
        self._downTimer = None
        self._advertTimer = None
        self._advertDue = 0.0
        self._preemptTimer = None
        self._handoverTimer = None
        self._stopped: Deferred | None = None
        self._handedTo: Address | None = None

    # What the node is

    @property
    def priority(self) -> int:
        """
        The priority advertised now: the configured one lowered by the
        weights of failed conditions, kept from 1 to 254.
        """
        return max(1, min(254, self.settings.priority - self._penalty))

    @property
    def fault(self) -> str | None:
        """
        Why the node is unhealthy, or None.
        """
        return self._fault

    def skewTime(self) -> float:
        return skewTime(self.priority, self.masterInterval)

    def masterDownInterval(self) -> float:
        return masterDownInterval(self.priority, self.masterInterval)

    def _beats(self, advert: Advert) -> bool:
        """
        Whether this node wins against the sender of C{advert}: a higher
        priority, or an equal one and a higher address.
        """
        if self.priority != advert.priority:
            return self.priority > advert.priority
        return _addressKey(self.settings.address) > _addressKey(advert.sender)

    # Inputs

    def start(self) -> None:
        """
        Start: a healthy node becomes backup and looks for a master
        (solicit, then one interval plus skew); an unhealthy one enters
        C{FAULT}.
        """
        if self._started:
            return
        self._started = True
        if self._fault is not None:
            self._setRole(Role.FAULT, f"started with a failed condition: {self._fault}")
        else:
            self._lookForMaster("started")

    def stop(self, awaitPeer: bool = True) -> Deferred:
        """
        Stop. A master hands over first (see the module docstring).

        @param awaitPeer: whether another node is there to take over (its
            channel is connected): without one, a master stops at once,
            after a single priority 0 advert.
        @return: a L{Deferred} firing once the node is in C{INIT}.
        """
        if self._stopped is not None:
            return self._stopped
        if not self._started or self.role is Role.INIT:
            self._started = False
            return succeed(None)
        if self.role is not Role.MASTER:
            self._cancelTimers()
            self._setRole(Role.INIT, "stopped")
            self._started = False
            return succeed(None)
        self.leaving = True
        self._handedTo = None
        self._stopped = stopped = Deferred()
        self._cancelTimers()
        if not awaitPeer:
            self._actions.sendAdvert(0, False, None, False)
            self._finishStop("stopped; no peer to hand over to")
            return stopped
        self._advertDue = self._clock.seconds()
        self._leavingAdvert()
        self._handoverTimer = self._clock.callLater(
            self.settings.handoverTimeout,
            self._finishStop,
            f"stopped; no peer took over within {self.settings.handoverTimeout:g}s",
        )
        return stopped

    def receive(self, advert: Advert) -> None:
        """
        An authenticated advert from another node of the group arrived.
        """
        now = self._clock.seconds()
        self.peers[advert.sender] = PeerSeen(now, advert.priority, advert.interval, advert.fromMaster)
        if self.role is Role.MASTER:
            self._receiveAsMaster(advert)
        elif self.role is Role.BACKUP:
            self._receiveAsBackup(advert)
        elif self.role is Role.FAULT and advert.fromMaster and not advert.leaving:
            self.master = advert.sender

    def _receiveAsMaster(self, advert: Advert) -> None:
        if self.leaving:
            if advert.priority and advert.fromMaster:
                self._handedOver(advert.sender)
            return
        if advert.yielding:
            # Another master stepped down for us on hearing us (a dual
            # master, seen first from its side): hosts may have learned
            # its link-layer address for ours.
            self._actions.reannounce(f"{advert.sender} stepped down as master for us")
            return
        if advert.solicit or advert.leaving:
            # A starting node asks, or another master is leaving: tell
            # them who is master now.
            self._actions.sendAdvert(self.priority, False, None, False)
            return
        if not self._beats(advert):
            # Tell the winner we step down: if it had not heard us, it
            # learns there was a dual master and announces again.
            self._actions.sendAdvert(self.priority, False, None, True)
            self._becomeBackup(
                advert,
                f"master {advert.sender} has priority {advert.priority} "
                + (
                    f"above ours ({self.priority})"
                    if advert.priority > self.priority
                    else f"equal to ours and a higher address than {self.settings.address}"
                ),
            )
            return
        # Another master we win against: a dual master (a partition that
        # healed, adverts lost at boot). Assert ourselves.
        self.log.warn(
            "ha: dual master: {peer} (priority {theirs}) also advertises as master; "
            "we stay master (priority {ours}) and announce our addresses again",
            peer=str(advert.sender),
            theirs=advert.priority,
            ours=self.priority,
        )
        self._actions.sendAdvert(self.priority, False, None, False)
        self._actions.reannounce(f"dual master with {advert.sender} resolved in our favour")

    def _receiveAsBackup(self, advert: Advert) -> None:
        if not advert.fromMaster:
            return
        if advert.leaving:
            if self.master is None or advert.sender == self.master:
                self.master = advert.sender
                self._cancelPreempt()
                self._armDown(self.skewTime(), f"master {advert.sender} is leaving (priority 0)")
            return
        self.master = advert.sender
        self.masterInterval = advert.interval
        if not self.settings.preempt or not self._beats(advert) or advert.priority == self.priority:
            # Equal priorities never preempt: only masters break ties.
            self._cancelPreempt()
            self._armDown(self.masterDownInterval(), None)
            return
        reason = f"preempting master {advert.sender}: its priority {advert.priority} is below ours ({self.priority})"
        if self.settings.preemptDelay <= 0:
            self._becomeMaster(reason)
            return
        self._armDown(self.masterDownInterval(), None)
        if self._preemptTimer is None:
            self._preemptTimer = self._clock.callLater(
                self.settings.preemptDelay, self._preemptDue, reason + f" for {self.settings.preemptDelay:g}s"
            )

    def setHealth(self, fault: str | None, penalty: int) -> None:
        """
        The tracked conditions changed.

        @param fault: why the node must not serve (the failed conditions
            of the C{fault} kind, named), or None when none failed.
        @param penalty: the sum of the weights of the failed weighted
            conditions.
        """
        before = self.priority
        self._penalty = penalty
        wasFault = self._fault
        self._fault = fault
        if not self._started or self.leaving:
            return
        if fault is not None and self.role is not Role.FAULT:
            if self.role is Role.MASTER:
                # Hand over at once: the backup waits only its skew.
                self._actions.sendAdvert(0, False, None, False)
            self._cancelTimers()
            self._setRole(Role.FAULT, fault)
            return
        if fault is None and self.role is Role.FAULT:
            self._lookForMaster(f"recovered ({wasFault} no longer holds)" if wasFault else "recovered")
            return
        if self.priority != before:
            self.log.info(
                "ha: priority {new} (was {old}, configured {configured})",
                new=self.priority,
                old=before,
                configured=self.settings.priority,
            )
            if self.role is Role.MASTER:
                self._actions.sendAdvert(self.priority, False, None, False)

    def peerGone(self, address: Address, reason: str) -> None:
        """
        The process of the node at C{address} is known to be gone (not
        merely unreachable). The master this backup follows: take over
        after the skew, as after a priority 0 advert.
        """
        if self.role is Role.BACKUP and self.master == address:
            self._cancelPreempt()
            self._armDown(self.skewTime(), f"master {address} is gone: {reason}")

    # Transitions

    def _setRole(self, role: Role, reason: str) -> None:
        old = self.role
        self.role = role
        self.transitions.append(Transition(self._clock.seconds(), old, role, reason))
        self.log.info(
            "ha: {new} (was {old}): {reason}",
            new=role.value,
            old=old.value,
            reason=reason,
            haRole=role.value,
            haPrevious=old.value,
            haReason=reason,
        )
        self._actions.roleChanged(old, role, reason)

    def _lookForMaster(self, why: str) -> None:
        self.master = None
        self.masterInterval = self.settings.interval
        self._setRole(Role.BACKUP, why)
        self._actions.sendAdvert(self.priority, True, None, False)
        wait = self.settings.interval + self.skewTime()
        self._armDown(wait, f"no master heard within {wait:g}s of looking for one")

    def _becomeBackup(self, advert: Advert, reason: str) -> None:
        self._cancelTimers()
        self.master = advert.sender
        self.masterInterval = advert.interval
        self._setRole(Role.BACKUP, reason)
        self._armDown(self.masterDownInterval(), None)

    def _becomeMaster(self, reason: str) -> None:
        self._cancelTimers()
        self.master = None
        self.masterInterval = self.settings.interval
        self._actions.sendAdvert(self.priority, False, None, False)
        self._setRole(Role.MASTER, reason)
        self._advertDue = self._clock.seconds()
        self._scheduleAdvert()

    # Timers

    def _armDown(self, delay: float, reason: str | None) -> None:
        """
        (Re)start the down timer; when it runs out the node becomes
        master for C{reason} (by default: the master went silent).
        """
        if reason is None:
            reason = (
                f"master {self.master} silent for {delay:.3g}s "
                f"(Master_Down_Interval at its {self.masterInterval:g}s interval)"
            )
        if self._downTimer is not None and self._downTimer.active():
            self._downTimer.cancel()
        self._downTimer = self._clock.callLater(delay, self._becomeMaster, reason)

    def _scheduleAdvert(self) -> None:
        self._advertDue += self.settings.interval
        delay = max(0.0, self._advertDue - self._clock.seconds())
        self._advertTimer = self._clock.callLater(delay, self._periodicAdvert)

    def _periodicAdvert(self) -> None:
        due = self._advertDue
        now = self._clock.seconds()
        if now - due > self.settings.interval:
            # Far behind (a stalled process): restart the schedule from
            # now rather than sending a burst to catch up.
            self._advertDue = now
        self._actions.sendAdvert(self.priority, False, due, False)
        self._scheduleAdvert()

    def _leavingAdvert(self) -> None:
        self._actions.sendAdvert(0, False, None, False)
        self._advertDue += self.settings.interval
        self._advertTimer = self._clock.callLater(
            max(0.0, self._advertDue - self._clock.seconds()), self._leavingAdvert
        )

    def _preemptDue(self, reason: str) -> None:
        self._preemptTimer = None
        if self.role is Role.BACKUP:
            self._becomeMaster(reason)

    def _cancelPreempt(self) -> None:
        if self._preemptTimer is not None:
            if self._preemptTimer.active():
                self._preemptTimer.cancel()
            self._preemptTimer = None

    def _cancelTimers(self) -> None:
        self._cancelPreempt()
        for name in ("_downTimer", "_advertTimer", "_handoverTimer"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    # Leaving

    def _handedOver(self, peer: Address) -> None:
        if self._handedTo is not None:
            return
        self._handedTo = peer
        if self._handoverTimer is not None and self._handoverTimer.active():
            self._handoverTimer.cancel()
        # One more interval with the addresses: the new master's
        # announcements reach the hosts before ours stop answering.
        self._handoverTimer = self._clock.callLater(
            self.settings.interval, self._finishStop, f"stopped; handed over to {peer}"
        )

    def _finishStop(self, reason: str) -> None:
        self._cancelTimers()
        self.leaving = False
        self._started = False
        self._setRole(Role.INIT, reason)
        stopped, self._stopped = self._stopped, None
        if stopped is not None:
            stopped.callback(None)


def _addressKey(address: Address) -> tuple[int, int]:
    return (address.version, int(address))
