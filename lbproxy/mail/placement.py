"""
Which server a login goes to: the store that holds the user's mailbox.

By default (C{stores = "distinct"}) the servers of a mail pool hold
different mailboxes, so each user has one home: the server the pool's
selector maps the user to with every server of the pool counted, whatever
its state. The login goes there or nowhere. When the home is down, in
maintenance, at its maxconn, refuses the connection or cannot be used,
the client gets the temporary failure: a login on any other store would
find an empty or someone else's mailbox there, and new mail could end up
split across stores. A re-hash over the servers still up, or the
connector's redispatch, would do exactly that, so neither is used: the
home is computed over the whole configured pool, and the pool's
C{retries} try that same server again after a failed connection attempt.
A draining home still takes its users (as a draining HTTP server takes
the requests persistence pins to it): they have nowhere else to go.

The home, by selector: C{hash} and C{maglev} with C{key = "user"} hash
the normalised user over all the servers (with every server up, where
their C{pick} sends the user too, so nothing moves when this applies); a
pool of one server is that server's, whatever its selector; a plugin
selector is asked once with every server of the pool and nothing
excluded, and its answer is the home. Selectors that do not place a user
on one server (round-robin, least connections, two random choices,
first, hashes of another key) are refused by the configuration check for
a pool of several distinct stores, and so are backup servers.

With C{stores = "replicas"} every server can serve every user (a shared
or replicated mail store): the selector picks among the servers that are
up, and a login that cannot be placed on one is placed on the next, up to
C{1 + retries} attempts, as for any other flow.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from lbproxy.config import STORES_REPLICAS
from lbproxy.core.connect import BackendConnector
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.errors import ConnectFailed
from lbproxy.mail.context import MailFlowContext
from lbproxy.mail.sasl import Credentials


def homeServer(pool: Pool, context: MailFlowContext) -> Server | None:
    """
    The server of C{pool} holding the mailbox of the user of C{context},
    whatever the state of the servers; None when the selector places the
    user nowhere.
    """
    servers = pool.servers
    if len(servers) == 1:
        return servers[0]
    selector = pool.selector
    home = getattr(selector, "home", None)
    if home is not None:
        return home(servers, context)
    server = selector.pick(servers, MailFlowContext(context.client, context.local, context.user))
    return server if server in servers else None


class Placement:
    """
    One login being placed: its pool, context (with the servers excluded
    after failed dialogs), credentials, and the connection attempts made.
    Every attempt, refused or connected, counts against the pool's
    C{1 + retries}.

    @ivar home: the user's server when the pool's stores are distinct,
        else None.
    """

    def __init__(self, pool: Pool, context: MailFlowContext, credentials: Credentials) -> None:
        self.pool = pool
        self.context = context
        self.credentials = credentials
        options = pool.options
        self.maxAttempts = 1 + options.retries
        self.attempts = 0
        self.replicas = options.stores == STORES_REPLICAS
        self.home = None if self.replicas else homeServer(pool, context)

    def refusal(self) -> str | None:
        """
        Why the login cannot be placed now without asking any server
        (distinct stores: the user's store cannot take it), or None.
        """
        if self.replicas:
            return None
        home = self.home
        if home is None:
            return f"the selector of pool {self.pool.name} placed the user on no server"
        if home.state in (ServerState.DOWN, ServerState.MAINT):
            return f"its store {home.qualifiedName} is {home.state.value}"
        if home.full:
            return f"its store {home.qualifiedName} is at its maxconn of {home.maxconn}"
        return None

    def connect(self, connector: BackendConnector, factory) -> Deferred:
        """
        Make the next connection attempt(s): distinct stores, one to the
        user's store; replicas, the selector's picks, with what is left
        of the attempts.
        """
        if self.replicas:
            return connector.connect(self.context, factory, attempts=self.maxAttempts - self.attempts)
        return connector.connect(self.context, factory, server=self.home, attempts=1)

    def connectFailed(self, error: ConnectFailed) -> bool:
        """
        The connector gave up after C{error.attempts} failed attempts:
        whether to try the user's store again (distinct stores, while
        attempts remain; with replicas the connector has already tried
        every attempt left). Only the store's own failures are tried
        again: a subclass of L{ConnectFailed} tells of another cause
        (lbproxy's own resource limits), which another attempt would
        meet too.
        """
        self.attempts += error.attempts
        return type(error) is ConnectFailed and not self.replicas and self.attempts < self.maxAttempts

    def mayRetryDialog(self, retryable: bool) -> bool:
        """
        A server connected but could not be used before the login was
        sent (C{retryable}): whether to place the login again, on another
        server. Only replicas: a distinct store that greets badly would
        do so again.
        """
        return retryable and self.replicas and self.attempts < self.maxAttempts
