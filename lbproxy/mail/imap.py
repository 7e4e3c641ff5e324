"""
The IMAP front (RFC 3501 / 9051): a proxy that answers a client until it
logs in, then hands the session to the user's IMAP server.

Before login lbproxy itself answers CAPABILITY, NOOP, LOGOUT, ID (RFC
2971), STARTTLS (RFC 2595), LOGIN (atom, quoted string, literal C{{n}}
after a C{+} continuation, or LITERAL+ C{{n+}}, RFC 7888) and
AUTHENTICATE PLAIN (with a SASL-IR initial response, RFC 4959, or after a
continuation; C{*} cancels). Every other command gets C{BAD}; a line
without a valid tag gets C{* BAD}. It advertises only what it does:
C{IMAP4rev1 SASL-IR LITERAL+ ID}, C{STARTTLS} while it is offered,
C{AUTH=PLAIN} while logging in is allowed and C{LOGINDISABLED} while it is
not (plaintext with C{tls_required}). Nothing is cached across STARTTLS:
the client asks CAPABILITY again, and an ID it sent in plaintext is
forgotten.

The login is replayed to the server by L{IMAPDialog}: greeting, STARTTLS
when the pool upgrades with it, C{ID} with the client's address
(C{client_address = "id"}) and the ID parameters the client sent, then
LOGIN or AUTHENTICATE PLAIN under lbproxy's own tags. The client gets the
server's answer under its own tag, with the untagged responses that came
with it (C{[CAPABILITY ...]} after login is the server's). A refused
login is answered after the failure delay; the client may try again, each
attempt on a new server connection.
"""

from __future__ import annotations

import re

from zope.interface import implementer

from lbproxy.mail.arguments import hasControl
from lbproxy.mail.interfaces import IMailDialogHooks, IMailFrontHooks
from lbproxy.mail.sasl import Credentials, SASLError, decodePlain
from lbproxy.mail.dialog import BackendDialog
from lbproxy.mail.session import MailFrontProtocol, MailProxyFactory

# RFC 9051 formal syntax: ATOM-CHAR is any CHAR except atom-specials;
# ASTRING-CHAR adds "]"; a tag is ASTRING-CHARs without "+".
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_ASTRING = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
_LITERAL = re.compile(rb"\{([0-9]{1,10})(\+?)\}\Z")
_TAGGED = re.compile(rb"([^ ]+) (OK|NO|BAD)(?: (.*))?\Z", re.IGNORECASE | re.DOTALL)

#: ID fields (RFC 2971) a client may not set: servers trust them from a
#: proxy (Dovecot's login_trusted_networks), so a client sending them
#: could pose as another address or session.
_TRUSTED_ID_PREFIXES = (b"x-originating-", b"x-connected-", b"x-proxy-", b"x-session-", b"x-forward-")
_ID_MAX_PAIRS = 30
_ID_MAX_FIELD = 30
_ID_MAX_VALUE = 1024

#: Most bytes of untagged responses (with the literals they carry) a server
#: may send before its answer to the login: they are held to go to the
#: client with that answer, and a server sending more is not used.
MAX_HELD = 1 << 20

#: Commands of the authenticated and selected states (and extensions of
#: them): before login they get a BAD naming the need to log in.
_AFTER_LOGIN = frozenset(
    b"""SELECT EXAMINE CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB
    STATUS APPEND CHECK CLOSE EXPUNGE SEARCH FETCH STORE COPY MOVE UID IDLE
    NAMESPACE ENABLE UNSELECT COMPRESS GETQUOTA GETQUOTAROOT SETQUOTA
    GETACL SETACL MYRIGHTS LISTRIGHTS GETMETADATA SETMETADATA NOTIFY""".split()
)

CAPABILITY_BASE = (b"IMAP4rev1", b"SASL-IR", b"LITERAL+", b"ID")


class IMAPSyntaxError(ValueError):
    """
    A command the proxy cannot parse; the text goes into the BAD answer.
    """


def isAtom(value: bytes) -> bool:
    return _ATOM.fullmatch(value) is not None


def quotable(value: bytes) -> bool:
    """
    Whether C{value} can be sent as an IMAP quoted string: 7-bit, no NUL,
    CR or LF.
    """
    return all(0 < byte < 0x80 and byte not in (10, 13) for byte in value)


