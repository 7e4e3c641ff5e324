"""
The heartbeat's state machine on a task.Clock: every transition and timer.
"""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyObject

from lbproxy.ha.interfaces import IHeartbeatActions
from lbproxy.ha.machine import Role, masterDownInterval, skewTime
from hamachines import address, advertFrom, machine, masters, pair

PEER = "192.0.2.12"


def hear(heartbeat, clock, priority: int, times: int, every: float = 1.0) -> None:
    """
    C{times} adverts of C{PEER} with C{priority}, C{every} seconds apart.
    """
    for _ in range(times):
        heartbeat.receive(advertFrom(PEER, priority))
        clock.advance(every)


def test_recordingActionsProvideTheInterface():
    _, actions, _ = machine()
    assert verifyObject(IHeartbeatActions, actions)


def test_timersAsVRRPv3():
    assert skewTime(100, 1.0) == pytest.approx(0.609375)
    assert masterDownInterval(100, 1.0) == pytest.approx(3.609375)
    assert masterDownInterval(250, 0.2) == pytest.approx(0.6046875)


# Start


def test_startAloneBecomesMasterAfterOneIntervalAndSkew():
    """
    A starting node solicits at once and, hearing no master, takes over
    after one interval plus its skew, not after a whole down interval.
    """
    heartbeat, actions, clock = machine(priority=100)
    heartbeat.start()
    assert heartbeat.role is Role.BACKUP
    assert actions.sent == [(0.0, 100, True, None)]
    clock.pump([0.001] * 1609)
    assert heartbeat.role is Role.BACKUP
    clock.advance(0.001)
    assert heartbeat.role is Role.MASTER
    assert actions.sent[-1] == (pytest.approx(1.61), 100, False, None)
    assert [(old, new) for _, old, new, _ in actions.roles] == [
        (Role.INIT, Role.BACKUP),
        (Role.BACKUP, Role.MASTER),
    ]
    assert "no master heard" in actions.roles[-1][3]


def test_masterAdvertisesEveryInterval():
    heartbeat, actions, clock = machine(interval=0.2, priority=254)
    heartbeat.start()
    clock.advance(0.2 + skewTime(254, 0.2))
    became = clock.seconds()
    actions.sent.clear()
    clock.pump([0.1] * 10)
    assert [round(t - became, 6) for t, _, _, _ in actions.sent] == [0.2, 0.4, 0.6, 0.8, 1.0]
    # Each periodic advert says when it was due.
    assert [round(due - became, 6) for _, _, _, due in actions.sent] == [0.2, 0.4, 0.6, 0.8, 1.0]


def test_stalledMasterDoesNotBurst():
    heartbeat, actions, clock = machine(interval=0.2)
    heartbeat.start()
    clock.advance(1)
    assert heartbeat.role is Role.MASTER
    actions.sent.clear()
    clock.advance(5)
    clock.advance(0.2)
    assert len(actions.sent) == 2


def test_startHearingAMasterStaysBackup():
    heartbeat, actions, clock = machine(priority=100)
    heartbeat.start()
    clock.advance(0.5)
    heartbeat.receive(advertFrom(PEER, 200))
    clock.advance(1.5)
    assert heartbeat.role is Role.BACKUP
    assert heartbeat.master == address(PEER)


def test_masterAnswersASolicitAtOnce():
    heartbeat, actions, clock = machine(priority=200)
    heartbeat.start()
    clock.advance(2)
    assert heartbeat.role is Role.MASTER
    count = len(actions.sent)
    heartbeat.receive(advertFrom(PEER, 100, solicit=True))
    assert len(actions.sent) == count + 1
    assert actions.sent[-1][1:3] == (200, False)
    assert heartbeat.role is Role.MASTER
    # Even a solicit of a higher priority does not take over by itself.
    heartbeat.receive(advertFrom(PEER, 250, solicit=True))
    assert heartbeat.role is Role.MASTER


