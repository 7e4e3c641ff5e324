"""
A connection's phase deadline (L{PhaseTimer}), and the wheel on which the
connections of a busy listener keep theirs (L{TimerWheel}).

A front's connection is always waiting for one thing (a request head, a
login, a server's answer...), with a deadline. A connection that changes
phase a few times in its life (a mail session, a TCP hello) keeps its
deadline on a reactor timer of its own. An HTTP connection changes phase
several times per request, and a client that closes after each request
opens one connection per request: a reactor timer each (created,
rescheduled, cancelled, and about 400 bytes held while it waits) would be
a fixed cost of every request. Such connections share their listener's
L{TimerWheel} instead: one reactor timer for all of them, and a
connection's deadline is a float it moves and a set it joins or leaves.
"""

from __future__ import annotations

from heapq import heappop, heappush
from math import ceil


class TimerWheel:
    """
    The deadlines of many L{PhaseTimer}s, found on one reactor timer that
    wakes every C{resolution} seconds while a deadline waits (never while
    none does).

    A deadline goes to the slot of the first wake-up at or after it, a set
    of the timers due then; a timer whose deadline moved later meanwhile
    joins a later slot when its slot comes. A phase therefore expires at
    most C{resolution} seconds late, and what a connection costs per phase
    is a comparison, and per connection a set entry. Once the last timer
    leaves, the reactor timer is cancelled.

    @ivar resolution: seconds between two wake-ups.
    """

    __slots__ = ("_reactor", "resolution", "_slots", "_heap", "_call", "_armed", "_done", "_count")

    def __init__(self, reactor, resolution: float) -> None:
        if not resolution > 0:
            raise ValueError(f"a timer wheel's resolution must be positive, not {resolution!r}")
        self._reactor = reactor
        self.resolution = resolution
        # Slot number (a wake-up time divided by the resolution) -> timers.
        self._slots: dict[int, set] = {}
        # The slot numbers of _slots, earliest first.
        self._heap: list[int] = []
        self._call = None
        # The slot the reactor timer is set for.
        self._armed: int | None = None
        # Slots up to this one were handled: nothing joins them again.
        self._done = -1
        # The timers waiting.
        self._count = 0

    def __len__(self) -> int:
        """
        The timers waiting.
        """
        return self._count

    def add(self, timer: PhaseTimer, deadline: float) -> set:
        """
        Wait for C{deadline} on C{timer}'s behalf: its C{_due} is called at
        the first wake-up at or after it.

        @return: the set of the slot C{timer} joined, which it leaves to
            stop waiting.
        """
        slot = ceil(deadline / self.resolution)
        if slot <= self._done:
            slot = self._done + 1
        timers = self._slots.get(slot)
        if timers is None:
            timers = self._slots[slot] = set()
            heappush(self._heap, slot)
            if self._armed is None or slot < self._armed:
                self._arm(slot)
        timers.add(timer)
        self._count += 1
        timer._wake = slot * self.resolution
        return timers

    def move(self, timer: PhaseTimer, timers: set, deadline: float) -> set:
        """
        Wait for C{deadline} instead, for C{timer} which waits in the slot
        of C{timers}; return the set of its new slot.
        """
        timers.discard(timer)
        self._count -= 1
        return self.add(timer, deadline)

    def remove(self, timer: PhaseTimer, timers: set) -> None:
        """
        C{timer}, which waits in the slot of C{timers}, waits no more.
        """
        timers.discard(timer)
        self._count -= 1
        if not self._count:
            self.stop()

    def _arm(self, slot: int) -> None:
        delay = max(0.0, slot * self.resolution - self._reactor.seconds())
        call = self._call
        if call is not None and call.active():
            call.reset(delay)
        else:
            self._call = self._reactor.callLater(delay, self._tick)
        self._armed = slot

    def _tick(self) -> None:
        self._call = None
        self._armed = None
        now = self._reactor.seconds()
        heap = self._heap
        slots = self._slots
        resolution = self.resolution
        # A slot is due at its wake-up time, give or take the float error
        # of the delay the reactor timer was set with.
        horizon = now + resolution * 1e-6
        while heap and heap[0] * resolution <= horizon:
            slot = heappop(heap)
            self._done = slot
            timers = slots.pop(slot)
            # A timer expiring may stop or move others of the same slot.
            for timer in tuple(timers):
                if timer._slot is timers:
                    timer._slot = None
                    self._count -= 1
                    timer._due(now)
        if not self._count:
            self.stop()
        elif heap:
            self._arm(heap[0])

    def stop(self) -> None:
        """
        Forget every deadline and cancel the reactor timer.
        """
        for timers in self._slots.values():
            for timer in timers:
                timer._slot = None
        self._slots.clear()
        self._heap.clear()
        self._count = 0
        self._armed = None
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()


