"""
Parsed HTTP/1.1 message heads and their header lists.

A head is what the parser hands to the front once a header block has been
accepted: the request or status line, the headers in arrival order, and the
framing the parser derived from them (how the body is delimited, whether the
connection persists). The front changes a copy of the headers (hop-by-hop
removal, forwarding headers) and re-serialises it; it never forwards the
client's raw bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from lbproxy.http.syntax import splitList


class BodyKind:
    """
    How a message body is delimited (RFC 9112 §6.3): one of the four
    constants below, compared by identity.

    Not an C{enum.Enum}: on Python 3.11 reading an enum member
    (C{BodyKind.LENGTH}) costs about 80 ns, eight times a plain class
    attribute, and the HTTP path reads them a dozen times per request.
    """

    __slots__ = ("name",)

    #: No body (GET without Content-Length, HEAD responses, 1xx/204/304).
    NONE: BodyKind
    #: Exactly C{contentLength} bytes.
    LENGTH: BodyKind
    #: Chunked transfer coding, re-framed by the proxy.
    CHUNKED: BodyKind
    #: Responses only: everything until the server closes the connection.
    UNTIL_CLOSE: BodyKind

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"BodyKind.{self.name}"

    def __reduce__(self):
        return getattr, (BodyKind, self.name)


BodyKind.NONE = BodyKind("NONE")
BodyKind.LENGTH = BodyKind("LENGTH")
BodyKind.CHUNKED = BodyKind("CHUNKED")
BodyKind.UNTIL_CLOSE = BodyKind("UNTIL_CLOSE")


#: Hop-by-hop fields (RFC 9110 §7.6.1), besides those named in Connection.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Fields a client cannot make the proxy drop by naming them in Connection:
#: an HTTP/1.1 request without Host is invalid at the backend.
_PROTECTED = frozenset({b"host"})

#: One header field as L{Headers} keeps it: C{(lowercased name, name,
#: value)}, the value without surrounding whitespace. A plain tuple rather
#: than a named one: every pass over the fields unpacks it, and CPython
#: unpacks only exact tuples without its generic (about three times
#: slower) path.
FieldEntry = tuple[bytes, bytes, bytes]


class Headers:
    """
    An ordered list of header fields with case-insensitive lookups.

    Names and values are bytes; names keep the case they arrived with, and
    repeated fields stay separate entries in their original order.
    """

    __slots__ = ("_items",)

    def __init__(self, fields: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self._items: list[tuple[bytes, bytes, bytes]] = [
            (name.lower(), name, value) for name, value in fields
        ]

    @classmethod
    def _fromLowered(cls, items: list[tuple[bytes, bytes, bytes]]) -> Headers:
        """
        Adopt a list of C{(lowercased name, name, value)} built by the parser,
        which lowercases every name anyway.
        """
        headers = cls.__new__(cls)
        headers._items = items
        return headers

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._items == other._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        for _, name, value in self._items:
            yield name, value

    def __contains__(self, name: bytes) -> bool:
        key = name.lower()
        return any(lowered == key for lowered, _, _ in self._items)

    def items(self) -> list[tuple[bytes, bytes]]:
        """
        The fields as C{(name, value)} pairs in order.
        """
        return [(name, value) for _, name, value in self._items]

    def copy(self) -> Headers:
        return Headers._fromLowered(list(self._items))

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """
        The value of the first field called C{name}, or C{default}.
        """
        key = name.lower()
        for lowered, _, value in self._items:
            if lowered == key:
                return value
        return default

    def getAll(self, name: bytes) -> list[bytes]:
        """
        The values of every field called C{name}, in order.
        """
        key = name.lower()
        return [value for lowered, _, value in self._items if lowered == key]

    def add(self, name: bytes, value: bytes) -> None:
        """
        Append a field (after any others of the same name).
        """
        self._items.append((name.lower(), name, value))

    def set(self, name: bytes, value: bytes) -> None:
        """
        Make C{value} the only value of C{name}: the first such field is
        replaced where it stands, the others removed; appended if absent.
        """
        key = name.lower()
        items = []
        placed = False
        for item in self._items:
            if item[0] == key:
                if not placed:
                    items.append((key, name, value))
                    placed = True
            else:
                items.append(item)
        if not placed:
            items.append((key, name, value))
        self._items = items

    def remove(self, name: bytes) -> int:
        """
        Remove every field called C{name}; return how many there were.
        """
        key = name.lower()
        before = len(self._items)
        self._items = [item for item in self._items if item[0] != key]
        return before - len(self._items)

    def connectionTokens(self) -> frozenset[bytes]:
        """
        The lowercased options of every Connection field.
        """
        tokens: set[bytes] = set()
        for lowered, _, value in self._items:
            if lowered == b"connection":
                tokens.update(token.lower() for token in splitList(value))
        return frozenset(tokens)

    def removeHopByHop(self, keepWebSocket: bool = False) -> bool:
        """
        Remove the hop-by-hop fields (RFC 9110 §7.6.1): Connection, every
        field it names (except Host), Keep-Alive, Proxy-Connection, TE,
        Trailer, Transfer-Encoding and Upgrade.

        @param keepWebSocket: the caller allows a websocket tunnel. When the
            message asks for exactly C{Upgrade: websocket} (with Connection
            naming upgrade), Upgrade is kept and Connection is rewritten to
            C{Connection: Upgrade}. Any other upgrade (such as h2c, which
            would open a tunnel past the routing rules) is removed.
        @return: whether the websocket upgrade was kept.
        """
        named = self.connectionTokens()
        drop = set(HOP_BY_HOP)
        drop.update(named - _PROTECTED)
        upgrades = [
            token.lower() for value in self.getAll(b"upgrade") for token in splitList(value)
        ]
        websocket = keepWebSocket and b"upgrade" in named and upgrades == [b"websocket"]
        if websocket:
            drop.discard(b"upgrade")
        self._items = [item for item in self._items if item[0] not in drop]
        if websocket:
            self.add(b"Connection", b"Upgrade")
        return websocket


def persistentConnection(version: tuple[int, int], connection: frozenset[bytes]) -> bool:
    """
    Whether a connection persists after a message of C{version} whose
    Connection options are C{connection} (RFC 9112 §9.3): HTTP/1.1 unless
    "close", HTTP/1.0 only with "keep-alive".
    """
    if b"close" in connection:
        return False
    return version >= (1, 1) or b"keep-alive" in connection


@dataclass(eq=True, slots=True)
class RequestHead:
    """
    An accepted request line and header block.

    @ivar method: the method token, e.g. C{b"GET"}.
    @ivar target: the request target (origin, absolute, authority or
        asterisk form; see L{targetForm}) as received, or with its path
        normalised once the front has done so (see L{rawTarget}).
    @ivar version: C{(1, 0)} or C{(1, 1)}.
    @ivar headers: every field, in order, values without surrounding
        whitespace. Framing fields are still present; the serialiser
        replaces them.
    @ivar bodyKind: L{BodyKind.NONE}, L{BodyKind.LENGTH} or
        L{BodyKind.CHUNKED}.
    @ivar contentLength: the body length for L{BodyKind.LENGTH}, else
        L{None}.
    @ivar keepAlive: whether the client lets the connection persist.
    @ivar upgrade: the protocols asked for with C{Upgrade} (lowercased),
        when Connection names upgrade on HTTP/1.1; C{()} otherwise.
    @ivar targetForm: C{"origin"}, C{"absolute"}, C{"authority"} (CONNECT
        only) or C{"asterisk"} (OPTIONS only).
    @ivar authority: the target's authority for absolute and authority
        forms, else the Host value (L{None} without Host on HTTP/1.0).
    @ivar trailers: the trailer section of a chunked body, once the message
        is complete; L{None} before that or without one.
    @ivar connection: the options of the Connection fields (lowercased) as
        the parser found them, so that hop-by-hop removal need not look for
        them again; L{None} for a head not built by the parser.
    @ivar rawTarget: the target as the client sent it, when the listener's
        path normalisation (L{lbproxy.http.paths}) changed L{target};
        L{None} otherwise.
    @ivar checked: the parser built the head and its target is in origin
        form: every field is as llhttp accepted it (a token name, a value
        without CTLs but HTAB), and the target visible ASCII, so the head
        can be written from its values without checking them again (see
        L{lbproxy.http.serialize.receivedFieldLines}). Only the parser
        sets it.
    """

    method: bytes
    target: bytes
    version: tuple[int, int]
    headers: Headers
    bodyKind: BodyKind = BodyKind.NONE
    contentLength: int | None = None
    keepAlive: bool = True
    upgrade: tuple[bytes, ...] = ()
    targetForm: str = "origin"
    authority: bytes | None = None
    trailers: Headers | None = field(default=None, compare=False)
    connection: frozenset[bytes] | None = field(default=None, compare=False)
    checked: bool = field(default=False, compare=False)
    rawTarget: bytes | None = field(default=None, compare=False)

    @property
    def isConnect(self) -> bool:
        return self.method == b"CONNECT"

    @property
    def expectsContinue(self) -> bool:
        """
        Whether the client waits for C{100 Continue} before sending the body.
        """
        expect = self.headers.get(b"expect")
        return expect is not None and expect.lower() == b"100-continue"


@dataclass(eq=True, slots=True)
class ResponseHead:
    """
    An accepted status line and header block.

    @ivar status: the status code, 100 to 599.
    @ivar reason: the reason phrase as received (may be empty).
    @ivar version: C{(1, 0)} or C{(1, 1)}.
    @ivar headers: every field, in order.
    @ivar bodyKind: how the body is delimited; L{BodyKind.NONE} for 1xx,
        204, 304, responses to HEAD and tunnel openings.
    @ivar contentLength: the body length for L{BodyKind.LENGTH}; for
        responses to HEAD and 304 the announced length of the
        representation (forwarded as metadata), else L{None}.
    @ivar keepAlive: whether the server lets the connection persist.
    @ivar tunnel: the response opens a tunnel (C{101} to an upgrade, C{2xx}
        to CONNECT): what follows the head is no longer HTTP.
    @ivar trailers: as for L{RequestHead.trailers}.
    @ivar connection: as for L{RequestHead.connection}.
    @ivar fields: the field lines the proxy writes for the response,
        without the hop-by-hop and framing fields (and those Connection
        names), when the parser built the head: written from the values
        llhttp accepted (see L{lbproxy.http.serialize.receivedFieldLines});
        L{None} for a head made otherwise.
    """

    status: int
    reason: bytes
    version: tuple[int, int]
    headers: Headers
    bodyKind: BodyKind = BodyKind.NONE
    contentLength: int | None = None
    keepAlive: bool = True
    tunnel: bool = False
    trailers: Headers | None = field(default=None, compare=False)
    connection: frozenset[bytes] | None = field(default=None, compare=False)
    fields: bytes | None = field(default=None, compare=False)

    @property
    def interim(self) -> bool:
        """
        Whether this is a 1xx response other than 101, to be followed by the
        final response to the same request.
        """
        return 100 <= self.status < 200 and self.status != 101