def test_backupIgnoresASolicit():
    heartbeat, actions, clock = machine()
    heartbeat.start()
    heartbeat.receive(advertFrom(PEER, 200))
    heartbeat.receive(advertFrom("192.0.2.13", 250, solicit=True))
    assert heartbeat.master == address(PEER)
    assert len(actions.sent) == 1


def test_startWithAFault():
    heartbeat, actions, clock = machine()
    heartbeat.setHealth("listener web is not bound", 0)
    heartbeat.start()
    assert heartbeat.role is Role.FAULT
    clock.advance(10)
    assert heartbeat.role is Role.FAULT
    assert actions.sent == []
    assert "listener web is not bound" in actions.roles[-1][3]


# Backup timers


def test_masterSilentForTheDownInterval():
    heartbeat, actions, clock = machine(priority=100)
    heartbeat.start()
    heartbeat.receive(advertFrom(PEER, 200))
    clock.advance(masterDownInterval(100, 1.0) - 0.01)
    assert heartbeat.role is Role.BACKUP
    clock.advance(0.02)
    assert heartbeat.role is Role.MASTER
    assert f"master {PEER} silent" in actions.roles[-1][3]


def test_eachAdvertRestartsTheDownTimer():
    heartbeat, actions, clock = machine(priority=100)
    heartbeat.start()
    hear(heartbeat, clock, 200, 10, every=3)
    assert heartbeat.role is Role.BACKUP


def test_downIntervalFromTheMastersInterval():
    """
    The backup times out on the interval the master advertises, not its
    own.
    """
    heartbeat, actions, clock = machine(priority=100, interval=0.2)
    heartbeat.start()
    heartbeat.receive(advertFrom(PEER, 200, interval=2.0))
    clock.advance(3 * 2.0)
    assert heartbeat.role is Role.BACKUP
    clock.advance(skewTime(100, 2.0) + 0.01)
    assert heartbeat.role is Role.MASTER


def test_priorityZeroTakesOverAfterSkew():
    heartbeat, actions, clock = machine(priority=100)
    heartbeat.start()
    heartbeat.receive(advertFrom(PEER, 200))
    clock.advance(0.5)
    heartbeat.receive(advertFrom(PEER, 0))
    clock.advance(skewTime(100, 1.0) - 0.01)
    assert heartbeat.role is Role.BACKUP
    clock.advance(0.02)
    assert heartbeat.role is Role.MASTER
    assert "leaving" in actions.roles[-1][3]


def test_priorityZeroFromAnotherThanTheMasterIgnored():
    heartbeat, actions, clock = machine(priority=100)
    heartbeat.start()
    heartbeat.receive(advertFrom(PEER, 200))
    heartbeat.receive(advertFrom("192.0.2.13", 0))
    clock.advance(1)
    assert heartbeat.role is Role.BACKUP


# Preemption


def test_preemptTakesOverFromALowerMasterAtOnce():
    heartbeat, actions, clock = machine(priority=200, preempt=True)
    heartbeat.start()
    clock.advance(0.1)
    heartbeat.receive(advertFrom(PEER, 100))
    assert heartbeat.role is Role.MASTER
    assert "preempting master 192.0.2.12" in actions.roles[-1][3]
    # Its advert went out before the role change, so the old master steps
    # down on hearing it.
    assert actions.sent[-1][1:3] == (200, False)


def test_noPreemptFollowsALowerMaster():
    heartbeat, actions, clock = machine(priority=200, preempt=False)
    heartbeat.start()
    hear(heartbeat, clock, 100, 10)
    assert heartbeat.role is Role.BACKUP


def test_equalPriorityNeverPreempts():
    heartbeat, actions, clock = machine(priority=100, address="192.0.2.99")
    heartbeat.start()
    hear(heartbeat, clock, 100, 10)
    assert heartbeat.role is Role.BACKUP


