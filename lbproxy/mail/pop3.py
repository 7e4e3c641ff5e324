"""
The POP3 front (RFC 1939): a proxy that answers a client until it logs in,
then hands the session to the user's POP3 server.

Before login lbproxy itself answers CAPA (RFC 2449), USER and PASS, AUTH
PLAIN (RFC 5034, with an initial response or after a C{+} continuation;
C{*} cancels), STLS (RFC 2595) and QUIT; any other command gets C{-ERR}.
CAPA lists only what the proxy implements before login: USER and
C{SASL PLAIN} while a login is allowed (hidden in plaintext when
C{tls_required}), STLS while it is offered and TLS is not active yet,
RESP-CODES and AUTH-RESP-CODE (RFC 3206: C{[AUTH]}, C{[SYS/TEMP]}) and
PIPELINING: commands are answered in order, one at a time, and what a
client pipelines after a successful login reaches the server after it.
After login the client asks the server for its own capabilities.

L{POP3Dialog} replays the login on the user's server: greeting, STLS when
the pool asks for it, C{XCLIENT ADDR= PORT=} when the pool's
C{client_address} is C{"xclient"} (Dovecot accepts it from its
C{login_trusted_networks}), then USER/PASS or AUTH PLAIN as the client
logged in. The server's answer to the password is the client's answer.
"""

from __future__ import annotations

from zope.interface import implementer

from lbproxy.mail.interfaces import IMailDialogHooks, IMailFrontHooks
from lbproxy.mail.logtext import printable
from lbproxy.mail.sasl import Credentials, SASLError, decodePlain
from lbproxy.mail.dialog import BackendDialog
from lbproxy.mail.session import MailFrontProtocol, MailProxyFactory

#: Commands of the TRANSACTION state (RFC 1939, 2449), refused before login
#: with an answer saying so.
_AFTER_LOGIN = frozenset(
    b"STAT LIST RETR DELE NOOP RSET TOP UIDL LAST UTF8 LANG".split()
)

_AUTH_FAILED = b"-ERR [AUTH] Authentication failed.\r\n"


def printableLine(line: bytes) -> str:
    """
    A server line for a log message.
    """
    return printable(line.decode("ascii", "replace"), 120)


@implementer(IMailFrontHooks)
class POP3Front(MailFrontProtocol):
    """
    The client side of a POP3 session before login.

    @ivar pendingUser: the name a USER command gave, waiting for PASS.
    """

    protocolName = "pop3"

    def __init__(self, factory, reactor) -> None:
        super().__init__(factory, reactor)
        self.pendingUser: bytes | None = None
        self._sasl = False

    # Hooks of MailFrontProtocol.

    def greet(self) -> None:
        self.send(b"+OK lbproxy POP3 proxy ready.\r\n")

    def capabilities(self) -> list[bytes]:
        """
        The CAPA lines the proxy offers now.
        """
        caps = []
        if self.loginAllowed:
            caps += [b"USER", b"SASL PLAIN"]
        if self.startTLSOffered:
            caps.append(b"STLS")
        caps += [b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"IMPLEMENTATION lbproxy"]
        return caps

    def lineTooLong(self) -> None:
        self.send(b"-ERR Line too long.\r\n")

    def loginTimedOut(self) -> None:
        self.send(b"-ERR Disconnected for inactivity.\r\n")

    def tooManyFailures(self) -> None:
        self.send(b"-ERR Too many authentication failures.\r\n")

    def loginUnavailable(self, detail: str) -> None:
        self.send(b"-ERR [SYS/TEMP] Mail store temporarily unavailable, try again later.\r\n")

    def failedLoginReply(self) -> bytes:
        return _AUTH_FAILED

    def tlsStarted(self) -> None:
        self.pendingUser = None

    def makeDialog(self, credentials: Credentials) -> POP3Dialog:
        return POP3Dialog(self, credentials)

    # Commands.

    def lineReceived(self, line: bytes) -> None:
        if self._sasl:
            self._sasl = False
            self._saslResponse(line)
            return
        name, _, argument = line.partition(b" ")
        handler = getattr(self, "do_" + name.upper().decode("ascii", "replace"), None)
        if handler is not None and name.isalpha():
            handler(argument)
        elif name.upper() in _AFTER_LOGIN:
            self.send(b"-ERR Log in first.\r\n")
        else:
            self.send(b"-ERR Unknown command.\r\n")

    def do_CAPA(self, argument: bytes) -> None:
        self.send(
            b"+OK Capability list follows\r\n"
            + b"".join(cap + b"\r\n" for cap in self.capabilities())
            + b".\r\n"
        )

    def do_QUIT(self, argument: bytes) -> None:
        self.send(b"+OK Logging out.\r\n")
        self.close("logout")

    def do_STLS(self, argument: bytes) -> None:
        if self.tlsActive:
            self.send(b"-ERR TLS is already active.\r\n")
        elif not self.startTLSOffered:
            self.send(b"-ERR STLS is not offered.\r\n")
        elif argument:
            self.send(b"-ERR STLS takes no arguments.\r\n")
        else:
            self.startTLS(b"+OK Begin TLS negotiation now.\r\n")

    def _refusePlaintext(self) -> bool:
        """
        Answer a login command sent in plaintext when TLS is required;
        true when it was refused.
        """
        if self.loginAllowed:
            return False
        self.send(b"-ERR [AUTH] Plaintext authentication is disabled, use STLS first.\r\n")
        return True

    def do_USER(self, argument: bytes) -> None:
        if self._refusePlaintext():
            return
        if not argument:
            self.send(b"-ERR USER needs a name.\r\n")
            return
        self.pendingUser = argument
        self.send(b"+OK\r\n")

    def do_PASS(self, argument: bytes) -> None:
        if self._refusePlaintext():
            return
        user, self.pendingUser = self.pendingUser, None
        if user is None:
            self.send(b"-ERR USER first.\r\n")
            return
        # PASS has exactly one argument: spaces belong to the password.
        self.login(Credentials(user, argument))

    def do_AUTH(self, argument: bytes) -> None:
        if self._refusePlaintext():
            return
        self.pendingUser = None
        mechanism, _, response = argument.partition(b" ")
        if not mechanism:
            self.send(b"+OK\r\nPLAIN\r\n.\r\n")
            return
        if mechanism.upper() != b"PLAIN":
            self.send(b"-ERR Unsupported authentication mechanism.\r\n")
            return
        if not response:
            self._sasl = True
            self.send(b"+ \r\n")
            return
        self._plain(response)

    def _saslResponse(self, line: bytes) -> None:
        if line == b"*":
            self.send(b"-ERR Authentication cancelled.\r\n")
            return
        self._plain(line)

    def _plain(self, response: bytes) -> None:
        try:
            credentials = decodePlain(response)
        except SASLError as e:
            if str(e) == "invalid base64":
                self.send(b"-ERR Invalid base64 response.\r\n")
                return
            self.rejectLogin(self.failedLoginReply())
            return
        self.login(credentials)


