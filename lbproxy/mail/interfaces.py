"""
What a mail protocol (IMAP, POP3) implements on top of the shared session
of L{lbproxy.mail.session}: the hooks its base classes call.
"""

from zope.interface import Attribute, Interface


class IMailFrontHooks(Interface):
    """
    The client side of one mail protocol: a L{MailFrontProtocol} subclass.

    The base class calls these; it offers the subclass C{send},
    C{readBytes}, C{startTLS}, C{login}, C{rejectLogin}, C{close} and the
    policy properties C{tlsActive}, C{loginAllowed} and C{startTLSOffered}.
    """

    protocolName = Attribute('The protocol, first word of the log line: "imap", "pop3" (str).')

    def greet():
        """
        The connection is accepted: write the greeting.
        """

    def lineReceived(line):
        """
        One pre-login line (bytes), CRLF (or LF) removed. Lines are
        delivered one at a time, and none while a login is in progress: the
        rest stays buffered, so pipelined commands are answered, or relayed
        after a successful login, in order.
        """

    def lineTooLong():
        """
        A line exceeded C{limits.line}: write the protocol's error. The base
        class closes the connection afterwards.
        """

    def loginTimedOut():
        """
        C{timeouts.login} passed: write a goodbye. The base class closes
        afterwards.
        """

    def makeDialog(credentials):
        """
        A new L{IMailDialogHooks} provider (a L{BackendDialog} subclass) for
        one backend connection attempt of the login being placed.
        """

    def loginUnavailable(detail):
        """
        No server could take the login: write the protocol's temporary
        failure (IMAP C{NO [UNAVAILABLE]}, POP3 C{-ERR [SYS/TEMP]}).
        """

    def tooManyFailures():
        """
        The connection reached C{auth.max_failures}: write a goodbye if the
        protocol has one. The base class closes.
        """

    def failedLoginReply():
        """
        The answer (bytes) to a login refused by lbproxy itself (IMAP
        C{NO [AUTHENTICATIONFAILED]}, POP3 C{-ERR [AUTH]}), sent after the
        failure delay like a store's refusal.
        """

    def tlsStarted():
        """
        STARTTLS/STLS switched the connection to TLS: forget whatever the
        plaintext session established.
        """


class IMailDialogHooks(Interface):
    """
    The server side of one mail protocol's login: a L{BackendDialog}
    subclass. It ends the dialog with the base class's C{accept}, C{refuse}
    or C{fail}, and may call C{startTLS} after the server's STARTTLS/STLS
    go-ahead.
    """

    def start():
        """
        The backend connection is placed (after any PROXY header was sent).
        """

    def lineReceived(line):
        """
        One line the server sent (bytes, CRLF removed).
        """