def test_preemptDelay():
    heartbeat, actions, clock = machine(priority=200, preemptDelay=5.0)
    heartbeat.start()
    hear(heartbeat, clock, 100, 4)
    assert heartbeat.role is Role.BACKUP
    heartbeat.receive(advertFrom(PEER, 100))
    clock.advance(1)
    assert heartbeat.role is Role.MASTER
    assert "for 5s" in actions.roles[-1][3]


def test_preemptDelayStartsAgainAfterABetterMaster():
    heartbeat, actions, clock = machine(priority=200, preemptDelay=5.0)
    heartbeat.start()
    hear(heartbeat, clock, 100, 3)
    heartbeat.receive(advertFrom(PEER, 250))
    clock.advance(1)
    hear(heartbeat, clock, 100, 4)
    assert heartbeat.role is Role.BACKUP
    clock.advance(1)
    assert heartbeat.role is Role.MASTER


# Master receiving


def becomeMaster(**settings):
    heartbeat, actions, clock = machine(**settings)
    heartbeat.start()
    clock.advance(2)
    assert heartbeat.role is Role.MASTER
    return heartbeat, actions, clock


def test_masterYieldsToAHigherPriority():
    heartbeat, actions, clock = becomeMaster(priority=100)
    heartbeat.receive(advertFrom(PEER, 150, interval=0.5))
    assert heartbeat.role is Role.BACKUP
    assert "priority 150 above ours (100)" in actions.roles[-1][3]
    assert heartbeat.master == address(PEER)
    assert heartbeat.masterInterval == 0.5


def test_equalPrioritiesBrokenByAddress():
    heartbeat, actions, clock = becomeMaster(priority=100, address="192.0.2.11")
    heartbeat.receive(advertFrom("192.0.2.10", 100))
    assert heartbeat.role is Role.MASTER
    heartbeat.receive(advertFrom(PEER, 100))
    assert heartbeat.role is Role.BACKUP
    assert "equal to ours and a higher address" in actions.roles[-1][3]


def test_dualMasterWinnerReannounces():
    heartbeat, actions, clock = becomeMaster(priority=200)
    count = len(actions.sent)
    heartbeat.receive(advertFrom(PEER, 100))
    assert heartbeat.role is Role.MASTER
    assert len(actions.sent) == count + 1
    assert actions.reannounced and PEER in actions.reannounced[0]


def test_masterSteppingDownYields():
    """
    A master stepping down for a better one sends one last advert flagged
    yield, so that a winner which had not heard it learns of the dual
    master.
    """
    heartbeat, actions, clock = becomeMaster(priority=100)
    heartbeat.receive(advertFrom(PEER, 150))
    assert actions.yielded == 1
    assert actions.sent[-1][1:3] == (100, False)


def test_winnerReannouncesOnAYield():
    heartbeat, actions, clock = becomeMaster(priority=200)
    count = len(actions.sent)
    heartbeat.receive(advertFrom(PEER, 100, yielding=True))
    assert heartbeat.role is Role.MASTER
    assert actions.reannounced == [f"{PEER} stepped down as master for us"]
    assert len(actions.sent) == count


def test_backupIgnoresAYield():
    heartbeat, actions, clock = machine(priority=100)
    heartbeat.start()
    heartbeat.receive(advertFrom(PEER, 200))
    heartbeat.receive(advertFrom("192.0.2.13", 50, yielding=True))
    assert heartbeat.master == address(PEER)
    assert not heartbeat.peers[address("192.0.2.13")].master


def test_masterHearingPriorityZeroAdvertises():
    heartbeat, actions, clock = becomeMaster(priority=100)
    count = len(actions.sent)
    heartbeat.receive(advertFrom(PEER, 0))
    assert heartbeat.role is Role.MASTER
    assert len(actions.sent) == count + 1
    assert actions.reannounced == []


# Health


