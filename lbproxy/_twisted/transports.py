"""
TCP connections that keep their attributes in slots.

An idle proxied connection costs the memory of its objects, and the
largest are the two TCP transports: a Twisted connection sets some twenty
attributes, held in an instance dictionary (about 330 bytes, 830 once
CPython gives up sharing its keys, as it does when the attributes are not
always set in the same order), and two strings made for logging
(C{logstr}, C{repstr}, about 80 bytes each) that lbproxy's reactor never
reads. L{LeanServer} and L{LeanClient} are Twisted's C{tcp.Server} and
C{tcp.Client} with those attributes in slots (8 bytes each, no
dictionary), their log strings made when asked for, and their socket's
C{fileno} looked up when called instead of kept as a bound method;
L{LeanServer.getHost} returns one address object for every connection
accepted on the same local address instead of a new one each, and
L{LeanServer.getPeer} the one it keeps instead of the peer's address tuple.

Everything else is Twisted's own code: an attribute Twisted sets that is
not a slot here (the C{TLS} flag of C{startTLS}, say) goes to the
instance dictionary as before. C{tests/test_twisted_internals.py} checks
that the attributes Twisted sets on a connection in its usual life are
slots of these classes, so a release that adds one fails there.

L{lbproxy._twisted.reactor.EPollReactor} makes its listening ports accept
L{LeanServer}s and its outgoing connections L{LeanClient}s.
"""

from __future__ import annotations

from twisted.internet import address, tcp


def _noFileno() -> int:
    """
    What C{FileDescriptor.fileno} answers once the socket is gone.
    """
    return -1


class _SocketFileno:
    """
    The C{fileno} of a lean connection: its socket's C{fileno} while it
    has one, else C{-1} as Twisted's C{FileDescriptor.fileno} says. Twisted
    sets and deletes C{fileno} together with C{socket}; nothing is kept.
    """

    def __get__(self, connection, owner=None):
        if connection is None:
            return self
        try:
            return connection.socket.fileno
        except AttributeError:
            return _noFileno

    def __set__(self, connection, value) -> None:
        pass

    def __delete__(self, connection) -> None:
        pass


class _MadeWhenRead:
    """
    A string attribute Twisted sets when a connection is made, for logging
    only (C{logstr}, C{repstr}): what it is set to is dropped, and the
    string is made by C{make(connection)} each time it is read.
    """

    def __init__(self, make) -> None:
        self._make = make

    def __get__(self, connection, owner=None):
        if connection is None:
            return self
        return self._make(connection)

    def __set__(self, connection, value) -> None:
        pass


class _ReplacedWhileConnecting:
    """
    C{doRead} or C{doWrite} of a lean client connection: Twisted points
    both at C{doConnect} on the instance while it connects, and deletes
    them once connected. The replacement is kept in the slot named
    C{slot} (None once deleted) instead of an instance dictionary, which
    would stay allocated, empty, for the rest of the connection.
    """

    def __init__(self, slot: str, method) -> None:
        self._slot = slot
        self._method = method

    def __get__(self, connection, owner=None):
        if connection is None:
            return self._method
        replaced = getattr(connection, self._slot)
        if replaced is None:
            return self._method.__get__(connection, owner)
        return replaced

    def __set__(self, connection, value) -> None:
        setattr(connection, self._slot, value)

    def __delete__(self, connection) -> None:
        setattr(connection, self._slot, None)


class _PeerAddress:
    """
    The C{client} of a lean server connection: the peer's address tuple
    from C{accept}, which Twisted keeps to make a new address object at
    each C{getPeer}. It is kept as the address object instead (what
    L{LeanServer.getPeer} returns), and the tuple made when read.
    """

    def __get__(self, connection, owner=None):
        if connection is None:
            return self
        peer = connection._peer
        if isinstance(peer, address.IPv6Address):
            return (peer.host, peer.port, peer.flowInfo, peer.scopeID)
        return (peer.host, peer.port)

    def __set__(self, connection, value) -> None:
        connection._peer = connection._addressType("TCP", *value)


def _protocolName(connection) -> str:
    protocol = getattr(connection, "protocol", None)
    return "Uninitialized" if protocol is None else connection._getLogPrefix(protocol)


