"""
The interfaces between the heartbeat's parts: what the state machine asks
of the node (L{IHeartbeatActions}), what the node offers the rest of
lbproxy (L{IHeartbeatStatus}), and the parts that touch the system
(L{IVirtualAddresses}, L{INotifier}), which tests replace, and what the
channel between the nodes carries besides its heartbeat
(L{IChannelMessages}).
"""

from zope.interface import Interface


class IHeartbeatActions(Interface):
    """
    What the state machine (L{lbproxy.ha.machine.Heartbeat}) has done for
    it. The machine decides; these act, and never call back into it
    synchronously.
    """

    def sendAdvert(priority, solicit, due, yielding):
        """
        Send one advert with C{priority} (0: leaving).

        @param solicit: a starting node asks the master to answer at once.
        @param yielding: this master steps down for a better one.
        @param due: for a periodic advert, the clock time it was due (the
            driver measures how late it went out); None otherwise.
        """

    def roleChanged(old, new, reason):
        """
        The node went from role C{old} to C{new} (L{lbproxy.ha.machine.Role}
        values) for C{reason} (one line). Entering C{MASTER}: add and
        announce the virtual addresses; leaving it: remove them.
        """

    def reannounce(reason):
        """
        Announce the virtual addresses again (the node stays master): after
        a dual master resolved in this node's favour, hosts may have
        learned the other one's link-layer address.
        """


class IHeartbeatStatus(Interface):
    """
    The heartbeat as the rest of lbproxy (stats page, metrics, admin) sees
    it.
    """

    def snapshot():
        """
        The node's HA state now, as plain data (dicts, lists, strings,
        numbers, None): role, priorities, peers last seen, transitions with
        their reasons, adverts dropped by cause, tracked conditions.
        """

    def addObserver(observer):
        """
        Call C{observer(old, new, reason)} on every role change (role names
        as strings).
        """

    def removeObserver(observer):
        """
        Stop calling C{observer}.
        """


class IVirtualAddresses(Interface):
    """
    The virtual addresses on this node's interface.
    """

    def add():
        """
        Put every virtual address on the interface (those already there
        are left alone).
        """

    def remove():
        """
        Take every virtual address off the interface (those not there are
        left alone).
        """

    def announce():
        """
        Tell the link that the addresses are here: a gratuitous ARP per
        IPv4 address, an unsolicited neighbour advertisement per IPv6
        address.
        """

    def silence():
        """
        Stop repeating announcements (a master handing over: the new
        master's announcements must be the last a host hears).
        """

    def close():
        """
        Release the sockets used.
        """


class INotifier(Interface):
    """
    Runs the operator's notify commands.
    """

    def notify(role, previous, reason):
        """
        Run the command configured for entering C{role} (if any), with the
        role, the previous role and the reason as arguments.

        @return: a L{Deferred} that fires when the command has ended or
            was stopped for taking too long (never fails).
        """


class IChannelMessages(Interface):
    """
    What the channel between the nodes (L{lbproxy.ha.channel}) carries
    beyond its handshake and PINGs: the stick-table replication
    (L{lbproxy.ha.replication}). The channel hands it each authenticated
    connection, either direction (C{protocol.connector} tells which, and
    C{protocol.peer} the peer's address), and every line received on one.
    """

    def connectionUp(protocol):
        """
        C{protocol}, a channel connection, is authenticated: it may send
        lines (C{protocol.sendLine}, C{protocol.transport.writeSequence}).
        """

    def connectionLost(protocol):
        """
        The authenticated connection C{protocol} is gone.
        """

    def lineReceived(protocol, line):
        """
        C{line} (bytes, without its delimiter, at most the channel's
        C{MAX_LINE}) arrived on the authenticated connection C{protocol}.

        @return: None, or why the line is not acceptable (one line of
            text): the channel then logs it and closes the connection.
        """
