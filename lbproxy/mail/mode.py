"""
The IMAP and POP3 fronts as the registry sees them (C{mode = "imap"},
C{"pop3"}): one package, two modes.
"""

from __future__ import annotations

from lbproxy.modes import FLOW_KEYS, FrontMode, PoolSetting, TLSRules


class MailMode(FrontMode):
    """
    What IMAP and POP3 listeners share: the pre-login keys, the user as a
    selector key, STARTTLS, the mail pool settings and their checks.

    @cvar clientAddresses: the C{client_address} values the protocol can
        send to its servers.
    """

    listenerKeys = ("tls_required", "user_pools", "user_domain", "limits", "auth")
    timeoutKeys = ("login",)
    #: "user": the normalised user name (L{lbproxy.mail.context.MailFlowContext}).
    selectionKeys = FLOW_KEYS | {"user"}
    poolSettings = (
        PoolSetting("tls.starttls", "tls.starttls", False, strict=True, what="upgrades server connections with STARTTLS"),
        PoolSetting(
            "client_address", "clientAddress", "none", strict=True, what="tells its servers the client's address in a command"
        ),
        PoolSetting("stores", "stores", None, strict=True, what="says what its mail stores hold"),
    )
    tlsRules = TLSRules(startTLS=True)
    #: IMAP IDLE clients re-issue their command every 29 minutes at most.
    idleTimeout = 1800.0
    clientAddresses: tuple[str, ...] = ("none",)

    def parseListener(self, table, timeouts, common, pools):
        from lbproxy.mail.config import parseMailListener

        return parseMailListener(table, timeouts, common, pools)

    def checkPool(self, table, listener, name, pool) -> None:
        from lbproxy.config.table import oneOf
        from lbproxy.mail.config import mailPoolProblem

        problem = mailPoolProblem(name, pool)
        if problem is not None:
            table.fail("pool", problem)
        if pool.clientAddress not in self.clientAddresses:
            table.fail(
                "pool",
                f"pool {name!r} passes the client address with {pool.clientAddress!r}, "
                f"which a {self.name} listener cannot send; expected {oneOf(self.clientAddresses)}",
            )


class IMAPMode(MailMode):
    name = "imap"
    description = "IMAP proxy: answers until login, then relays to the user's store"
    clientAddresses = ("none", "id")

    def buildFactory(self, listener, pools, reactor, serverTLS=None):
        from lbproxy.mail.imap import IMAPProxyFactory

        return IMAPProxyFactory(listener, pools, reactor, serverTLS)


class POP3Mode(MailMode):
    name = "pop3"
    description = "POP3 proxy: answers until login, then relays to the user's store"
    clientAddresses = ("none", "xclient")

    def buildFactory(self, listener, pools, reactor, serverTLS=None):
        from lbproxy.mail.pop3 import POP3ProxyFactory

        return POP3ProxyFactory(listener, pools, reactor, serverTLS)
