"""
What lbproxy reads from a server's client endpoint string: its parts, and
the host name an HTTP request or a TLS handshake to it names.
"""

from __future__ import annotations

from twisted.internet.abstract import isIPAddress, isIPv6Address

from lbproxy.config.endpoints import splitEndpoint


_DEFAULT_PORTS = {"tcp": 80, "tcp6": 80, "ssl": 443, "tls": 443}


def endpointArguments(address: str) -> tuple[str, list[str], dict[str, str]]:
    """
    Split a client endpoint string into its type, positional and keyword
    arguments, honouring backslash escapes as Twisted's parser does.
    """
    kind, args, options = splitEndpoint(address)
    return kind, args, dict(options)


def hostHeader(address: str, tls=None) -> str:
    """
    The HTTP Host header for a server addressed by the client endpoint
    string C{address}: its host, with the port when it is not the scheme's
    default; C{localhost} for endpoints without a host (UNIX sockets).

    @param tls: the L{lbproxy.tls.client.BackendTLS} the request goes
        over, if any: the scheme is then https (default port 443), and its
        C{serverName}, when configured, is the host (the name the server's
        certificate is checked for, and the one sent by SNI).
    """
    kind, args, kwargs = endpointArguments(address)
    host = kwargs.get("host")
    port = kwargs.get("port")
    if kind in _DEFAULT_PORTS:
        if host is None and args:
            host, args = args[0], args[1:]
        if port is None and args:
            port = args[0]
    defaultPort = _DEFAULT_PORTS.get(kind)
    if tls is not None:
        defaultPort = 443
        host = tls.config.serverName or host
    if not host:
        return "localhost"
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port.isdigit() and int(port) != defaultPort:
        host = f"{host}:{int(port)}"
    return host


def directAddress(address: str) -> tuple[str, int] | None:
    """
    The IP address and port of a server addressed by C{address} when it
    is a plain TCP endpoint to an IP literal (C{tcp:host=10.0.0.5:port=80},
    C{tcp:10.0.0.5:80}): a connection to it needs no resolution nor any
    option of the endpoint. None for anything else (a host name, a
    C{timeout} or C{bindAddress} option, another type).
    """
    try:
        kind, args, kwargs = endpointArguments(address)
    except ValueError:
        return None
    if kind != "tcp" or len(args) + len(kwargs) != 2:
        return None
    host = kwargs.pop("host", None)
    port = kwargs.pop("port", None)
    if kwargs:
        return None
    if host is None and args:
        host, args = args[0], args[1:]
    if port is None and args:
        port = args[0]
    if host is None or port is None or not port.isdigit():
        return None
    if not (isIPAddress(host) or isIPv6Address(host)):
        return None
    number = int(port)
    return (host, number) if 0 < number < 65536 else None