def quote(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class Tokens:
    """
    The arguments of one command: the text of its lines with the literals
    between them (C{lines[i]} ends with the marker of C{literals[i]}).

    L{next} returns C{("atom", bytes)}, C{("string", bytes)} (quoted or
    literal, decoded), C{("list", [tokens])}, or None at the end.
    """

    def __init__(self, lines: list[bytes], literals: list[bytes], position: int = 0) -> None:
        self.lines = lines
        self.literals = literals
        self.index = 0
        self.position = position

    def _skipSpace(self) -> None:
        line = self.lines[self.index]
        while self.position < len(line) and line[self.position] == 0x20:
            self.position += 1

    def atEnd(self) -> bool:
        self._skipSpace()
        return self.index == len(self.lines) - 1 and self.position >= len(self.lines[self.index])

    def next(self):
        if self.atEnd():
            return None
        line = self.lines[self.index]
        if self.position >= len(line):
            raise IMAPSyntaxError("unexpected end of line")
        first = line[self.position]
        if first == ord("("):
            self.position += 1
            items = []
            while True:
                self._skipSpace()
                line = self.lines[self.index]
                if self.position < len(line) and line[self.position] == ord(")"):
                    self.position += 1
                    return ("list", items)
                item = self.next()
                if item is None:
                    raise IMAPSyntaxError("unterminated list")
                items.append(item)
        if first == ord(")"):
            raise IMAPSyntaxError("unexpected )")
        if first == ord('"'):
            return ("string", self._quoted(line))
        if first == ord("{"):
            match = _LITERAL.match(line, self.position)
            if match is None or self.index >= len(self.literals):
                raise IMAPSyntaxError("invalid literal")
            value = self.literals[self.index]
            self.index += 1
            self.position = 0
            return ("string", value)
        match = _ASTRING.match(line, self.position)
        if match is None:
            raise IMAPSyntaxError("invalid characters")
        self.position = match.end()
        return ("atom", match.group())

    def _quoted(self, line: bytes) -> bytes:
        out = bytearray()
        position = self.position + 1
        while position < len(line):
            byte = line[position]
            if byte == ord('"'):
                self.position = position + 1
                return bytes(out)
            if byte == ord("\\"):
                position += 1
                if position >= len(line) or line[position] not in b'"\\':
                    raise IMAPSyntaxError("invalid escape in quoted string")
                byte = line[position]
            elif byte == 0:
                raise IMAPSyntaxError("NUL in quoted string")
            out.append(byte)
            position += 1
        raise IMAPSyntaxError("unterminated quoted string")


def astring(token) -> bytes:
    """
    The value of an astring argument token (atom, quoted or literal).
    """
    if token is None:
        raise IMAPSyntaxError("missing argument")
    kind, value = token
    if kind == "string":
        return value
    if kind == "atom":
        return value
    raise IMAPSyntaxError("expected a string")


def parseID(tokens: Tokens) -> list[tuple[bytes, bytes | None]]:
    """
    The field/value pairs of an ID command's argument (RFC 2971): a list
    of string pairs, or NIL.
    """
    token = tokens.next()
    if token is None:
        raise IMAPSyntaxError("ID needs an argument")
    if not tokens.atEnd():
        raise IMAPSyntaxError("ID takes one argument")
    kind, value = token
    if kind == "atom" and value.upper() == b"NIL":
        return []
    if kind != "list" or len(value) % 2:
        raise IMAPSyntaxError("ID takes NIL or a list of field/value pairs")
    if len(value) > _ID_MAX_PAIRS * 2:
        raise IMAPSyntaxError(f"ID takes at most {_ID_MAX_PAIRS} pairs")
    pairs = []
    for index in range(0, len(value), 2):
        (fieldKind, field), (valueKind, text) = value[index], value[index + 1]
        if fieldKind != "string" or len(field) > _ID_MAX_FIELD:
            raise IMAPSyntaxError("ID fields are strings of at most 30 octets")
        if valueKind == "atom" and text.upper() == b"NIL":
            text = None
        elif valueKind != "string" or len(text) > _ID_MAX_VALUE:
            raise IMAPSyntaxError("ID values are NIL or strings of at most 1024 octets")
        if hasControl(field) or (text is not None and hasControl(text)):
            raise IMAPSyntaxError("ID fields and values may not contain control characters")
        pairs.append((field, text))
    return pairs


def clientIDParams(pairs: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    """
    The ID pairs of a client worth passing to the server: without the
    fields servers trust only from proxies, and only those that can be
    sent as quoted strings.
    """
    kept = []
    for field, value in pairs:
        if field.lower().startswith(_TRUSTED_ID_PREFIXES):
            continue
        if not quotable(field) or (value is not None and not quotable(value)):
            continue
        kept.append((field, value))
    return kept


@implementer(IMailFrontHooks)
class IMAPFront(MailFrontProtocol):
    """
    The client side of an IMAP session before login.

    @ivar clientID: the ID pairs the client sent (trusted fields removed),
        passed on to the server; None when it sent no ID.
    """

    protocolName = "imap"

    def __init__(self, factory, reactor) -> None:
        super().__init__(factory, reactor)
        self.clientID: list[tuple[bytes, bytes | None]] | None = None
        self._lines: list[bytes] = []
        self._literals: list[bytes] = []
        self._commandSize = 0
        self._saslTag: bytes | None = None
        self._loginTag = b"*"

    # Hooks of MailFrontProtocol.

    def greet(self) -> None:
        self.send(b"* OK [CAPABILITY " + self.capabilities() + b"] lbproxy IMAP proxy ready\r\n")

    def capabilities(self) -> bytes:
        """
        What the proxy offers now.
        """
        caps = list(CAPABILITY_BASE)
        if self.startTLSOffered:
            caps.append(b"STARTTLS")
        caps.append(b"AUTH=PLAIN" if self.loginAllowed else b"LOGINDISABLED")
        return b" ".join(caps)

    def lineTooLong(self) -> None:
        self.send(b"* BYE Line too long\r\n")

    def loginTimedOut(self) -> None:
        self.send(b"* BYE Autologout; no login in time\r\n")

    def tooManyFailures(self) -> None:
        self.send(b"* BYE Too many authentication failures\r\n")

    def loginUnavailable(self, detail: str) -> None:
        self.send(self._loginTag + b" NO [UNAVAILABLE] Mail store temporarily unavailable, try again later\r\n")

    def failedLoginReply(self) -> bytes:
        return self._loginTag + b" NO [AUTHENTICATIONFAILED] Authentication failed\r\n"

    def tlsStarted(self) -> None:
        self.clientID = None

    def makeDialog(self, credentials: Credentials) -> IMAPDialog:
        return IMAPDialog(self, credentials, self._loginTag, self.clientID)

    # Reading commands: lines, and literals between them.

    def lineReceived(self, line: bytes) -> None:
        if self._saslTag is not None:
            self._saslResponse(line)
            return
        self._commandSize += len(line) + 2
        self._lines.append(line)
        match = _LITERAL.search(line)
        if match is None:
            lines, literals = self._lines, self._literals
            self._resetCommand()
            self._command(lines, literals)
            return
        size = int(match.group(1))
        synchronizing = not match.group(2)
        tag = self._tagOf(self._lines[0])
        limits = self.config.limits
        tooBig = size > limits.literal or self._commandSize + size > limits.line + 2 * limits.literal
        if tag is None or tooBig:
            self._resetCommand()
            reason = b"Literal too large" if tooBig else b"Invalid tag"
            self.send((tag or b"*") + b" BAD " + reason + b"\r\n")
            if not synchronizing:
                # The literal's bytes follow anyway: they cannot be told
                # apart from commands.
                self.close("literal-too-large" if tooBig else "protocol-error")
            return
        if synchronizing:
            self.send(b"+ Ready for literal data\r\n")
        self._commandSize += size
        self.readBytes(size, self._literalReceived)

    def _literalReceived(self, data: bytes) -> None:
        self._literals.append(data)

    def _resetCommand(self) -> None:
        self._lines = []
        self._literals = []
        self._commandSize = 0

    @staticmethod
    def _tagOf(line: bytes) -> bytes | None:
        tag, space, _ = line.partition(b" ")
        if not space or _TAG.fullmatch(tag) is None:
            return None
        return tag

    def _command(self, lines: list[bytes], literals: list[bytes]) -> None:
        first = lines[0]
        tag = self._tagOf(first)
        if tag is None:
            self.send(b"* BAD Invalid tag or command\r\n")
            return
        rest = first[len(tag) + 1 :]
        name, _, _ = rest.partition(b" ")
        if _ATOM.fullmatch(name) is None:
            self.send(tag + b" BAD Invalid command\r\n")
            return
        tokens = Tokens(lines, literals, len(tag) + 1 + len(name))
        handler = getattr(self, "do_" + name.upper().decode("ascii"), None)
        try:
            if handler is not None:
                handler(tag, tokens)
            elif name.upper() in _AFTER_LOGIN:
                self.send(tag + b" BAD Log in first\r\n")
            else:
                self.send(tag + b" BAD Unknown command\r\n")
        except IMAPSyntaxError as e:
            self.send(tag + b" BAD " + str(e).encode("ascii") + b"\r\n")

    @staticmethod
    def _noArguments(tokens: Tokens) -> None:
        if not tokens.atEnd():
            raise IMAPSyntaxError("unexpected arguments")

    # Commands.

    def do_CAPABILITY(self, tag: bytes, tokens: Tokens) -> None:
        self._noArguments(tokens)
        self.send(b"* CAPABILITY " + self.capabilities() + b"\r\n" + tag + b" OK CAPABILITY completed\r\n")

    def do_NOOP(self, tag: bytes, tokens: Tokens) -> None:
        self._noArguments(tokens)
        self.send(tag + b" OK NOOP completed\r\n")

    def do_LOGOUT(self, tag: bytes, tokens: Tokens) -> None:
        self._noArguments(tokens)
        self.send(b"* BYE Logging out\r\n" + tag + b" OK LOGOUT completed\r\n")
        self.close("logout")

    def do_ID(self, tag: bytes, tokens: Tokens) -> None:
        self.clientID = clientIDParams(parseID(tokens))
        self.send(b'* ID ("name" "lbproxy")\r\n' + tag + b" OK ID completed\r\n")

    def do_STARTTLS(self, tag: bytes, tokens: Tokens) -> None:
        self._noArguments(tokens)
        if self.tlsActive:
            self.send(tag + b" BAD TLS is already active\r\n")
        elif not self.startTLSOffered:
            self.send(tag + b" BAD STARTTLS is not offered\r\n")
        else:
            self.startTLS(tag + b" OK Begin TLS negotiation now\r\n")

    def do_LOGIN(self, tag: bytes, tokens: Tokens) -> None:
        user = astring(tokens.next())
        password = astring(tokens.next())
        self._noArguments(tokens)
        if not self.loginAllowed:
            self.send(tag + b" NO [PRIVACYREQUIRED] LOGIN is disabled until TLS is active\r\n")
            return
        self._loginTag = tag
        self.login(Credentials(user, password))

    def do_AUTHENTICATE(self, tag: bytes, tokens: Tokens) -> None:
        mechanism = tokens.next()
        if mechanism is None or mechanism[0] != "atom":
            raise IMAPSyntaxError("AUTHENTICATE needs a mechanism")
        response = tokens.next()
        if response is not None and response[0] != "atom":
            raise IMAPSyntaxError("invalid initial response")
        self._noArguments(tokens)
        if not self.loginAllowed:
            self.send(tag + b" NO [PRIVACYREQUIRED] Authentication is disabled until TLS is active\r\n")
            return
        if mechanism[1].upper() != b"PLAIN":
            self.send(tag + b" NO [CANNOT] Unsupported authentication mechanism\r\n")
            return
        if response is None:
            self._saslTag = tag
            self.send(b"+ \r\n")
            return
        self._plain(tag, response[1])

    def _saslResponse(self, line: bytes) -> None:
        tag, self._saslTag = self._saslTag, None
        if line == b"*":
            self.send(tag + b" BAD AUTHENTICATE cancelled\r\n")
            return
        self._plain(tag, line)

    def _plain(self, tag: bytes, response: bytes) -> None:
        try:
            credentials = decodePlain(response)
        except SASLError as e:
            if str(e) == "invalid base64":
                self.send(tag + b" BAD Invalid base64 response\r\n")
                return
            self._loginTag = tag
            self.rejectLogin(self.failedLoginReply())
            return
        self._loginTag = tag
        self.login(credentials)


# Steps of an IMAPDialog.
_GREETING = "greeting"
_SETUP = "setup"
_LOGIN = "login"


@implementer(IMailDialogHooks)
class IMAPDialog(BackendDialog):
    """
    The server side of an IMAP login: greeting, optional STARTTLS,
    CAPABILITY when needed, ID, then the login, each under lbproxy's own
    tags (C{lbp1}, C{lbp2}...). ID and the login are pipelined.

    The credentials are sent as atoms when they are atoms, else as
    LITERAL+ literals when the server offers LITERAL+, else as quoted
    strings when they can be quoted, else as synchronizing literals (each
    sent after the server's C{+}).

    @ivar capabilities: what the server offers, once known (None before,
        and again after STARTTLS).
    """

    def __init__(self, front: IMAPFront, credentials: Credentials, clientTag: bytes, clientID) -> None:
        super().__init__(front, credentials)
        self.clientTag = clientTag
        self.clientID = clientID
        self.capabilities: set[bytes] | None = None
        self._step = _GREETING
        self._tags = 0
        self._waiting: dict[bytes, object] = {}
        self._continuations: list[bytes] = []
        self._loginTag: bytes | None = None
        self._untagged: list[bytes] = []
        self._parts: list[bytes] = []
        # Bytes in _untagged, and in _parts (see MAX_HELD).
        self._held = 0
        self._partsHeld = 0

    def start(self) -> None:
        self._step = _GREETING

    # Server lines, with any literals they carry.

    def lineReceived(self, line: bytes) -> None:
        match = _LITERAL.search(line)
        if match is not None:
            size = int(match.group(1))
            self._partsHeld += len(line) + 2 + size
            if self._held + self._partsHeld > MAX_HELD:
                self._heldTooMuch()
                return
            self._parts.append(line + b"\r\n")
            self.readBytes(size, self._parts.append)
            return
        raw = b"".join(self._parts) + line + b"\r\n"
        first = self._parts[0][:-2] if self._parts else line
        self._parts = []
        self._partsHeld = 0
        self._response(first, raw)

    def _heldTooMuch(self) -> None:
        self.fail(f"server sent more than {MAX_HELD} bytes of untagged responses before answering the login")
        self.transport.abortConnection()

    def _response(self, line: bytes, raw: bytes) -> None:
        if self._step == _GREETING:
            self._greeting(line)
            return
        if line.startswith(b"+"):
            if self._continuations:
                self.send(self._continuations.pop(0))
            else:
                self.fail("unexpected continuation from the server")
                self.transport.abortConnection()
            return
        if line.startswith(b"* "):
            if line[2:6].upper() == b"BYE ":
                self.farewell = printableLine(line)
            self._noteCapabilities(line)
            if self._loginTag is not None and not self._waiting.keys() - {self._loginTag}:
                self._untagged.append(raw)
                self._held += len(raw)
                if self._held > MAX_HELD:
                    self._heldTooMuch()
            return
        match = _TAGGED.match(line)
        if match is None or match.group(1) not in self._waiting:
            self.fail("unexpected response from the server")
            self.transport.abortConnection()
            return
        tag = match.group(1)
        handler = self._waiting.pop(tag)
        handler(match.group(2).upper(), line, raw)

    def _greeting(self, line: bytes) -> None:
        upper = line.upper()
        if not upper.startswith(b"* OK"):
            if upper.startswith(b"* PREAUTH"):
                self.fail("server greeted with PREAUTH")
            else:
                self.fail("server greeting is not * OK: " + printableLine(line))
            self.transport.abortConnection()
            return
        self.greetingReceived()
        self._noteCapabilities(line)
        self._step = _SETUP
        self._next()

    def _noteCapabilities(self, line: bytes) -> None:
        upper = line.upper()
        if upper.startswith(b"* CAPABILITY "):
            words = upper[len(b"* CAPABILITY ") :]
        else:
            start = upper.find(b"[CAPABILITY ")
            if start < 0:
                return
            end = upper.find(b"]", start)
            if end < 0:
                return
            words = upper[start + len(b"[CAPABILITY ") : end]
        self.capabilities = set(words.split())

    def _command(self, text: bytes, handler) -> bytes:
        self._tags += 1
        tag = b"lbp%d" % self._tags
        self._waiting[tag] = handler
        self.send(tag + b" " + text + b"\r\n")
        return tag

    # The steps.

    def _next(self) -> None:
        tls = self.pool.options.tls
        if tls is not None and tls.starttls and self.tls == "none":
            if self.capabilities is None:
                self._command(b"CAPABILITY", self._capabilitiesDone)
            elif b"STARTTLS" not in self.capabilities:
                self.fail("server does not offer STARTTLS")
                self.transport.abortConnection()
            else:
                self._command(b"STARTTLS", self._startTLSDone)
            return
        if self.capabilities is None:
            self._command(b"CAPABILITY", self._capabilitiesDone)
            return
        self._sendID()
        self._sendLogin()

    def _capabilitiesDone(self, status: bytes, line: bytes, raw: bytes) -> None:
        if status != b"OK" or self.capabilities is None:
            self.fail("CAPABILITY failed: " + printableLine(line))
            self.transport.abortConnection()
            return
        self._next()

    def _startTLSDone(self, status: bytes, line: bytes, raw: bytes) -> None:
        if status != b"OK":
            self.fail("server refused STARTTLS: " + printableLine(line))
            self.transport.abortConnection()
            return
        self.startTLS()
        if not self._done:
            self.capabilities = None
            self._next()

    def _sendID(self) -> None:
        if b"ID" not in self.capabilities:
            return
        pairs: list[tuple[bytes, bytes | None]] = []
        if self.pool.options.clientAddress == "id":
            client = self.front.client
            host = getattr(client, "host", None)
            port = getattr(client, "port", None)
            if host is not None and port is not None:
                pairs += [(b"x-originating-ip", host.encode("ascii")), (b"x-originating-port", b"%d" % port)]
        if self.clientID:
            pairs += self.clientID
        if not pairs:
            return
        items = []
        for field, value in pairs:
            items.append(quote(field))
            items.append(b"NIL" if value is None else quote(value))
        self._command(b"ID (" + b" ".join(items) + b")", self._idDone)

    def _idDone(self, status: bytes, line: bytes, raw: bytes) -> None:
        if status != b"OK":
            self.log.warn(
                "server {server} refused ID: {line}",
                server=self.server.qualifiedName,
                line=printableLine(line),
            )

    def _sendLogin(self) -> None:
        caps = self.capabilities
        credentials = self.credentials
        loginOK = b"LOGINDISABLED" not in caps
        plainOK = b"AUTH=PLAIN" in caps
        simple = not credentials.authzid or credentials.authzid == credentials.user
        if credentials.mechanism == "PLAIN" and plainOK:
            usePlain = True
        elif loginOK and (credentials.mechanism == "LOGIN" or simple):
            usePlain = False
        elif plainOK:
            usePlain = True
        else:
            self.fail("server allows neither LOGIN nor AUTHENTICATE PLAIN")
            self.transport.abortConnection()
            return
        self._tags += 1
        tag = self._loginTag = b"lbp%d" % self._tags
        self._waiting[tag] = self._loginDone
        if usePlain:
            response = credentials.plainResponse()
            if b"SASL-IR" in caps:
                chunks = [tag + b" AUTHENTICATE PLAIN " + response + b"\r\n"]
            else:
                chunks = [tag + b" AUTHENTICATE PLAIN\r\n", response + b"\r\n"]
        else:
            chunks = encodeCommand(tag + b" LOGIN", [credentials.user, credentials.password], b"LITERAL+" in caps)
        self.loginSent = True
        self.send(chunks[0])
        self._continuations = chunks[1:]

    def _loginDone(self, status: bytes, line: bytes, raw: bytes) -> None:
        reply = b"".join(self._untagged) + self.clientTag + raw[len(self._loginTag) :]
        self._untagged = []
        self._held = 0
        self._continuations = []
        if status == b"OK":
            self.accept(reply)
        else:
            self.refuse(reply)


def encodeCommand(prefix: bytes, values: list[bytes], literalPlus: bool) -> list[bytes]:
    """
    A command with astring arguments, as the chunks to send: the first at
    once, each next one after a C{+} continuation (synchronizing
    literals).
    """
    chunks = []
    current = prefix
    for value in values:
        current += b" "
        if value and isAtom(value):
            current += value
        elif literalPlus:
            current += b"{%d+}\r\n" % len(value) + value
        elif quotable(value):
            current += quote(value)
        else:
            chunks.append(current + b"{%d}\r\n" % len(value))
            current = value
    chunks.append(current + b"\r\n")
    return chunks


def printableLine(line: bytes, limit: int = 120) -> str:
    """
    A server line for a log message: ASCII, cut at C{limit}.
    """
    text = line[:limit].decode("ascii", "replace")
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)


class IMAPProxyFactory(MailProxyFactory):
    """
    Serves one C{mode = "imap"} listener.
    """

    protocol = IMAPFront