def test_masterFaultHandsOverAtOnce():
    heartbeat, actions, clock = becomeMaster()
    heartbeat.setHealth("pool web has 0 servers up, fewer than 1", 0)
    assert heartbeat.role is Role.FAULT
    assert actions.sent[-1][1] == 0
    assert actions.roles[-1][3] == "pool web has 0 servers up, fewer than 1"
    count = len(actions.sent)
    clock.advance(10)
    assert len(actions.sent) == count


def test_backupFaultAndRecovery():
    heartbeat, actions, clock = machine()
    heartbeat.start()
    heartbeat.receive(advertFrom(PEER, 200))
    heartbeat.setHealth("listener web is not bound", 0)
    assert heartbeat.role is Role.FAULT
    clock.advance(10)
    assert heartbeat.role is Role.FAULT
    heartbeat.setHealth(None, 0)
    assert heartbeat.role is Role.BACKUP
    assert "recovered" in actions.roles[-1][3]
    assert actions.sent[-1][2] is True
    clock.advance(2)
    assert heartbeat.role is Role.MASTER


def test_weightLowersTheAdvertisedPriority():
    heartbeat, actions, clock = becomeMaster(priority=200)
    heartbeat.setHealth(None, 150)
    assert heartbeat.priority == 50
    assert heartbeat.role is Role.MASTER
    assert actions.sent[-1][1] == 50
    clock.advance(1)
    assert actions.sent[-1][1] == 50
    heartbeat.setHealth(None, 500)
    assert heartbeat.priority == 1
    heartbeat.setHealth(None, 0)
    assert heartbeat.priority == 200


def test_weightHandsOverToAPreemptingPeer():
    link, (a, aActions), (b, bActions), clock = pair(first={"priority": 200}, second={"priority": 150})
    a.start()
    clock.advance(2)
    b.start()
    clock.advance(2)
    assert (a.role, b.role) == (Role.MASTER, Role.BACKUP)
    a.setHealth(None, 100)
    clock.pump([0.001] * 10)
    assert (a.role, b.role) == (Role.BACKUP, Role.MASTER)


# Peer gone


def test_peerGoneTakesOverAfterSkew():
    heartbeat, actions, clock = machine(priority=250, interval=0.2)
    heartbeat.start()
    heartbeat.receive(advertFrom(PEER, 254, interval=0.2))
    heartbeat.peerGone(address(PEER), "its channel closed and new connections are refused")
    clock.advance(skewTime(250, 0.2) + 0.001)
    assert heartbeat.role is Role.MASTER
    assert "is gone: its channel closed" in actions.roles[-1][3]


def test_peerGoneOfAnotherNodeIgnored():
    heartbeat, actions, clock = machine()
    heartbeat.start()
    heartbeat.receive(advertFrom(PEER, 200))
    heartbeat.peerGone(address("192.0.2.13"), "gone")
    clock.advance(1)
    assert heartbeat.role is Role.BACKUP


# Stop


def test_stopBackup():
    heartbeat, actions, clock = machine()
    heartbeat.start()
    d = heartbeat.stop()
    assert heartbeat.role is Role.INIT
    assert d.called
    clock.advance(10)
    assert heartbeat.role is Role.INIT
    assert len(actions.sent) == 1


def test_stopNotStarted():
    heartbeat, actions, clock = machine()
    assert heartbeat.stop().called
    assert actions.roles == []


def test_stopMasterWithoutPeer():
    heartbeat, actions, clock = becomeMaster()
    d = heartbeat.stop(awaitPeer=False)
    assert d.called
    assert heartbeat.role is Role.INIT
    assert actions.sent[-1][1] == 0


