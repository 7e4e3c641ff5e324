"""
The registry of protocol fronts: which front serves a listener's C{mode}.

Every front (tcp, http, imap, pop3, and any a third party ships) is one
L{IFrontPlugin} provider found by L{twisted.plugin.getPlugins} in the
L{lbproxy.plugins} plugin package, exactly as selectors are: the built-in
ones are registered in C{lbproxy/plugins/lbproxy_builtin.py}, a third
party drops its own module into an C{lbproxy/plugins/} directory on
sys.path. The config loader, the service and the PROXY header reader ask
the registry; none of them lists modes.

L{FrontMode} is the base the built-in fronts share: the defaults of every
attribute, and the listener settings every mode has (L{ListenerConfig}).
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from lbproxy.interfaces import IFrontPlugin

#: The selector keys every flow provides (L{lbproxy.core.context.FlowContext}).
FLOW_KEYS = frozenset({"src", "src_port", "dst", "5tuple"})


@dataclass(frozen=True)
class PoolSetting:
    """
    A pool setting that only some modes apply (L{IFrontPlugin.poolSettings}).

    @ivar key: its key under C{[pools.NAME]}, e.g. C{"reuse.mode"}.
    @ivar field: the L{lbproxy.config.PoolConfig} attribute holding it.
    @ivar default: its value when not set.
    @ivar what: what a pool with the setting does, for messages ("upgrades
        server connections with STARTTLS").
    @ivar strict: a listener whose mode does not apply it would serve the
        pool wrongly (STARTTLS to the servers, how they learn the client's
        address): such a listener may not use the pool. Otherwise the
        setting is only refused on a pool that no listener applying it uses.
    """

    key: str
    field: str
    default: object = None
    strict: bool = False
    what: str = ""

    def isSet(self, pool) -> bool:
        """
        Whether C{pool} (a L{lbproxy.config.PoolConfig}) has this setting
        other than its default; C{field} may be a dotted path
        (C{"tls.starttls"}), unset when a table on the way is absent.
        """
        *tables, name = self.field.split(".")
        value = pool
        for table in tables:
            value = getattr(value, table)
            if value is None:
                return False
        return getattr(value, name) != self.default


@dataclass(frozen=True)
class TLSRules:
    """
    What a mode's C{[listeners.NAME.tls]} table may hold.

    @ivar alpn: the ALPN protocols offered when the table names none.
    @ivar alpnAllowed: the ALPN protocols the mode speaks, or None for any.
    @ivar startTLS: the mode upgrades plaintext connections (C{starttls}).
    @ivar clientSubjectHeader: the mode passes the client certificate's
        subject on in a header (C{client_subject_header}).
    """

    alpn: tuple[str, ...] = ()
    alpnAllowed: tuple[str, ...] | None = None
    startTLS: bool = False
    clientSubjectHeader: bool = False


@implementer(IPlugin, IFrontPlugin)
class FrontMode:
    """
    The defaults of an L{IFrontPlugin}: a mode with no keys of its own
    beyond the common ones, the flow keys, no pool settings, no TLS
    extras, a 5-minute idle timeout, and the PROXY header read for it
    (L{lbproxy.core.acceptproxy}). A subclass sets C{name},
    C{description}, and implements L{buildFactory}.
    """

    name = ""
    description = ""
    listenerKeys: tuple[str, ...] = ()
    timeoutKeys: tuple[str, ...] = ()
    selectionKeys: frozenset[str] = FLOW_KEYS
    poolSettings: tuple[PoolSetting, ...] = ()
    tlsRules = TLSRules()
    idleTimeout = 300.0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def parseListener(self, table, timeouts, common: dict, pools: dict):
        """
        A listener with the common settings only.
        """
        from lbproxy.config import ListenerConfig

        return ListenerConfig(**common)

    def checkPool(self, table, listener, name: str, pool) -> None:
        """
        Nothing beyond the registry's own checks.
        """

    def readsProxyHeader(self, config) -> bool:
        return False

    def handshakeTimeout(self, config) -> float:
        from lbproxy.tls.server import HANDSHAKE_TIMEOUT

        return HANDSHAKE_TIMEOUT


def allModes() -> dict[str, IFrontPlugin]:
    """
    Every front plugin on sys.path, by mode name (the first one found for a
    name wins). A broken plugin module is logged by L{getPlugins} and left
    out.
    """
    import lbproxy.plugins

    found: dict[str, IFrontPlugin] = {}
    for plugin in getPlugins(IFrontPlugin, lbproxy.plugins):
        found.setdefault(plugin.name, plugin)
    return found


def findMode(name: str) -> IFrontPlugin | None:
    return allModes().get(name)


def modeNames() -> list[str]:
    return sorted(allModes())


def modesWhere(predicate) -> str:
    """
    C{"imap" or "pop3"}: the names of the modes for which C{predicate(mode)}
    is true, for a message saying which modes take a setting.
    """
    return " or ".join(f'"{name}"' for name, mode in sorted(allModes().items()) if predicate(mode))


def keySpecIn(kinds, spec: str) -> bool:
    """
    Whether key specification C{spec} is among C{kinds}: a kind such as
    C{"src"}, or C{kind:argument} for a kind that takes one (C{"header:"}
    in C{kinds} admits C{"header:User-Agent"}).
    """
    kind, sep, argument = spec.partition(":")
    if not sep:
        return spec in kinds
    return bool(argument) and (kind + ":") in kinds


def allSelectionKeys() -> frozenset[str]:
    """
    Every key specification some mode provides: what a selector's C{key}
    option may name (L{keyKnown}); the config then checks it against the
    modes of the listeners using the pool.
    """
    keys = set(FLOW_KEYS)
    for mode in allModes().values():
        keys.update(mode.selectionKeys)
    return frozenset(keys)


def keyKnown(spec: str) -> bool:
    """
    Whether C{spec} is a well-formed key of some mode.
    """
    return keySpecIn(allSelectionKeys(), spec)
