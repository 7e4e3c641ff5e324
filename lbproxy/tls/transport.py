"""
Server-side TLS over a TCP connection, for implicit-TLS listeners.

L{ServerTLSTransport} sits between a TCP transport and a front's protocol,
as Twisted's C{TLSMemoryBIOProtocol} does, with fewer layers per request:
what the front writes is encrypted at once (C{SSL_write}) and the records
are read back from the memory BIO and handed to the TCP transport (or to
the HTTP front's write batch, see L{lbproxy._twisted.tlsbatch}); what the
client sends is fed to the memory BIO and decrypted record by record, all
of it given to the front in one C{dataReceived}. The TLS record headers of
what arrives are counted, so that reading stops after the last complete
record instead of asking OpenSSL once more and catching its
C{WantReadError}, and ciphertext is read back with a buffer large enough
for what was just encrypted: in the steady state no exception is raised.

The L{SSL.Connection} comes from the listener's
L{lbproxy.tls.server.ServerTLS}, so SNI, ALPN, client certificates,
reloads and ciphers are those of its contexts.

Behaviour the fronts rely on, as with C{TLSMemoryBIOProtocol}:
 - writes before the handshake is done wait for it; a client that does
   not complete the handshake in time is dropped;
 - C{loseConnection} sends what is written, a close_notify, and closes,
   once no producer is registered; a client's close_notify is answered
   and closes the connection;
 - the connection is closed whole: a TLS peer has no half-close, so
   C{loseWriteConnection} is C{loseConnection} (the fronts close a TLS
   transport whole anyway);
 - a TLS error (garbage, a failed verification, a bad record) is logged in
   one line and closes the connection.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IConsumer,
    IHandshakeListener,
    INegotiated,
    IPushProducer,
    ISSLTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.core.wrapping import FactoryLayer
from lbproxy.interfaces import IProxiedAddresses

# Largest plaintext of one TLS record.
_RECORD = 16384
# Room for the ciphertext of one record: its plaintext and at most this
# much more (header, explicit nonce, padding, MAC or tag).
_OVERHEAD = 2048
# What one recv asks for: a whole record's plaintext at once.
_READ = _RECORD + _OVERHEAD
# What one bio_read of unknown output asks for.
_DRAIN = 65536
# Record content types of TLS (change_cipher_spec .. application_data).
_TYPES = frozenset({20, 21, 22, 23})

_WantReadError = SSL.WantReadError
_ZeroReturnError = SSL.ZeroReturnError
_Error = SSL.Error


def describeError(error: BaseException) -> str:
    """
    A one-line description of an OpenSSL error, for logs.
    """
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [entry[-1] for entry in error.args[0] if isinstance(entry, tuple) and entry[-1]]
        if reasons:
            return "; ".join(reasons)
    if isinstance(error, SSL.SysCallError):
        return "connection closed during TLS"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


@implementer(ISSLTransport, ITransport, IConsumer, IPushProducer, INegotiated, IProxiedAddresses)
class ServerTLSTransport(Protocol):
    """
    The protocol of a TCP connection carrying TLS, and the transport of the
    protocol it wraps.

    @ivar transport: the TCP transport.
    @ivar wrappedProtocol: the front's protocol, which gets the plaintext.
    @ivar factory: the L{ServerTLSFactory}.
    @ivar disconnecting: C{loseConnection} or C{abortConnection} was called.
    @ivar connected: between C{makeConnection} and C{connectionLost}.
    @ivar sendRecords: called with the encrypted records to send: the TCP
        transport's C{write}, unless a write batch takes them
        (L{lbproxy._twisted.tlsbatch}).
    """

    __slots__ = (
        "factory",
        "wrappedProtocol",
        "disconnecting",
        "connected",
        "_conn",
        "sendRecords",
        "_handshakeDone",
        "_aborted",
        "_closed",
        "_waiting",
        "_producer",
        "_deadline",
        "_reason",
        "_records",
        "_recordRest",
        "_header",
        "_counting",
        "_proxied",
    )

    TLS = True
    log = Logger()

    def __init__(self, factory: ServerTLSFactory, wrappedProtocol) -> None:
        self.factory = factory
        self.wrappedProtocol = wrappedProtocol
        self.transport = None
        self.connected = False
        self.disconnecting = False
        self._conn: SSL.Connection | None = None
        self.sendRecords = None
        self._handshakeDone = False
        self._aborted = False
        # The TLS layer is done: shut down, failed, or the TCP connection lost.
        self._closed = False
        # Plaintext written before the handshake (or while a renegotiation
        # holds SSL_write back), sent once it is done.
        self._waiting: list[bytes] = []
        self._producer = None
        self._deadline = None
        self._reason: Failure | None = None
        # Complete records fed to OpenSSL and maybe not read yet, the bytes
        # of the current record still to come, and a record header cut
        # across reads; _counting is False for input that is not TLS
        # records (OpenSSL then refuses it).
        self._records = 0
        self._recordRest = 0
        self._header = b""
        self._counting = True
        # The client and local addresses of a trusted proxy's PROXY header.
        self._proxied = None

    def __repr__(self) -> str:
        return f"<ServerTLSTransport {self.wrappedProtocol!r}>"

    # -- the TCP connection's protocol ---------------------------------------

    def makeConnection(self, transport) -> None:
        factory = self.factory
        conn = factory.creator.serverConnectionForTLS(self)
        conn.set_accept_state()
        self._conn = conn
        self.sendRecords = transport.write
        self.connected = True
        self.transport = transport
        self._deadline = factory.reactor.callLater(factory.handshakeTimeout, self._handshakeTimedOut)
        self.wrappedProtocol.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        if self._closed or self._aborted:
            return
        conn = self._conn
        conn.bio_write(data)
        if self._counting:
            self._count(data)
        else:
            self._records = 1 << 30
        if not self._handshakeDone:
            self._handshake()
            return
        self._readRecords()

    def _count(self, data: bytes) -> None:
        """
        Count the TLS records C{data} completes.
        """
        size = len(data)
        rest = self._recordRest
        if not self._header and rest == 0 and size >= 5:
            length = 5 + (data[3] << 8 | data[4])
            if length == size and data[0] in _TYPES:
                # One whole record, the usual case.
                self._records += 1
                return
        if self._header:
            data = self._header + data
            self._header = b""
            size = len(data)
        position = 0
        if rest:
            if rest > size:
                self._recordRest = rest - size
                return
            position = rest
            self._records += 1
        while position + 5 <= size:
            if data[position] not in _TYPES:
                # Not TLS records: leave the counting to OpenSSL's errors.
                self._counting = False
                self._records = 1 << 30
                return
            end = position + 5 + (data[position + 3] << 8 | data[position + 4])
            if end > size:
                self._recordRest = end - size
                return
            self._records += 1
            position = end
        self._recordRest = 0
        if position < size:
            self._header = data[position:]

    def _handshake(self) -> None:
        conn = self._conn
        try:
            conn.do_handshake()
        except _WantReadError:
            self._drainOutput()
            return
        except _Error as error:
            self._failed(error)
            return
        self._handshakeDone = True
        deadline = self._deadline
        if deadline is not None:
            self._deadline = None
            if deadline.active():
                deadline.cancel()
        self._drainOutput()
        protocol = self.wrappedProtocol
        if IHandshakeListener.providedBy(protocol):
            protocol.handshakeCompleted()
            if self._closed:
                return
        # What came with the client's Finished, read until OpenSSL wants
        # more: the record count is exact from here on.
        self._records = 1 << 30
        self._readRecords()
        if self._waiting and not self._closed:
            self._sendWaiting()

    def _readRecords(self) -> None:
        """
        Decrypt the complete records fed so far and give their plaintext to
        the wrapped protocol in one C{dataReceived}.
        """
        conn = self._conn
        received = None
        chunks = None
        while self._records > 0:
            try:
                data = conn.recv(_READ)
            except _WantReadError:
                # Something else than application data (a key update, a
                # renegotiation) may want an answer.
                self._records = 0
                self._drainOutput()
                break
            except _ZeroReturnError:
                self._records = 0
                self._deliver(received, chunks)
                if not self._closed:
                    self._peerClosed()
                return
            except _Error as error:
                self._deliver(received, chunks)
                self._failed(error)
                return
            self._records -= 1
            if received is None:
                received = data
            else:
                if chunks is None:
                    chunks = [received]
                chunks.append(data)
            if len(data) == _READ:
                # A record larger than any TLS 1.2/1.3 one: read its rest.
                while conn.pending():
                    if chunks is None:
                        chunks = [received]
                    chunks.append(conn.recv(_READ))
        self._deliver(received, chunks)
        if self._waiting and not self._closed:
            self._sendWaiting()

    def _deliver(self, received: bytes | None, chunks: list | None) -> None:
        if chunks is not None:
            received = b"".join(chunks)
        if received and not self._aborted:
            self.wrappedProtocol.dataReceived(received)

    def connectionLost(self, reason: Failure) -> None:
        self.connected = False
        self._closed = True
        deadline = self._deadline
        if deadline is not None:
            self._deadline = None
            if deadline.active():
                deadline.cancel()
        reason = self._reason or reason
        self._reason = None
        self._waiting = []
        protocol = self.wrappedProtocol
        protocol.connectionLost(reason)

    # -- closing -------------------------------------------------------------

    def _handshakeTimedOut(self) -> None:
        self._deadline = None
        if not self._handshakeDone and not self._aborted:
            self.abortConnection()

    def _peerClosed(self) -> None:
        """
        The client sent its close_notify: answer it and close.
        """
        self._shutdown()

    def _failed(self, error: BaseException) -> None:
        """
        A TLS error: send OpenSSL's alert, close, and tell the wrapped
        protocol why once the TCP connection is gone.
        """
        if self._closed:
            return
        peer = self.transport.getPeer() if self.transport is not None else None
        self.log.info(
            "TLS error with {peer}: {error}",
            peer=getattr(peer, "host", peer),
            error=describeError(error),
        )
        self._reason = Failure(error)
        self._closed = True
        self._drainOutput()
        self.transport.loseConnection()

    def _shutdown(self) -> None:
        """
        Send a close_notify after what is written, and close.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.shutdown()
        except _Error:
            pass
        self._drainOutput()
        self.transport.loseConnection()

    # -- writing -------------------------------------------------------------

    def _drainOutput(self) -> None:
        """
        Send whatever OpenSSL wrote to its memory BIO (handshake messages,
        alerts, answers to the client's messages).
        """
        conn = self._conn
        while True:
            try:
                data = conn.bio_read(_DRAIN)
            except _WantReadError:
                return
            except _Error:
                return
            self.sendRecords(data)
            if len(data) < _DRAIN:
                return

    def _encrypt(self, data) -> None:
        """
        Encrypt C{data} now and send its records.
        """
        conn = self._conn
        size = len(data)
        if size <= _RECORD:
            try:
                sent = conn.send(data)
            except _WantReadError:
                # A renegotiation holds writes back until the client answers.
                self._waiting.append(bytes(data))
                return
            except _Error as error:
                self._failed(error)
                return
            room = size + _OVERHEAD
            out = conn.bio_read(room)
            self.sendRecords(out)
            if len(out) == room:
                self._drainOutput()
            if sent < size:
                self._encrypt(memoryview(data)[sent:])
            return
        view = memoryview(data)
        position = 0
        while position < size:
            try:
                position += conn.send(view[position : position + _RECORD])
            except _WantReadError:
                self._waiting.append(bytes(view[position:]))
                break
            except _Error as error:
                self._failed(error)
                return
        self._drainOutput()

    def _sendWaiting(self) -> None:
        waiting = self._waiting
        self._waiting = []
        for index, data in enumerate(waiting):
            self._encrypt(data)
            if self._closed:
                return
            if self._waiting:
                self._waiting.extend(waiting[index + 1 :])
                return
        if self.disconnecting and self._producer is None and not self._aborted:
            self._shutdown()

    def write(self, data: bytes) -> None:
        """
        Encrypt C{data} and send it; before the handshake is done, keep it
        until then. Dropped once the connection closes.
        """
        if not data or self._closed or (self.disconnecting and self._producer is None):
            return
        if self._waiting or not self._handshakeDone:
            self._waiting.append(data)
            return
        self._encrypt(data)

    def writeSequence(self, data) -> None:
        """
        Write the pieces of C{data} in order, as one.
        """
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Send what is written, a close_notify, and close, once no producer is
        registered and the handshake is done; a connection that has written
        nothing before its handshake is dropped at once.
        """
        if self.disconnecting or not self.connected:
            return
        self.disconnecting = True
        if not self._handshakeDone:
            if not self._waiting:
                self.abortConnection()
            # Else the handshake sends it, or its deadline drops it.
            return
        if not self._waiting and self._producer is None:
            self._shutdown()

    loseWriteConnection = loseConnection

    def abortConnection(self) -> None:
        """
        Drop the connection at once, with what is not sent yet.
        """
        self._aborted = True
        self.disconnecting = True
        self._closed = True
        self._waiting = []
        transport = self.transport
        if transport is not None:
            transport.abortConnection()

    # -- IConsumer / IPushProducer, passed to the TCP transport ---------------

    def registerProducer(self, producer, streaming: bool) -> None:
        self._producer = producer
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._producer is None:
            return
        self._producer = None
        self.transport.unregisterProducer()
        if self.disconnecting and not self._waiting and self._handshakeDone and not self._aborted:
            self._shutdown()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    # -- ITransport / ITCPTransport / ISSLTransport ----------------------------

    def proxiedAddresses(self, client, local) -> None:
        """
        The PROXY header read before the handshake names the client:
        C{getPeer} and C{getHost} report its addresses.
        """
        self._proxied = (client, local)

    def getPeer(self):
        proxied = self._proxied
        return self.transport.getPeer() if proxied is None else proxied[0]

    def getHost(self):
        proxied = self._proxied
        return self.transport.getHost() if proxied is None else proxied[1]

    def getTcpNoDelay(self) -> bool:
        get = getattr(self.transport, "getTcpNoDelay", None)
        return bool(get()) if get is not None else False

    def setTcpNoDelay(self, enabled: bool) -> None:
        set_ = getattr(self.transport, "setTcpNoDelay", None)
        if set_ is not None:
            set_(enabled)

    def getTcpKeepAlive(self) -> bool:
        get = getattr(self.transport, "getTcpKeepAlive", None)
        return bool(get()) if get is not None else False

    def setTcpKeepAlive(self, enabled: bool) -> None:
        set_ = getattr(self.transport, "setTcpKeepAlive", None)
        if set_ is not None:
            set_(enabled)

    def getPeerCertificate(self):
        """
        The client's certificate (a pyOpenSSL X509), or L{None}.
        """
        conn = self._conn
        return conn.get_peer_certificate() if conn is not None else None

    def getHandle(self) -> SSL.Connection | None:
        """
        The L{SSL.Connection}: what L{lbproxy.tls.server.describeTLS} reads.
        """
        return self._conn

    @property
    def negotiatedProtocol(self) -> bytes | None:
        conn = self._conn
        if conn is None:
            return None
        return conn.get_alpn_proto_negotiated() or None


class ServerTLSFactory(FactoryLayer):
    """
    Terminates TLS in front of a listener's factory.

    @ivar creator: makes each connection's L{SSL.Connection}.
    @ivar wrappedFactory: the front's factory.
    @ivar reactor: times the handshakes.
    @ivar handshakeTimeout: seconds a client has to complete the handshake.
    """

    protocol = ServerTLSTransport
    logSuffix = " (TLS)"

    def __init__(self, creator, wrappedFactory, reactor, handshakeTimeout: float) -> None:
        super().__init__(wrappedFactory, reactor)
        self.creator = creator
        self.handshakeTimeout = handshakeTimeout

    def buildProtocol(self, addr):
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)

