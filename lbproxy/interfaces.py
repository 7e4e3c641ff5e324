"""
Public interfaces of lbproxy.

Every protocol front (tcp, http, imap, pop3) shares the same path from a
listener to a backend::

    listener -> pool -> IBackendSelector.pick() -> IServer -> connect -> relay

Selectors are the main extension point: a third party writes an
L{ISelectorPlugin} and drops it into an ``lbproxy/plugins/`` directory on
sys.path; the config names it by its C{name}.
"""

from zope.interface import Attribute, Interface


class IServer(Interface):
    """
    One backend server of a pool, as selectors and health checks see it.
    """

    name = Attribute("Unique name of the server within its pool (str).")
    address = Attribute("Twisted client endpoint string of the server (str).")
    weight = Attribute("Relative weight, 0-256 (int); 0 takes no new traffic.")
    backup = Attribute("True if the server only serves when no primary can.")
    maxconn = Attribute("Most concurrent connections, 0 for no limit (int).")
    state = Attribute("Current L{lbproxy.core.pool.ServerState}.")
    active = Attribute("Connections currently assigned to the server (int).")
    full = Attribute("True while the server is at its maxconn.")

    def acquire():
        """
        Count one more connection assigned to this server.
        """

    def release():
        """
        Count one connection fewer; the counterpart of L{acquire}.
        """


class ISelectionContext(Interface):
    """
    What a selector may know about the connection or request being placed.
    """

    protocol = Attribute('Transport protocol of the flow: "tcp" (str).')
    client = Attribute("Client address (L{twisted.internet.interfaces.IAddress}).")
    local = Attribute("Address the client connected to (IAddress).")
    excluded = Attribute(
        "Servers already tried for this flow (a set); a selector must not "
        "return one of them."
    )

    def key(spec):
        """
        Return the bytes a hashing selector hashes for C{spec}, or None when
        the flow has no such value (e.g. a missing header).

        @param spec: a key specification such as C{"src"} (client address),
            C{"5tuple"}; HTTP and mail fronts add their own (C{"uri"},
            C{"header:NAME"}, C{"user"} ...); each mode lists the keys it
            provides (L{IFrontPlugin.selectionKeys}).
        @rtype: L{bytes} or L{None}
        """


class IBackendSelector(Interface):
    """
    Chooses a server for one flow.

    Rules every implementation keeps (the pool also checks them, so a
    buggy plugin cannot break them):
      - return one of C{servers}, or None;
      - never return a server whose C{full} is true, nor one in
        C{context.excluded}.
    """

    def pick(servers, context):
        """
        Choose a server.

        @param servers: the servers that may serve now, in config order: the
            healthy primaries, or the healthy backups when no primary is up.
            The same tuple object is passed for as long as server states do
            not change, so a selector may cache work keyed on it.
        @type servers: L{tuple} of L{IServer}
        @param context: the flow being placed.
        @type context: L{ISelectionContext}
        @return: an L{IServer} from C{servers}, or L{None} when none fits.
        """


class ISelectorPlugin(Interface):
    """
    A selector factory, discovered with C{getPlugins(ISelectorPlugin,
    lbproxy.plugins)} and named in the config by C{name}.
    """

    name = Attribute('Name used in the config, e.g. "roundrobin" (str).')
    description = Attribute("One line saying what the selector does (str).")

    def build(options):
        """
        Build a selector for one pool.

        @param options: the selector's options from the config (a mapping of
            str to TOML values), without C{name}.
        @raise lbproxy.errors.OptionError: for an unknown option or a bad
            value; the config loader turns it into a one-line error naming
            the file and key.
        @rtype: L{IBackendSelector}
        """


class IHealthCheck(Interface):
    """
    One probe of one server.
    """

    def check(server):
        """
        Probe C{server} once.

        @type server: L{IServer}
        @return: a L{Deferred} that fires with L{None} when the server is
            healthy and fails (with a reason worth logging) when it is not;
            fails with L{lbproxy.health.checks.HealthCheckSkipped} when the
            probe could not be made for lbproxy's own limits, which counts
            neither way.
        """


class IProxiedAddresses(Interface):
    """
    A protocol that can be told, before C{makeConnection}, that its
    connection's client and local addresses are not the TCP peer's and
    host's: a trusted proxy's PROXY header named them.
    """

    def proxiedAddresses(client, local):
        """
        The connection about to be made comes from C{client} to C{local}
        (both L{twisted.internet.interfaces.IAddress}).
        """


