"""
Endpoint strings: a listener's C{bind} (a Twisted server endpoint string)
and a server's C{address} (C{host:port} or a Twisted client endpoint
string).

Twisted's parsers take almost anything and fail with Python's words
(C{invalid literal for int()}, C{__init__() got an unexpected keyword
argument}), or not at all until the daemon binds or connects. The types
operators use (C{tcp}, C{tcp6}, C{ssl}, C{unix}, C{systemd}, C{tls}) are
checked here option by option, so that each problem is one
L{EndpointError} saying what was expected; other types (endpoint plugins)
go to Twisted's parser, whose errors are put in plain words.

A valid C{bind} is described by a L{BindAddress}: what the listening
socket takes, so that two listeners the kernel would not let listen side
by side are found when the config is loaded (L{bindOverlap}).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IReactorPluggableNameResolver,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import getPlugins
from zope.interface import implementer

from lbproxy.errors import ConfigError

EXAMPLE_BIND = '"tcp:8080:interface=127.0.0.1"'

#: Longest path of a UNIX socket, in bytes (Linux's C{sun_path} less its NUL).
UNIX_PATH_MAX = 107

#: Options of the server endpoint types checked here, positional order first.
_SERVER_OPTIONS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "ssl": ("port", "privateKey", "certKey", "sslmethod", "interface", "backlog", "extraCertChain", "dhParameters"),
    "tls": ("path", "port", "backlog", "interface"),
    "unix": ("address", "mode", "backlog", "lockfile"),
    "systemd": ("domain", "index", "name"),
}
_CLIENT_OPTIONS = {
    "tcp": ("host", "port", "timeout", "bindAddress"),
    "ssl": ("host", "port", "timeout", "bindAddress", "certKey", "privateKey", "caCertsDir"),
    "tls": ("host", "port", "timeout", "bindAddress", "certificate", "privateKey", "trustRoots", "endpoint"),
    "unix": ("path", "timeout", "lockfile"),
}
_WILDCARD = {"tcp": "", "ssl": "", "tcp6": "::", "tls": "::"}
_SYSTEMD_DOMAINS = ("INET", "INET6", "UNIX")
_DIGITS = re.compile(r"[0-9]{1,10}")
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
#: Options that take an address, where an IPv6 address's colons must be
#: escaped: Twisted reads each colon as the start of the next option.
_ADDRESS_OPTION = re.compile(r"(?:^|(?<=[^\\]):)(interface|host|bindAddress)=")


class EndpointError(Exception):
    """
    An endpoint string is unusable.

    @ivar expected: what the key takes (C{"expected a port from 0 to 65535"}).
    @ivar detail: the part of the value at fault, or why, in a few words;
        may be empty.
    """

    def __init__(self, expected: str, detail: str = "") -> None:
        super().__init__(expected, detail)
        self.expected = expected
        self.detail = detail

    def describe(self, written: str) -> str:
        """
        The message for the value as the operator wrote it.
        """
        text = f"expected {self.expected}, got {written!r}"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True)
class BindAddress:
    """
    What one listener's socket takes.

    @ivar kind: C{"inet"}, C{"unix"} or C{"systemd"}.
    @ivar host: the IP address listened on; L{None}: every address of
        C{version} (the wildcard).
    @ivar version: 4 or 6 (inet).
    @ivar port: the port (inet); 0 lets the kernel choose one.
    @ivar path: the socket's path (unix).
    @ivar socket: which socket systemd passes (systemd): C{"index 0"},
        C{"name web"}.
    """

    kind: str
    host: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    version: int = 4
    port: int = 0
    path: str = ""
    socket: str = ""

    def describe(self) -> str:
        """
        The address as an operator reads it: C{127.0.0.1:8080},
        C{[::1]:8080}, C{0.0.0.0:8080}, C{unix socket /run/lb.sock}.
        """
        if self.kind == "unix":
            return f"unix socket {self.path}"
        if self.kind == "systemd":
            return f"systemd socket {self.socket}"
        host = self.host if self.host is not None else ("0.0.0.0" if self.version == 4 else "::")
        return _hostPort(host, self.port)

    def scopes(self, dualStack: bool) -> tuple[tuple[int, object], ...]:
        """
        The (IP version, address or None for every address) pairs this
        socket takes on its port. An IPv6 wildcard takes IPv4 too on a
        dual-stack system; an IPv4-mapped IPv6 address is its IPv4 address.
        """
        if self.host is None:
            if self.version == 6 and dualStack:
                return ((6, None), (4, None))
            return ((self.version, None),)
        mapped = getattr(self.host, "ipv4_mapped", None)
        if mapped is not None:
            return ((4, mapped),)
        return ((self.version, self.host),)


def _hostPort(host, port: int) -> str:
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def ipv6DualStack() -> bool:
    """
    Whether a socket listening on the IPv6 wildcard C{::} also takes IPv4
    (Linux's default: C{net.ipv6.bindv6only = 0}; Twisted does not set
    C{IPV6_V6ONLY}).
    """
    try:
        with open("/proc/sys/net/ipv6/bindv6only") as f:
            return f.read().strip() == "0"
    except OSError:
        return True


def bindOverlap(first: BindAddress, second: BindAddress, dualStack: bool) -> str | None:
    """
    Where two listening sockets would collide, in words (C{"127.0.0.1:8080"}),
    or None when the kernel lets both listen.
    """
    if first.kind != second.kind:
        return None
    if first.kind == "unix":
        same = os.path.abspath(first.path) == os.path.abspath(second.path)
        return first.describe() if same else None
    if first.kind == "systemd":
        # Two listeners adopting one socket would take turns accepting.
        return first.describe() if first.socket == second.socket else None
    if first.port == 0 or first.port != second.port:
        return None
    for version, host in first.scopes(dualStack):
        for otherVersion, otherHost in second.scopes(dualStack):
            if version != otherVersion:
                continue
            if host is None or otherHost is None or host == otherHost:
                shared = host if host is not None else otherHost
                if shared is None:
                    shared = "0.0.0.0" if version == 4 else "::"
                return _hostPort(shared, first.port)
    return None


def _wildcardWords(bind: BindAddress, dualStack: bool) -> str:
    if bind.kind != "inet" or bind.host is not None:
        return ""
    if bind.version == 6 and dualStack:
        return "every IPv6 and IPv4 address"
    return f"every IPv{bind.version} address"


def overlapMessage(firstKey: str, first: BindAddress, secondKey: str, second: BindAddress, dualStack: bool) -> str | None:
    """
    The one-line error for two listeners whose sockets collide, naming
    both keys, or None.
    """
    shared = bindOverlap(first, second, dualStack)
    if shared is None:
        return None
    message = f"{firstKey} and {secondKey} both listen on {shared}"
    notes = [
        f"{key} takes port {bind.port} on {words}"
        for key, bind in ((firstKey, first), (secondKey, second))
        if (words := _wildcardWords(bind, dualStack)) and bind.describe() != shared
    ]
    if notes:
        message += f" ({'; '.join(notes)})"
    return message


def checkOverlaps(source: str, binds: list[tuple[str, str]], dualStack: bool | None = None) -> None:
    """
    Refuse two listening sockets the kernel would not open side by side
    (or, for systemd, one socket adopted twice).

    @param binds: C{(key, value)} of every listener's C{bind}, already
        checked by L{parseBind}.
    @param dualStack: whether an IPv6 wildcard takes IPv4 too; by default
        what this system does (L{ipv6DualStack}).
    @raise ConfigError: naming both keys and the shared address.
    """
    if dualStack is None:
        dualStack = ipv6DualStack()
    described = [(key, bind) for key, value in binds if (bind := parseBind(value)) is not None]
    for index, (firstKey, first) in enumerate(described):
        for secondKey, second in described[index + 1 :]:
            message = overlapMessage(firstKey, first, secondKey, second, dualStack)
            if message is not None:
                raise ConfigError(source, "", message)


# Splitting.


def splitEndpoint(value: str) -> tuple[str, list[str], list[tuple[str, str]]]:
    """
    The type, positional values and C{(name, value)} options of an
    endpoint string, with backslash escapes resolved as Twisted resolves
    them; unlike Twisted, an option given twice is kept twice.
    """
    segments: list[list[tuple[str, bool]]] = [[]]
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            segments[-1].append((next(chars, ""), True))
        elif ch == ":":
            segments.append([])
        else:
            segments[-1].append((ch, False))
    kind = "".join(ch for ch, _ in segments[0])
    args: list[str] = []
    options: list[tuple[str, str]] = []
    for segment in segments[1:]:
        split = next((i for i, (ch, escaped) in enumerate(segment) if ch == "=" and not escaped), None)
        if split is None:
            args.append("".join(ch for ch, _ in segment))
        else:
            options.append(("".join(ch for ch, _ in segment[:split]), "".join(ch for ch, _ in segment[split + 1 :])))
    return kind, args, options


def _assign(kind: str, value: str, names: tuple[str, ...]) -> dict[str, str]:
    """
    The options of C{value} by name, positional values taking C{names} in
    order.
    """
    _unescapedIPv6(value)
    _, args, options = splitEndpoint(value)
    listed = _listed(names)
    if len(args) > len(names):
        raise EndpointError(f"at most {len(names)} values after {kind}: ({listed})", f"{len(args)} given")
    given: dict[str, str] = {}
    for name, item in [*zip(names, args), *options]:
        if name not in names:
            raise EndpointError(f"{kind} options {listed}", f"unknown option {name!r}")
        if name in given:
            raise EndpointError(f"each {kind} option once", f"{name} given twice: {given[name]!r} and {item!r}")
        given[name] = item
    return given


def _unescapedIPv6(value: str) -> None:
    """
    Refuse an IPv6 address written with its colons unescaped after
    C{interface=}, C{host=} or C{bindAddress=}, saying how to write it.
    """
    for option in _ADDRESS_OPTION.finditer(value):
        rest = value[option.end() :].split(":")
        for end in range(len(rest), 2, -1):
            candidate = ":".join(rest[:end])
            if _isIPv6(candidate):
                escaped = candidate.replace(":", "\\:")
                raise EndpointError(
                    f"the colons of an IPv6 address escaped, as in {option.group(1)}={escaped} "
                    f'(written "{option.group(1)}={escaped.replace(chr(92), chr(92) * 2)}" in TOML)'
                )


def _listed(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _isIPv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _ipAddress(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _types(interface) -> list[str]:
    return sorted(plugin.prefix for plugin in getPlugins(interface))


def _number(given: dict, name: str, low: int, high: int, default: int | None = None, what: str = "") -> int:
    text = given.get(name)
    if text is None:
        if default is None:
            raise EndpointError(f"a {what or name} from {low} to {high}", f"no {name}")
        return default
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise EndpointError(f"a {what or name} from {low} to {high}", f"{name} {text!r}")
    return int(text)


def _flag(given: dict, name: str) -> None:
    if name in given and given[name] not in ("0", "1"):
        raise EndpointError(f"{name}=0 or {name}=1", f"{name} {given[name]!r}")


def _path(given: dict, name: str, what: str) -> str:
    path = given.get(name, "")
    if not path or "\0" in path:
        raise EndpointError(f"{what}", f"{name} {path!r}" if path else f"no {name}")
    return path


# Servers (bind).


def parseBind(value: str) -> BindAddress | None:
    """
    Check a listener's C{bind} and describe what it listens on; None for
    an endpoint plugin's type, which only Twisted's parser checks.

    @raise EndpointError: the value is unusable.
    """
    kind, _, _ = splitEndpoint(value)
    # Endpoint plugins are looked for only for a type not checked here.
    known = _SERVER_OPTIONS if kind in _SERVER_OPTIONS else sorted({*_SERVER_OPTIONS, *_types(IStreamServerEndpointStringParser)})
    if kind not in known:
        detail = f'for TCP port {value} write "tcp:{value}"' if _DIGITS.fullmatch(value) else (
            f"unknown type {kind!r}" if kind else ""
        )
        raise EndpointError(f"a server endpoint string such as {EXAMPLE_BIND} (types: {', '.join(known)})", detail)
    if kind not in _SERVER_OPTIONS:
        _twisted(serverFromString, value)
        return None
    given = _assign(kind, value, _SERVER_OPTIONS[kind])
    if kind == "unix":
        return _unixBind(given)
    if kind == "systemd":
        return _systemdBind(given)
    port = _number(given, "port", 0, 65535, 443 if kind == "tls" else None, "port")
    _number(given, "backlog", 1, 65535, 50)
    interface = given.get("interface", _WILDCARD[kind])
    host = None
    if interface not in ("", "::", "0.0.0.0"):
        host = _ipAddress(interface)
        if host is None:
            raise EndpointError(
                "an IP address for interface, such as 127.0.0.1 (a listener binds to an address, not a name)",
                f"interface {interface!r}",
            )
    version = 6 if ":" in interface else 4
    if kind == "tcp6" and version == 4:
        raise EndpointError('an IPv6 address for a tcp6 interface ("tcp:" listens on IPv4)', f"interface {interface!r}")
    if kind == "tls":
        _path(given, "path", "a directory of PEM files for tls:")
    if kind == "ssl":
        # Twisted reads the certificate when it parses the string.
        _twisted(serverFromString, value, 'privateKey= (and certKey=) naming readable PEM files, or "tcp:" with a [tls] table')
    elif kind == "tls":
        _twisted(serverFromString, value)
    return BindAddress("inet", host=host, version=version, port=port)


def _unixBind(given: dict) -> BindAddress:
    path = _path(given, "address", 'a socket path, as in "unix:address=/run/lbproxy.sock"')
    if len(path.encode("utf-8")) > UNIX_PATH_MAX:
        raise EndpointError(f"a socket path of at most {UNIX_PATH_MAX} bytes", f"{len(path.encode('utf-8'))} bytes")
    mode = given.get("mode", "666")
    if not re.fullmatch(r"[0-7]{1,4}", mode):
        raise EndpointError("an octal mode such as mode=660", f"mode {mode!r}")
    _number(given, "backlog", 1, 65535, 50)
    _flag(given, "lockfile")
    return BindAddress("unix", path=path)


def _systemdBind(given: dict) -> BindAddress:
    domain = given.get("domain")
    if domain not in _SYSTEMD_DOMAINS:
        detail = f"domain {domain!r}" if domain is not None else "no domain"
        raise EndpointError(f"domain={_listed(_SYSTEMD_DOMAINS).replace(' and ', ' or ')}", detail)
    if ("index" in given) == ("name" in given):
        raise EndpointError("either index= or name= to say which socket systemd passes")
    if "index" in given:
        return BindAddress("systemd", socket=f"index {_number(given, 'index', 0, 1023)}")
    if not re.fullmatch(r"[\x21-\x7e]{1,255}", given["name"]):
        raise EndpointError("a socket name (FileDescriptorName= of the socket unit)", f"name {given['name']!r}")
    return BindAddress("systemd", socket=f"name {given['name']}")


# Clients (address).


def parseAddress(value: str) -> str:
    """
    Check a server's C{address} and return the client endpoint string
    that reaches it (C{host:port} and C{[v6]:port} become C{tcp:}).

    @raise EndpointError: the value is unusable.
    """
    kind, _, _ = splitEndpoint(value)
    known = _CLIENT_OPTIONS if kind in _CLIENT_OPTIONS else sorted({*_CLIENT_OPTIONS, *_types(IStreamClientEndpointStringParserWithReactor)})
    if kind in known and value != kind:
        return _clientEndpoint(kind, value)
    m = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", value) or re.fullmatch(r"([^:\[\]]*):([^:]*)", value)
    if not m:
        bare = value.rsplit(":", 1)[0]
        raise EndpointError(
            f'"host:port", "[IPv6 address]:port" or a client endpoint string (types: {", ".join(known)})',
            f"write an IPv6 address in brackets: [{bare}]:port" if _isIPv6(bare) else "",
        )
    host, port = m.groups()
    _checkHost(host)
    _number({"port": port}, "port", 1, 65535, what="port")
    return f"tcp:host={host.replace(':', chr(92) + ':')}:port={port}"


def _checkHost(host: str) -> None:
    if _ipAddress(host) is None and (len(host) > 253 or not _HOST_NAME.fullmatch(host)):
        raise EndpointError("a host name or IP address", f"host {host!r}" if host else "no host")


def _clientEndpoint(kind: str, value: str) -> str:
    if kind not in _CLIENT_OPTIONS:
        _twisted(clientFromString, value)
        return value
    given = _assign(kind, value, _CLIENT_OPTIONS[kind])
    if kind == "unix":
        path = _path(given, "path", 'a socket path, as in "unix:path=/run/app.sock"')
        if len(path.encode("utf-8")) > UNIX_PATH_MAX:
            raise EndpointError(f"a socket path of at most {UNIX_PATH_MAX} bytes", f"{len(path.encode('utf-8'))} bytes")
        _flag(given, "lockfile")
    else:
        if "host" not in given:
            raise EndpointError(f'a host, as in "{kind}:host=127.0.0.1:port=8081"', "no host")
        _checkHost(given["host"])
        _number(given, "port", 1, 65535, what="port")
        bindAddress = given.get("bindAddress")
        if bindAddress is not None and _ipAddress(bindAddress) is None:
            raise EndpointError("an IP address of this machine for bindAddress", f"bindAddress {bindAddress!r}")
    _number(given, "timeout", 1, 86400, 30, "timeout in whole seconds")
    if kind in ("ssl", "tls"):
        # Twisted reads the certificate files when it parses the string.
        _twisted(clientFromString, value)
    return value


@implementer(IReactorPluggableNameResolver)
class _NullReactor:
    """
    Stands in for the reactor while an endpoint string is parsed for
    validation; parsing never needs it. (It claims a name resolver so that
    C{tls:} parsing does not warn about an old reactor.)
    """

    nameResolver = None

    def installNameResolver(self, resolver):
        previous, self.nameResolver = self.nameResolver, resolver
        return previous


def _twisted(parse, value: str, expected: str = "") -> None:
    """
    Parse C{value} with Twisted's own parser, its errors in plain words.
    """
    try:
        parse(_NullReactor(), value)
    except Exception as e:
        kind = splitEndpoint(value)[0]
        raise EndpointError(expected or f"an endpoint string the {kind}: parser accepts", plainReason(e))


def plainReason(error: BaseException) -> str:
    """
    Why a parser or the system refused something, without Python's words
    for it: C{unknown option 'bogus'} for an unexpected keyword argument,
    C{cannot read server.pem: No such file or directory} for a file.
    """
    if isinstance(error, OSError) and error.strerror:
        if error.filename is not None:
            return f"cannot read {os.fsdecode(error.filename)}: {error.strerror}"
        return error.strerror
    text = str(error).splitlines()[0] if str(error) else ""
    if m := re.search(r"unexpected keyword argument '([^']*)'", text):
        return f"unknown option {m.group(1)!r}"
    if m := re.search(r"missing \d+ required (?:positional |keyword-only )?arguments?: (.*)", text):
        return "missing " + m.group(1).replace("'", "")
    if m := re.search(r"invalid literal for int\(\) with base \d+: (.*)", text):
        return f"{m.group(1)} is not a whole number"
    if re.search(r"\w\(\)|__\w+__|Error\b", text) or not text:
        return "not accepted"
    return text