#: The attributes of Twisted's C{FileDescriptor} (and C{tcp.Connection})
#: that every connection sets, or reads with a class default that a slot
#: would hide: L{_setDefaults} sets those first.
_CONNECTION_SLOTS = (
    "reactor",
    "socket",
    "protocol",
    "_tempDataBuffer",
    "_tempDataLen",
    "connected",
    "disconnected",
    "disconnecting",
    "_writeDisconnecting",
    "_writeDisconnected",
    "dataBuffer",
    "offset",
    "producer",
    "streamingProducer",
    "producerPaused",
    "bufferSize",
    "_aborting",
)


def _setDefaults(connection) -> None:
    """
    Give the slots of C{connection} that hide a class default of Twisted's
    that default (read from C{tcp.Connection}, so a new default in Twisted
    is followed).
    """
    base = tcp.Connection
    connection.connected = base.connected
    connection.disconnected = base.disconnected
    connection.disconnecting = base.disconnecting
    connection._writeDisconnecting = base._writeDisconnecting
    connection._writeDisconnected = base._writeDisconnected
    connection.dataBuffer = base.dataBuffer
    connection.offset = base.offset
    connection.producer = base.producer
    connection.streamingProducer = base.streamingProducer
    connection.producerPaused = base.producerPaused
    connection.bufferSize = base.bufferSize
    connection._aborting = base._aborting


class LeanServer(tcp.Server):
    """
    A connection accepted by a listening port, as C{tcp.Server}, with its
    attributes in slots (see the module docstring).
    """

    __slots__ = _CONNECTION_SLOTS + ("server", "_peer", "sessionno", "hostname", "_addressType")

    fileno = _SocketFileno()
    client = _PeerAddress()
    logstr = _MadeWhenRead(
        lambda connection: f"{_protocolName(connection)},{connection.sessionno},{connection.hostname}"
    )
    repstr = _MadeWhenRead(
        lambda connection: (
            f"<{type(getattr(connection, 'protocol', None)).__name__} #{connection.sessionno} "
            f"on {getattr(connection.server, '_realPortNumber', None)}>"
        )
    )

    def __init__(self, sock, protocol, client, server, sessionno, reactor) -> None:
        _setDefaults(self)
        self._addressType = tcp.Server._addressType
        super().__init__(sock, protocol, client, server, sessionno, reactor)

    def getPeer(self):
        """
        The peer's address, the same object each time (an address is not
        changed by those who read it).
        """
        return self._peer

    def getHost(self):
        """
        The local address, one object per address for all connections (an
        address is not changed by those who read it).
        """
        host = super().getHost()
        return _HOSTS.setdefault(host, host) if len(_HOSTS) < _MAX_HOSTS else host


#: The local addresses of accepted connections, each the key and value
#: (see L{LeanServer.getHost}); one per address a port accepts on.
_HOSTS: dict[address.IPv4Address | address.IPv6Address, object] = {}
#: Most local addresses kept: a port on a wildcard address accepts on every
#: address of the machine.
_MAX_HOSTS = 4096


class LeanClient(tcp.Client):
    """
    An outgoing connection, as C{tcp.Client}, with its attributes in
    slots (see the module docstring), C{doRead} and C{doWrite} too while
    they point at C{doConnect} (L{_ReplacedWhileConnecting}).
    """

    __slots__ = _CONNECTION_SLOTS + (
        "connector",
        "addr",
        "realAddress",
        "_requiresResolution",
        "_addressType",
        "addressFamily",
        "_doReadWhileConnecting",
        "_doWriteWhileConnecting",
    )

    fileno = _SocketFileno()
    logstr = _MadeWhenRead(lambda connection: f"{_protocolName(connection)},client")
    doRead = _ReplacedWhileConnecting("_doReadWhileConnecting", tcp.Client.doRead)
    doWrite = _ReplacedWhileConnecting("_doWriteWhileConnecting", tcp.Client.doWrite)

    def __init__(self, host, port, bindAddress, connector, reactor=None) -> None:
        _setDefaults(self)
        self._addressType = tcp.Client._addressType
        self.addressFamily = tcp.Client.addressFamily
        self._doReadWhileConnecting = self._doWriteWhileConnecting = None
        super().__init__(host, port, bindAddress, connector, reactor)


class LeanConnector(tcp.Connector):
    """
    C{tcp.Connector} making L{LeanClient}s.
    """

    def _makeTransport(self) -> LeanClient:
        return LeanClient(self.host, self.port, self.bindAddress, self, self.reactor)