class IFrontPlugin(Interface):
    """
    A protocol front: what serves the listeners of one C{mode}, discovered
    with C{getPlugins(IFrontPlugin, lbproxy.plugins)} (L{lbproxy.modes}).

    The config loader parses the keys every listener has (C{bind},
    C{mode}, C{pool}, C{maxconn}, C{accept_proxy}, C{tls},
    C{timeouts.idle}) and hands the rest of the listener's table to the
    front; the service asks it for the listener's protocol factory.
    """

    name = Attribute('The mode that selects it, e.g. "http" (str).')
    description = Attribute("One line saying what it serves (str).")
    listenerKeys = Attribute(
        "Keys of a listener table it reads beyond the common ones (tuple of "
        "str): another mode's listener with one of them is told which mode "
        "takes it."
    )
    timeoutKeys = Attribute("Keys of the listener's timeouts table it reads beyond idle (tuple of str).")
    selectionKeys = Attribute(
        'Key specifications its flows provide to hashing selectors (frozenset of str; "header:" takes an argument).'
    )
    poolSettings = Attribute(
        "The pool settings it applies that other modes may not (tuple of lbproxy.modes.PoolSetting)."
    )
    tlsRules = Attribute("What its listeners' [tls] table may hold (lbproxy.modes.TLSRules).")
    idleTimeout = Attribute("Default of timeouts.idle in seconds (float).")

    def parseListener(table, timeouts, common, pools):
        """
        Validate the mode's own keys of a listener table.

        @param table: the listener's L{lbproxy.config.table.Table}.
        @param timeouts: its C{timeouts} table.
        @param common: the common settings, as keyword arguments of
            L{lbproxy.config.ListenerConfig}.
        @param pools: every L{lbproxy.config.PoolConfig} by name.
        @return: a L{lbproxy.config.ListenerConfig} (or a subclass holding
            the mode's settings).
        @raise lbproxy.errors.ConfigError: through C{table.fail}.
        """

    def checkPool(table, listener, name, pool):
        """
        Refuse, with C{table.fail}, a pool C{name} (a PoolConfig) that
        C{listener} uses but cannot serve as configured.
        """

    def buildFactory(listener, pools, reactor, serverTLS):
        """
        The protocol factory serving C{listener} (a
        L{lbproxy.core.model.Listener}).

        @param pools: every live pool by name.
        @param serverTLS: the listener's loaded certificates when it has a
            C{[tls]} table, for a front that starts TLS itself (STARTTLS);
            implicit TLS is added around the factory by the service.
        """

    def readsProxyHeader(config):
        """
        Whether the front reads a trusted peer's PROXY header itself, as the
        first bytes of its stream; otherwise the service puts the shared
        reader in front of it (L{lbproxy.core.acceptproxy}).
        """

    def handshakeTimeout(config):
        """
        Seconds a client of this listener has for its TLS handshake.
        """


class IBalancerHealth(Interface):
    """
    What the heartbeat reads of the running balancer.
    """

    pools = Attribute("The live pools by name (L{lbproxy.core.pool.Pool}, with addObserver and servers).")

    def unboundListeners():
        """
        The names of the listeners not listening now (a list, empty when
        all are bound).
        """

    def addObserver(observer):
        """
        Call C{observer(change)} with a L{lbproxy.core.model.StateChange}
        for every change of state: listeners, servers, pools.
        """

    def removeObserver(observer):
        """
        Stop calling C{observer}.
        """


class IReloadObserver(Interface):
    """
    Told of each reload of the running balancer
    (L{lbproxy.service.BalancerService.reloadObservers}): systemd's
    notifications follow them.
    """

    def reloading():
        """
        A reload begins.
        """

    def reloaded(ok, line):
        """
        The reload is over: applied (C{ok}) or refused; C{line} is what was
        logged.
        """


class IUpstreamStream(Interface):
    """
    One request stream on an HTTP/2 connection to a server
    (L{lbproxy.http2.upstream}): where an HTTP/1.1 request's backend
    connection would be.
    """

    streamId = Attribute("The stream's id on its server connection.")
    server = Attribute("The server the stream goes to.")
    writeBlocked = Attribute("Request DATA waits for the server's flow-control windows.")

    def send(data):
        """
        Send request body bytes, as the send windows let.
        """

    def end(trailers):
        """
        End the request once its body is sent, with C{trailers} (a list of
        fields; empty for none).
        """

    def drain():
        """
        Send what the windows let now of what waits.
        """

    def acknowledge(count):
        """
        C{count} bytes of response DATA were taken: give their window back
        (once reading resumes, while paused).
        """

    def pauseReading():
        """
        Stop giving response windows back (the client does not read).
        """

    def resumeReading():
        """
        Give back the windows held while paused.
        """

    def close():
        """
        The response was read: reset what is still open of the stream
        (C{NO_ERROR}).
        """

    def abort():
        """
        The request was given up: reset the stream (C{CANCEL}).
        """


class IUpstreamUser(Interface):
    """
    Who an L{IUpstreamStream}'s response goes to (an HTTP/2 client
    stream, L{lbproxy.http2.stream.H2Stream}).
    """

    def upstreamInformational(fields):
        """
        An interim (1xx) response head.
        """

    def upstreamHeaders(fields, ended):
        """
        The final response head (a header list, C{:status} first);
        C{ended}: it ends the response (gRPC's Trailers-Only).
        """

    def upstreamData(data, flowLength):
        """
        Response DATA (C{flowLength} counted against the windows).
        """

    def upstreamTrailers(fields):
        """
        The response's trailer fields.
        """

    def upstreamEnded():
        """
        The server ended the response.
        """

    def upstreamReset(code):
        """
        The server reset the stream with error code C{code}.
        """

    def upstreamRefused():
        """
        The server never processed the stream (a GOAWAY with a lower last
        stream id): it may be sent again.
        """

    def upstreamLost():
        """
        The server connection ended under the stream.
        """

    def backendWriteBlocked():
        """
        Request DATA waits for the server's windows: take no more from the
        client.
        """

    def backendWriteUnblocked():
        """
        The server's windows opened again.
        """