# Steps of a POP3Dialog.
_GREETING = "greeting"
_STLS = "stls"
_XCLIENT = "xclient"
_USER = "user"
_PASS = "pass"
_AUTH = "auth"


@implementer(IMailDialogHooks)
class POP3Dialog(BackendDialog):
    """
    The server side of a POP3 login: greeting, optional STLS, optional
    XCLIENT, then USER/PASS (a client's USER/PASS) or AUTH PLAIN with an
    initial response (a client's AUTH PLAIN; sent again after a C{+}
    continuation for a server that wants one), one command at a time.
    """

    def start(self) -> None:
        self._step = _GREETING

    def lineReceived(self, line: bytes) -> None:
        step = self._step
        if step == _AUTH and (line == b"+" or line.startswith(b"+ ")):
            self.send(self.credentials.plainResponse() + b"\r\n")
            return
        ok = line.startswith(b"+OK")
        if not ok and not line.startswith(b"-ERR"):
            self._abort("unexpected answer from the server: " + printableLine(line))
            return
        if step == _GREETING:
            if not ok:
                self._abort("server greeting is not +OK: " + printableLine(line))
                return
            self.greetingReceived()
            tls = self.pool.options.tls
            if tls is not None and tls.starttls:
                self._step = _STLS
                self.send(b"STLS\r\n")
                return
            self._afterTLS()
        elif step == _STLS:
            if not ok:
                self._abort("server refused STLS: " + printableLine(line))
                return
            self.startTLS()
            if not self._done:
                self._afterTLS()
        elif step == _XCLIENT:
            if not ok:
                self.log.warn(
                    "server {server} refused XCLIENT: {line}",
                    server=self.server.qualifiedName,
                    line=printableLine(line),
                )
            self._sendLogin()
        elif step == _USER:
            if not ok:
                self.refuse(line + b"\r\n")
                return
            self._step = _PASS
            self.send(b"PASS " + self.credentials.password + b"\r\n")
        else:
            if ok:
                self.accept(line + b"\r\n")
            else:
                self.refuse(line + b"\r\n")

    def _abort(self, detail: str) -> None:
        self.fail(detail)
        self.transport.abortConnection()

    def _afterTLS(self) -> None:
        if self.pool.options.clientAddress == "xclient":
            client = self.front.client
            host = getattr(client, "host", None)
            port = getattr(client, "port", None)
            if host is not None and port is not None:
                self._step = _XCLIENT
                self.send(b"XCLIENT ADDR=%s PORT=%d\r\n" % (host.encode("ascii"), port))
                return
        self._sendLogin()

    def _sendLogin(self) -> None:
        credentials = self.credentials
        self.loginSent = True
        if credentials.mechanism == "PLAIN":
            self._step = _AUTH
            self.send(b"AUTH PLAIN " + credentials.plainResponse() + b"\r\n")
        else:
            self._step = _USER
            self.send(b"USER " + credentials.user + b"\r\n")


class POP3ProxyFactory(MailProxyFactory):
    """
    Serves one C{mode = "pop3"} listener.
    """

    protocol = POP3Front