def test_stopMasterHoldsUntilThePeerTookOver():
    heartbeat, actions, clock = becomeMaster(interval=0.2)
    d = heartbeat.stop()
    assert heartbeat.role is Role.MASTER and heartbeat.leaving
    assert actions.sent[-1][1] == 0
    clock.pump([0.1] * 4)
    assert heartbeat.role is Role.MASTER
    assert actions.priorities()[-2:] == [0, 0]
    # Solicits and priority 0 do not count as taking over.
    heartbeat.receive(advertFrom(PEER, 100, solicit=True))
    heartbeat.receive(advertFrom(PEER, 0))
    clock.advance(0.3)
    assert not d.called
    heartbeat.receive(advertFrom(PEER, 100))
    clock.advance(0.1)
    assert heartbeat.role is Role.MASTER
    heartbeat.receive(advertFrom(PEER, 100))
    clock.advance(0.1)
    assert d.called
    assert heartbeat.role is Role.INIT
    assert actions.roles[-1][3] == f"stopped; handed over to {PEER}"


def test_stopMasterTimesOut():
    heartbeat, actions, clock = becomeMaster(handoverTimeout=2.0)
    d = heartbeat.stop()
    clock.advance(1.9)
    assert not d.called
    clock.advance(0.2)
    assert d.called
    assert "no peer took over within 2s" in actions.roles[-1][3]


def test_stopTwice():
    heartbeat, actions, clock = becomeMaster()
    assert heartbeat.stop() is heartbeat.stop()


def test_healthIgnoredWhileLeaving():
    heartbeat, actions, clock = becomeMaster()
    heartbeat.stop()
    heartbeat.setHealth("broken", 0)
    assert heartbeat.role is Role.MASTER


def test_transitionsRecorded():
    heartbeat, actions, clock = becomeMaster()
    reasons = [(t.old, t.new) for t in heartbeat.transitions]
    assert reasons == [(Role.INIT, Role.BACKUP), (Role.BACKUP, Role.MASTER)]
    assert heartbeat.transitions[-1].time == 2.0


# Two nodes on a link


def test_pairSettles():
    link, (a, _), (b, _), clock = pair()
    b.start()
    clock.advance(2)
    a.start()
    clock.pump([0.001] * 10)
    # a has the higher priority and preempts as soon as it hears b.
    assert (a.role, b.role) == (Role.MASTER, Role.BACKUP)
    clock.pump([0.1] * 600)
    assert (a.role, b.role) == (Role.MASTER, Role.BACKUP)


def test_pairStartingTogetherWithEqualPriorities():
    link, (a, aActions), (b, bActions), clock = pair(first={"priority": 100})
    a.start()
    b.start()
    clock.pump([0.01] * 300)
    assert masters(a, b) == [b]
    # Both took over at the same moment; the loser stepped down on hearing
    # the winner, who announced again.
    assert bActions.reannounced or any(new is Role.BACKUP for _, _, new, _ in aActions.roles)


def test_pairStartingTogetherWithoutPreempt():
    link, (a, _), (b, _), clock = pair(first={"preempt": False}, second={"preempt": False})
    b.start()
    clock.advance(2)
    a.start()
    clock.pump([0.1] * 100)
    assert masters(a, b) == [b]


def test_partitionThenHeal():
    link, (a, aActions), (b, bActions), clock = pair()
    a.start()
    b.start()
    clock.pump([0.1] * 30)
    assert masters(a, b) == [a]
    link.cut.add(a)
    clock.pump([0.1] * 50)
    assert masters(a, b) == [a, b]
    link.cut.clear()
    clock.pump([0.1] * 20)
    assert masters(a, b) == [a]
    assert aActions.reannounced
    assert bActions.yielded


def test_gracefulHandoverOnTheLink():
    link, (a, aActions), (b, bActions), clock = pair(first={"interval": 0.2}, second={"interval": 0.2})
    a.start()
    b.start()
    clock.pump([0.01] * 100)
    assert masters(a, b) == [a]
    d = a.stop()
    clock.pump([0.001] * 400)
    assert d.called
    assert (a.role, b.role) == (Role.INIT, Role.MASTER)
    # b was master before a let go: no moment without a master.
    tookOver = [t for t, _, new, _ in bActions.roles if new is Role.MASTER][-1]
    letGo = aActions.roles[-1][0]
    assert tookOver < letGo
    assert letGo - tookOver == pytest.approx(0.2, abs=0.01)