class PhaseTimer:
    """
    A connection's current phase and its deadline.

    L{enter} starts a phase with a time limit; L{extend} moves its deadline
    later (activity in a phase limited by idleness), which costs a float
    assignment: the timer finds out when it wakes. When the deadline
    passes, C{owner.phaseExpired(phase)} is called once. (The timer holds
    its owner rather than a bound method: one object less per connection.)

    Without a wheel the timer is a reactor timer of its own, set for the
    deadline. With a L{TimerWheel}, the deadline waits on the wheel: a
    phase expires up to the wheel's resolution late, and entering a phase
    moves nothing unless its deadline comes before the wake-up the timer
    already waits for.

    @ivar phase: the current phase's name (the front's own words), or
        None once stopped.
    @ivar since: when the phase began (the reactor's clock).
    @ivar deadline: when it expires, or None when it has no limit.
    """

    __slots__ = ("_reactor", "_owner", "_wheel", "_call", "_slot", "_wake", "phase", "since", "deadline")

    def __init__(self, reactor, owner, wheel: TimerWheel | None = None) -> None:
        """
        @param owner: what the timer times; its C{phaseExpired(phase)} is
            called when a phase's deadline passes.
        """
        self._reactor = reactor
        self._owner = owner
        self._wheel = wheel
        # Without a wheel: the reactor timer.
        self._call = None
        # With one: the set of the slot the timer waits in, and its time.
        self._slot: set | None = None
        self._wake = 0.0
        self.phase: str | None = None
        self.since = 0.0
        self.deadline: float | None = None

    def enter(self, phase: str, limit: float | None, now: float | None = None) -> None:
        """
        Begin C{phase}, to expire C{limit} seconds from C{now} (or never,
        for C{None} or 0).
        """
        if now is None:
            now = self._reactor.seconds()
        self.phase = phase
        self.since = now
        if not limit:
            self.deadline = None
            return
        deadline = self.deadline = now + limit
        wheel = self._wheel
        if wheel is not None:
            slot = self._slot
            if slot is None:
                self._slot = wheel.add(self, deadline)
            elif deadline <= self._wake - wheel.resolution:
                # A shorter phase than the one the timer waits for.
                self._slot = wheel.move(self, slot, deadline)
            return
        call = self._call
        if call is None:
            self._call = self._reactor.callLater(max(0.0, deadline - self._reactor.seconds()), self._fire)
        elif call.getTime() > deadline:
            call.reset(max(0.0, deadline - self._reactor.seconds()))

    def extend(self, deadline: float) -> None:
        """
        Move the current phase's deadline to C{deadline} (later than it was:
        the timer finds out when it wakes).
        """
        if self.deadline is not None:
            self.deadline = deadline

    def stop(self) -> None:
        """
        No phase any more: nothing expires.
        """
        self.phase = None
        self.deadline = None
        slot = self._slot
        if slot is not None:
            self._slot = None
            self._wheel.remove(self, slot)
            return
        call = self._call
        if call is not None:
            self._call = None
            if call.active():
                call.cancel()

    def _due(self, now: float) -> None:
        """
        The wheel's wake-up for this timer: expire, or wait on.
        """
        deadline = self.deadline
        if deadline is None or self.phase is None:
            return
        if now < deadline:
            self._slot = self._wheel.add(self, deadline)
            return
        self.deadline = None
        self._owner.phaseExpired(self.phase)

    def _fire(self) -> None:
        self._call = None
        deadline = self.deadline
        if deadline is None or self.phase is None:
            return
        now = self._reactor.seconds()
        if now < deadline:
            self._call = self._reactor.callLater(deadline - now, self._fire)
            return
        self.deadline = None
        self._owner.phaseExpired(self.phase)
