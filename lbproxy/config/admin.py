"""
The C{[admin]} table (the admin listener: stats page, JSON, Prometheus
metrics, runtime API) and the C{[daemon]} table (how the daemon stops).

The admin listener is off unless C{[admin]} is present. It binds to
loopback by default; any other address must be allowed explicitly
(C{allow_remote = true}), since its pages show the balancer's servers to
whoever reaches it and its token would cross the network.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lbproxy.config.endpoints import EndpointError, parseBind
from lbproxy.config.secrets import readSecret
from lbproxy.config.table import Table
from lbproxy.errors import ConfigError

#: Where the admin listener binds when C{[admin]} names no C{bind}.
DEFAULT_ADMIN_BIND = "tcp:9900:interface=127.0.0.1"
#: The sizes a token may have, in bytes (white space at its end removed).
MIN_TOKEN_SIZE = 16
MAX_TOKEN_SIZE = 4096
#: The default grace period of a stop.
DEFAULT_GRACE = 30.0


@dataclass(frozen=True)
class AdminConfig:
    """
    @ivar bind: the admin listener's server endpoint string.
    @ivar tokenFile: the file holding the bearer token of the runtime API;
        None: the API is off (the pages and metrics still answer).
    @ivar allowRemote: whether a bind beyond loopback is accepted.
    @ivar token: the token read from C{tokenFile} (L{loadToken}); None
        before, and without a file.
    """

    bind: str = DEFAULT_ADMIN_BIND
    tokenFile: str | None = None
    allowRemote: bool = False
    token: bytes | None = None

    def __repr__(self) -> str:
        # The token is never shown, not even in a traceback's locals.
        return f"AdminConfig(bind={self.bind!r}, tokenFile={self.tokenFile!r}, allowRemote={self.allowRemote!r})"


@dataclass(frozen=True)
class DaemonConfig:
    """
    @ivar grace: seconds the sessions get to end when the daemon stops
        (SIGTERM) before those left are closed.
    """

    grace: float = DEFAULT_GRACE


def parseAdmin(t: Table) -> AdminConfig:
    bind = t.endpoint("bind", server=True) if "bind" in t.data else DEFAULT_ADMIN_BIND
    allowRemote = t.boolean("allow_remote", False)
    tokenFile = t.string("token_file", default=None)
    if tokenFile is not None and (not tokenFile or "\0" in tokenFile):
        t.fail("token_file", f"expected the path of a file, got {tokenFile!r}")
    if not allowRemote and not isLocalBind(bind):
        t.fail(
            "bind",
            f"expected a loopback address (127.0.0.1, ::1) or a unix socket, got {bind!r}; "
            "set allow_remote = true to serve the admin pages and API beyond this machine",
        )
    t.done()
    return AdminConfig(bind=bind, tokenFile=tokenFile, allowRemote=allowRemote)


def isLocalBind(bind: str) -> bool:
    """
    Whether C{bind} is reached from this machine only: a loopback address
    or a UNIX socket (a systemd socket or an endpoint plugin's cannot be
    told).
    """
    try:
        address = parseBind(bind)
    except EndpointError:
        return False
    if address is None:
        return False
    if address.kind == "unix":
        return True
    return address.kind == "inet" and address.host is not None and address.host.is_loopback


def parseDaemon(t: Table) -> DaemonConfig:
    config = DaemonConfig(grace=t.duration("grace", DEFAULT_GRACE, allowZero=True))
    t.done()
    return config


def loadToken(admin: AdminConfig, source: str) -> AdminConfig:
    """
    C{admin} with its token read from C{token_file}, after checking that
    the file is a regular file only its owner can access.

    @raise ConfigError: naming C{admin.token_file}, one line, without the
        token's bytes.
    """
    if admin.tokenFile is None:
        return admin
    path = admin.tokenFile
    token = readSecret(source, "admin.token_file", path, MIN_TOKEN_SIZE, MAX_TOKEN_SIZE, "token")
    if any(byte < 0x21 or byte > 0x7E for byte in token):
        raise ConfigError(
            source, "admin.token_file", f"expected a token of printable ASCII characters without spaces in {path!r}"
        )
    return replace(admin, token=token)
