"""
Tests for lbproxy.core.timers: a connection's phase timer, on a reactor
timer of its own or on a listener's timer wheel.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.core.timers import PhaseTimer, TimerWheel


class Owner:
    """
    What a timer times, calling C{expired(phase)} when a phase expires.
    """

    def __init__(self, expired):
        self.phaseExpired = expired


class PhaseTimerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.expired = []

    def test_expires(self):
        timer = PhaseTimer(self.clock, Owner(self.expired.append))
        timer.enter("login", 60)
        self.clock.advance(59.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["login"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_extendCostsNoReschedule(self):
        """
        Extending a deadline moves no timer: the timer, when it fires
        early, waits the rest.
        """
        timer = PhaseTimer(self.clock, Owner(self.expired.append))
        timer.enter("body", 10)
        (call,) = self.clock.getDelayedCalls()
        self.clock.advance(8)
        timer.extend(18)
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.clock.advance(2)
        self.assertEqual(self.expired, [])
        self.clock.advance(8)
        self.assertEqual(self.expired, ["body"])

    def test_shorterPhaseMovesTheTimer(self):
        timer = PhaseTimer(self.clock, Owner(self.expired.append))
        timer.enter("idle", 300)
        timer.enter("head", 10)
        self.clock.advance(10)
        self.assertEqual(self.expired, ["head"])

    def test_noLimitAndStop(self):
        timer = PhaseTimer(self.clock, Owner(self.expired.append))
        timer.enter("connect", None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        timer.enter("login", 5)
        timer.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual((self.expired, timer.phase), ([], None))



class TimerWheelTests(SynchronousTestCase):
    """
    Phase timers on a L{TimerWheel}: one reactor timer for all of them.
    """

    def setUp(self):
        self.clock = Clock()
        self.wheel = TimerWheel(self.clock, 0.25)
        self.expired = []

    def timer(self, name="t"):
        return PhaseTimer(self.clock, Owner(lambda phase: self.expired.append((name, phase, self.clock.seconds()))), self.wheel)

    def test_expiresOnTheWakeUpAfterTheDeadline(self):
        """
        A deadline between two wake-ups expires at the next one: at most a
        resolution late, never early.
        """
        timer = self.timer()
        self.clock.advance(0.1)
        timer.enter("head", 10)
        self.clock.advance(9.99)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.01)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.15)
        self.assertEqual(self.expired, [("t", "head", 10.25)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneReactorTimerForAll(self):
        """
        Any number of timers, entering any number of phases, keep one
        reactor timer; entering a phase moves nothing unless it ends before
        the wake-up its timer waits for.
        """
        timers = [self.timer(str(index)) for index in range(100)]
        for timer in timers:
            timer.enter("idle", 60)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 60)
        for _ in range(10):
            for timer in timers:
                timer.enter("head", 10)
                timer.enter("wait", 30)
                timer.enter("idle", 60)
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.assertEqual(call.getTime(), 10)
        self.assertEqual(len(self.wheel), 100)

    def test_extendedDeadlineWaitsOn(self):
        """
        A deadline extended after the timer joined its slot is found at
        that slot's wake-up, and the timer waits on for the rest.
        """
        timer = self.timer()
        timer.enter("body", 10)
        self.clock.advance(8)
        timer.extend(18)
        self.clock.advance(2)
        self.assertEqual(self.expired, [])
        self.assertEqual(len(self.wheel), 1)
        self.clock.advance(8)
        self.assertEqual(self.expired, [("t", "body", 18)])

    def test_shorterPhaseMovesTheTimer(self):
        timer = self.timer()
        timer.enter("idle", 300)
        timer.enter("head", 10)
        self.clock.advance(10)
        self.assertEqual(self.expired, [("t", "head", 10)])
        self.assertEqual(len(self.wheel), 0)

    def test_stopLeavesTheWheel(self):
        """
        A stopped timer, or one in a phase without limit, never expires;
        once no timer waits, the wheel stops waking up.
        """
        stopped, unlimited = self.timer("stopped"), self.timer("unlimited")
        stopped.enter("login", 5)
        unlimited.enter("login", 5)
        stopped.stop()
        unlimited.enter("connect", None)
        self.assertEqual(len(self.wheel), 1)
        self.clock.advance(10)
        self.assertEqual(self.expired, [])
        self.assertEqual((stopped.phase, unlimited.phase), (None, "connect"))
        self.assertEqual(len(self.wheel), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_expiryStopsAnotherOfTheSameSlot(self):
        """
        A timer expiring may stop another due at the same wake-up (a client
        connection's expiry closing its server side): that one does not
        expire.
        """
        first, second = self.timer("first"), self.timer("second")
        stoppers = {"first": second, "second": first}

        def expired(name):
            def callback(phase):
                self.expired.append(name)
                stoppers[name].stop()
            return callback

        first._owner = Owner(expired("first"))
        second._owner = Owner(expired("second"))
        first.enter("wait", 5)
        second.enter("wait", 5)
        self.clock.advance(5)
        self.assertEqual(len(self.expired), 1)

    def test_reenteredWhileExpiring(self):
        """
        A connection whose phase expiry begins another phase (a keep-alive
        connection going back to idle) waits on the wheel again.
        """
        timer = self.timer()
        timer._owner = Owner(lambda phase: (self.expired.append(phase), phase == "wait" and timer.enter("idle", 1)))
        timer.enter("wait", 2)
        self.clock.advance(2)
        self.assertEqual(self.expired, ["wait"])
        self.clock.advance(1)
        self.assertEqual(self.expired, ["wait", "idle"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_floatSlots(self):
        """
        Wake-ups whose times are not exact in binary floating point still
        expire every deadline, and none early (nor later than a resolution
        and the clock's own step).
        """
        wheel = TimerWheel(self.clock, 0.1)
        timers = []
        for index in range(1, 40):
            timer = PhaseTimer(self.clock, Owner(lambda phase, index=index: self.expired.append((index, self.clock.seconds()))), wheel)
            timer.enter("head", index * 0.1 + 0.03)
            timers.append(timer)
        for _ in range(60):
            self.clock.advance(0.1)
        self.assertEqual([index for index, _ in self.expired], list(range(1, 40)))
        for index, when in self.expired:
            self.assertGreaterEqual(when + 1e-9, index * 0.1 + 0.03)
            self.assertLessEqual(when, index * 0.1 + 0.03 + 0.2 + 1e-9)

    def test_stopForgetsEverything(self):
        """
        L{TimerWheel.stop} cancels the reactor timer and drops every
        deadline.
        """
        timer = self.timer()
        timer.enter("idle", 60)
        self.wheel.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(120)
        self.assertEqual(self.expired, [])
        timer.stop()

    def test_resolutionMustBePositive(self):
        self.assertRaises(ValueError, TimerWheel, self.clock, 0)
