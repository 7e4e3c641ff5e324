"""
The server side of a mail login before relaying: one L{BackendDialog} per
connection attempt, subclassed by each protocol (L{lbproxy.mail.imap},
L{lbproxy.mail.pop3}), which declares the hooks of
L{lbproxy.mail.interfaces.IMailDialogHooks}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.mail.lines import LineBuffer
from lbproxy.mail.logtext import describeLost, tlsVersion
from lbproxy.mail.sasl import Credentials

if TYPE_CHECKING:
    from lbproxy.mail.session import MailFrontProtocol


# How the client leg is encrypted.
TLS_NONE = "none"


TLS_STARTTLS = "starttls"


TLS_IMPLICIT = "implicit"


@dataclass(frozen=True)
class DialogResult:
    """
    How a server answered a replayed login.

    @ivar accepted: the server accepted the login; the session is handed
        off to the relay.
    @ivar reply: the bytes the client gets as the answer to its login
        command (IMAP: the server's untagged responses and its tagged
        answer, under the client's tag).
    @ivar rest: bytes the server sent after its answer, relayed to the
        client after C{reply}.
    """

    accepted: bool
    reply: bytes
    rest: bytes = b""


class DialogFailed(Exception):
    """
    The server could not be used: no or a bad greeting, STARTTLS refused
    or attacked, a TLS failure, the connection lost.

    @ivar detail: one line for the session log.
    @ivar retryable: nothing of the login was sent yet, so the selector's
        next server may be tried.
    """

    def __init__(self, detail: str, retryable: bool = True) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class BackendDialog(Protocol, LineBuffer):
    """
    The backend connection of one login attempt, before relaying: read the
    greeting, optionally STARTTLS, tell the client's address, replay the
    login, and report the server's answer on L{result}.

    After an accepted login the dialog stays the connection's protocol and
    passes every event on to the relay's server leg (L{attach}).

    @ivar front: the L{MailFrontProtocol} the login came from.
    @ivar credentials: the L{Credentials} to replay.
    @ivar server: the server connected to (set by L{begin}).
    @ivar pool: the L{lbproxy.core.pool.Pool} of C{server}.
    @ivar result: fires with a L{DialogResult}, or fails with
        L{DialogFailed}.
    @ivar loginSent: the credentials were sent (a failure after that is
        not retried on another server).
    @ivar tls: C{"none"}, C{"starttls"} or C{"implicit"}, for the log.
    @ivar tlsVersion: the TLS version negotiated with the server, read
        when it accepted the login; None without TLS.
    @ivar farewell: what the server said as it closed the connection
        (IMAP C{* BYE ...}), for the log; set by the subclass.
    """

    log = Logger()

    #: Longest line accepted from a server before the relay starts.
    maxLine = 65536

    def __init__(self, front: MailFrontProtocol, credentials: Credentials) -> None:
        self.front = front
        self.credentials = credentials
        self.server = None
        self.pool = None
        self.result: Deferred[DialogResult] = Deferred()
        self.loginSent = False
        self.tls = TLS_NONE
        self.tlsVersion: str | None = None
        self.farewell: str | None = None
        self._handshaking = False
        self._leg = None
        self._done = False
        self._greetingTimer = None
        self._initBuffer()

    # What the session calls.

    def begin(self, server, pool) -> None:
        """
        The connection to C{server} of C{pool} is placed (the connector
        sent the pool's PROXY header): start the greeting timer (the pool's
        connect timeout) and hand over to the subclass's C{start}.
        """
        self.server = server
        self.pool = pool
        options = pool.options
        if options.tls is not None and not options.tls.starttls:
            self.tls = TLS_IMPLICIT
        reactor = self.front._reactor
        self._greetingTimer = reactor.callLater(options.connectTimeout, self._greetingTimedOut)
        self.start()
        self._deliver()

    def attach(self, leg) -> None:
        """
        Pass this connection to C{leg} (the relay's server leg): from now
        on every event of the connection goes to it.
        """
        self._leg = leg
        leg.makeConnection(self.transport)

    def abandon(self) -> None:
        """
        The session no longer needs this connection: close it.
        """
        self._finish()
        if self.transport is not None:
            self.transport.abortConnection()

    # What the subclass calls.

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def greetingReceived(self) -> None:
        """
        The server's greeting arrived: stop the greeting timer.
        """
        if self._greetingTimer is not None:
            if self._greetingTimer.active():
                self._greetingTimer.cancel()
            self._greetingTimer = None

    def startTLS(self) -> None:
        """
        The server said go ahead to STARTTLS/STLS: switch to TLS with the
        pool's settings. Bytes the server sent after its go-ahead would be
        taken as if they came over TLS (the curl CVE-2021-22947 class):
        they fail the dialog instead.
        """
        if self._buffer:
            count = len(self._buffer)
            self._takeBuffer()
            self.log.warn(
                "server {server} sent {count} bytes after its STARTTLS answer, "
                "before TLS; closing",
                server=self.server.qualifiedName,
                count=count,
            )
            self.fail(f"{count} bytes after the server's STARTTLS answer")
            self.transport.abortConnection()
            return
        tls = self.front.factory.backendTLSFor(self.pool.name)
        if tls is None:
            self.fail("the pool has no TLS settings for STARTTLS")
            self.transport.abortConnection()
            return
        self.tls = TLS_STARTTLS
        self._handshaking = True
        self.transport.startTLS(tls.creatorFor(self.server))

    def handshakeCompleted(self) -> None:
        """
        The STARTTLS handshake with the server succeeded: a connection
        lost from now on is no longer a TLS failure.
        """
        self._handshaking = False

    def accept(self, reply: bytes) -> None:
        """
        The server accepted the login; C{reply} goes to the client. What
        is still buffered is relayed to the client after it.
        """
        if not self._conclude():
            return
        self.tlsVersion = tlsVersion(self.transport)
        self.result.callback(DialogResult(True, reply, self._takeBuffer()))

    def refuse(self, reply: bytes) -> None:
        """
        The server refused the login; C{reply} goes to the client (after
        the failure delay). The session closes this connection.
        """
        if not self._conclude():
            return
        self.result.callback(DialogResult(False, reply))

    def fail(self, detail: str) -> None:
        """
        The server cannot be used; C{detail} is one line for the log.
        """
        if not self._conclude():
            return
        self.result.errback(DialogFailed(detail, retryable=not self.loginSent))

    # Protocol events.

    def dataReceived(self, data: bytes) -> None:
        if self._leg is not None:
            self._leg.dataReceived(data)
        elif not self._done:
            if self.server is None:
                self._buffer += data
            else:
                self._feed(data)

    def readConnectionLost(self) -> None:
        if self._leg is not None:
            self._leg.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self._leg is not None:
            self._leg.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._leg is not None:
            self._leg.connectionLost(reason)
            return
        if not self._done:
            detail = describeLost(reason, self._handshaking)
            if self.farewell is not None:
                detail += f" (the server said: {self.farewell})"
            self.fail(detail)

    def _lineOverflow(self) -> None:
        self.fail(f"server sent a line longer than {self.maxLine} bytes")
        self.transport.abortConnection()

    def _greetingTimedOut(self) -> None:
        self._greetingTimer = None
        self.fail(f"no greeting within {self.pool.options.connectTimeout:g}s")
        self.transport.abortConnection()

    def _finish(self) -> None:
        self._done = True
        self.greetingReceived()

    def _conclude(self) -> bool:
        """
        The dialog has its answer: end it and deliver no more lines.
        False when it had ended already (the answer is dropped).
        """
        if self._done:
            return False
        self._finish()
        self._stopped = True
        return True


class _DialogFactory(Factory):
    """
    Builds one L{BackendDialog} per connection attempt of a login.
    """

    noisy = False

    def __init__(self, front: MailFrontProtocol, credentials: Credentials) -> None:
        self.front = front
        self.credentials = credentials

    def buildProtocol(self, addr):
        return self.front.makeDialog(self.credentials)
