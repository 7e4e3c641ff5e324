"""
Exceptions with messages an operator can act on.
"""


class ConfigError(Exception):
    """
    The configuration is unusable.

    C{str()} is one line: C{FILE: KEY: expected ..., got ...}.
    """

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.source, self.key, self.message) if p]
        return ": ".join(parts)


class OptionError(Exception):
    """
    A plugin rejected one of its options.

    @ivar key: the option's name (relative to the plugin's options table), or
        an empty string when the problem is not with one option.
    @ivar message: what was expected.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


class NoServerAvailable(Exception):
    """
    No server of the pool can take the flow now (all down, draining, in
    maintenance or at their maxconn).
    """


class QueueTimeout(NoServerAvailable):
    """
    The flow waited in its pool's queue for the pool's C{timeouts.queue}
    and no server freed a slot for it.

    @ivar waited: seconds it waited.
    """

    def __init__(self, message: str, waited: float) -> None:
        super().__init__(message)
        self.waited = waited


class ConnectFailed(Exception):
    """
    Every connection attempt to the pool's servers failed.

    @ivar reason: why the last attempt failed (one line), for logs.
    @ivar attempts: how many attempts were made.
    """

    def __init__(self, message: str = "", *, reason: str = "", attempts: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts


class LocalLimitReached(ConnectFailed):
    """
    lbproxy itself ran out of a resource while connecting to a server (file
    descriptors, socket buffers, local ports; see L{lbproxy.core.limits}): the
    flow is refused, and no server is blamed for it.

    @ivar errno: the error number (C{errno.EMFILE}...).
    """

    def __init__(self, message: str = "", *, reason: str = "", attempts: int = 0, errno: int = 0) -> None:
        super().__init__(message, reason=reason, attempts=attempts)
        self.errno = errno


class TLSHandshakeFailed(Exception):
    """
    The TLS handshake with a server failed (its certificate did not verify,
    it refused ours, no common version...); C{str()} is the one-line
    reason, such as C{TLS: certificate verify failed (unable to get local
    issuer certificate)}.
    """


class CannotStart(Exception):
    """
    lbproxy cannot run as configured, found when it starts (a missing
    privilege, a network interface that does not exist): C{str()} is the
    one line the operator sees.
    """
