"""
What the HTTP front changes in a request head before it goes to a backend.

The backend always gets an HTTP/1.1 head written from parsed values:

  - the target in origin form (an absolute-form target is reduced to its
    path and query; the parser already checked that its authority agrees
    with Host);
  - hop-by-hop fields removed (RFC 9110 §7.6.1, those named in Connection
    too); an upgrade survives only as exactly C{Upgrade: websocket}, so
    C{h2c} and any other protocol switch never reach the backend;
  - the forwarding fields of L{lbproxy.http.forwarded}: X-Forwarded-For
    (incoming values kept only from trusted proxies), -Proto, -Host, -Port,
    and RFC 7239 Forwarded when the listener asks for it;
  - the client-subject field (C{X-Client-Subject} unless the listener's
    C{[tls]} names another) removed from what the client sent, always,
    and set to the subject of the client certificate the TLS handshake
    verified, when there is one;
  - C{Host} from the local address when an HTTP/1.0 client sent none
    (HTTP/1.1 requires it);
  - C{Connection: close} when the pool keeps no idle connections, so the
    backend does not hold the connection open for nothing;
  - framing (Content-Length or chunked) derived from the body about to be
    sent.
"""

from __future__ import annotations

from lbproxy.http.context import requestURI
from lbproxy.http.forwarded import ForwardingHeaders, TrustedNetworks, parseAddress
from lbproxy.http.message import HOP_BY_HOP, BodyKind, Headers, RequestHead
from lbproxy.http.serialize import HeadWriter, checkedRequestHeadBytes
from lbproxy.tls.server import clientSubject

#: Methods whose requests may be sent again (RFC 9110 §9.2.2).
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_WEBSOCKET = (b"websocket",)

#: Forwarding fields a client that is not a trusted proxy cannot set.
_FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"forwarded"}
)
#: What the common case removes in one pass.
_DROPPED = HOP_BY_HOP | _FORWARDING
_CLOSE = (b"connection", b"Connection", b"close")
#: What Connection cannot make the proxy drop (see L{Headers.removeHopByHop}).
_PROTECTED = frozenset({b"host"})
#: The Connection option sets whose dropped fields a rewriter keeps (see
#: L{RequestRewriter._checkedDropSet}): sets of up to L{_DROP_SET_SIZE}
#: options, at most L{_DROP_SETS} of them.
_DROP_SET_SIZE = 4
_DROP_SETS = 256


#: Addresses whose rewriting facts a rewriter keeps (see
#: L{RequestRewriter._clientFacts}) before it starts afresh.
_FACTS_LIMIT = 4096
#: Written heads of checked requests a rewriter keeps for every connection
#: to share (see L{RequestRewriter.rewrite}) before it starts afresh.
_CHECKED_LIMIT = 1024

#: Server endpoint types whose clients speak TLS.
_TLS_ENDPOINTS = frozenset({"ssl", "tls"})

#: The client-subject field of listeners without C{[tls]}: removed from
#: requests all the same, so no client can pose as a verified one.
DEFAULT_SUBJECT_HEADER = "X-Client-Subject"

#: A connection's subject field before its first request looked it up.
_UNKNOWN = object()


def listenerIsTLS(listener) -> bool:
    """
    Whether C{listener} accepts TLS connections: it terminates TLS itself
    (its C{[tls]} table) or is bound with a TLS endpoint type.
    """
    tls = getattr(listener, "tls", None)
    if tls is not None and not tls.starttls:
        return True
    return listener.bind.split(":", 1)[0].strip().lower() in _TLS_ENDPOINTS


class Peer:
    """
    What the rewriter needs to know about one client connection, worked
    out once per connection rather than once per request.

    @ivar client: the client's address (C{clientHost}, C{clientPort}).
    @ivar local: the address the client connected to (C{localPort}).
    @ivar trusted: the client is a trusted proxy.
    @ivar transport: the client's transport, whose TLS connection tells
        the verified client certificate (L{None} when not known).

    What it shares with other connections (the proxy's fields, the last
    head written) is the rewriter's, held by reference: an idle
    keep-alive connection keeps little of its own.
    """

    __slots__ = (
        "client",
        "local",
        "trusted",
        "transport",
        "_added",
        "_addedBlock",
        "_hostField",
        "_subject",
        "_lastChecked",
    )

    def __init__(self, rewriter: RequestRewriter, client, local, transport=None) -> None:
        # The addresses the connection holds anyway; the fields below are
        # read from them.
        self.client = client
        self.local = local
        self.trusted, forwardedFor = rewriter._clientFacts(self.clientHost)
        proto, port, self._hostField = rewriter._localFacts(getattr(local, "host", "") or "", self.localPort)
        # X-Forwarded-For first: the rewriter reads its value from here.
        self._added = rewriter._addedFields(forwardedFor, proto, port)
        self.transport = transport
        # Looked up by the first request: the TLS handshake is over by then
        # (no request arrives before it), and cannot change afterwards
        # (renegotiation is refused).
        self._subject = _UNKNOWN
        # The proxy's fields for checked requests, written once.
        self._addedBlock: bytes | None = None
        # The last checked request (what its backend head was written
        # from) and that head, as a (request, head) entry the rewriter may
        # share with other connections: a keep-alive client tends to send
        # the same request again.
        self._lastChecked: tuple[tuple, bytes] | None = None

    @property
    def clientHost(self) -> str:
        return getattr(self.client, "host", "") or ""

    @property
    def clientPort(self) -> int | None:
        return getattr(self.client, "port", None)

    @property
    def localPort(self) -> int | None:
        return getattr(self.local, "port", None)


class RequestRewriter:
    """
    Writes the backend's version of request heads for one listener.

    @ivar forwarding: the listener's L{ForwardingHeaders}.
    @ivar proto: C{"http"} or C{"https"}, as clients connect to the
        listener (X-Forwarded-Proto).
    @ivar writer: the listener's L{HeadWriter}.
    """

    def __init__(
        self, listener, proto: str | None = None, writer: HeadWriter | None = None
    ) -> None:
        """
        @param listener: a L{lbproxy.config.ListenerConfig}; its
            C{trustedProxies} and C{forwarded} are used.
        @param proto: the scheme clients use; by default C{"https"} for a
            listener bound with a TLS endpoint (C{ssl:}, C{tls:}), else
            C{"http"}.
        @param writer: the L{HeadWriter} the heads are written with; by
            default one of the rewriter's own.
        """
        self.writer = writer if writer is not None else HeadWriter()
        if proto is None:
            proto = "https" if listenerIsTLS(listener) else "http"
        self.forwarding = ForwardingHeaders(
            TrustedNetworks(str(network) for network in listener.trustedProxies),
            forwarded=listener.forwarded,
        )
        self.proto = proto
        tls = getattr(listener, "tls", None)
        name = tls.clientSubjectHeader if tls is not None else DEFAULT_SUBJECT_HEADER
        self.subjectHeader = name.encode("ascii")
        self._subjectKey = self.subjectHeader.lower()
        self._dropped = _DROPPED | {self._subjectKey}
        # For checked heads, Content-Length too (the framing is written
        # from the parsed values); then by the Connection options that name
        # more fields, for the few sets that come back.
        self._checkedDropped = self._dropped | {b"content-length"}
        self._checkedDropSets: dict[frozenset[bytes], frozenset[bytes]] = {}
        self._clients: dict[str, tuple[bool, tuple[bytes, bytes, bytes]]] = {}
        self._locals: dict[tuple[str, int | None], tuple] = {}
        # What connections share: the proxy's fields for a client and local
        # address, those fields written, and the heads written for checked
        # requests with those fields.
        self._addedSets: dict[tuple, tuple] = {}
        self._addedBlocks: dict[tuple, bytes] = {}
        self._checked: dict[tuple[bytes, tuple], tuple[tuple, bytes]] = {}

    def peer(self, client, local, transport=None) -> Peer:
        """
        The L{Peer} of a client connection from C{client} to C{local} over
        C{transport}.
        """
        return Peer(self, client, local, transport)

    def _subjectField(self, peer: Peer):
        """
        The client-subject field for requests of C{peer}'s connection, or
        L{None} without a verified client certificate.
        """
        field = peer._subject
        if field is _UNKNOWN:
            subject = clientSubject(peer.transport)
            field = None
            if subject is not None:
                field = (self._subjectKey, self.subjectHeader, subject.encode("ascii"))
            peer._subject = field
        return field

    def _clientFacts(self, host: str) -> tuple[bool, tuple[bytes, bytes, bytes]]:
        """
        Whether a client at C{host} is a trusted proxy, and the
        X-Forwarded-For field naming it; worked out once per address (the
        same clients connect again and again) and kept in a bounded table.
        """
        facts = self._clients.get(host)
        if facts is None:
            address = parseAddress(host)
            node = address.compressed.encode("ascii") if address is not None else b"unknown"
            forwardedFor = (b"x-forwarded-for", b"X-Forwarded-For", node)
            facts = (host in self.forwarding.trusted, forwardedFor)
            if len(self._clients) >= _FACTS_LIMIT:
                self._clients.clear()
            self._clients[host] = facts
        return facts

    def _addedFields(self, forwardedFor: tuple, proto: tuple, port: tuple | None) -> tuple:
        """
        The proxy's forwarding fields for a connection (X-Forwarded-For
        first, then -Proto and -Port when there is a port), one tuple for
        every connection with the same ones.
        """
        key = (forwardedFor, proto, port)
        added = self._addedSets.get(key)
        if added is None:
            added = (forwardedFor, proto, port) if port is not None else (forwardedFor, proto)
            if len(self._addedSets) >= _FACTS_LIMIT:
                self._addedSets.clear()
            self._addedSets[key] = added
        return added

    def _addedBlockFor(self, peer: Peer, subject) -> bytes:
        """
        The proxy's fields of C{peer}'s checked requests, written (with the
        client-subject field C{subject}, if any), one block for every
        connection with the same fields and no subject.
        """
        if subject is not None:
            return self.writer.fieldBlock(peer._added + (subject,))
        block = self._addedBlocks.get(peer._added)
        if block is None:
            block = self.writer.fieldBlock(peer._added)
            if len(self._addedBlocks) >= _FACTS_LIMIT:
                self._addedBlocks.clear()
            self._addedBlocks[peer._added] = block
        return block

    def _localFacts(self, host: str, port: int | None) -> tuple:
        """
        The X-Forwarded-Proto field, the X-Forwarded-Port field (L{None}
        without a port) and the Host field naming the local address C{host}
        and C{port}, once per address.
        """
        key = (host, port)
        facts = self._locals.get(key)
        if facts is None:
            value = f"[{host}]" if ":" in host else host
            if port is not None:
                value = f"{value}:{port}"
            portField = None
            if port is not None:
                portField = (b"x-forwarded-port", b"X-Forwarded-Port", b"%d" % (port,))
            facts = (
                (b"x-forwarded-proto", b"X-Forwarded-Proto", self.proto.encode("ascii")),
                portField,
                (b"host", b"Host", value.encode("ascii", "replace")),
            )
            if len(self._locals) >= _FACTS_LIMIT:
                self._locals.clear()
            self._locals[key] = facts
        return facts

    def rewrite(
        self, head: RequestHead, peer: Peer, closeBackend: bool = False
    ) -> tuple[bytes, bool, bytes | None]:
        """
        The head to send to the backend for C{head} (which is left as it
        is).

        @param peer: the client connection's L{Peer}.
        @param closeBackend: ask the backend to close the connection after
            the response.
        @return: the head bytes, whether a websocket upgrade is passed on,
            and the X-Forwarded-For value sent (L{None} if none).
        @raise ValueError: the head cannot be written safely.
        """
        subject = self._subjectField(peer)
        if peer.trusted or self.forwarding.forwarded or head.upgrade:
            headers = head.headers.copy()
            websocket = headers.removeHopByHop(keepWebSocket=head.upgrade == _WEBSOCKET)
            headers.remove(self._subjectKey)
            if subject is not None:
                headers.add(subject[1], subject[2])
            self.forwarding.apply(
                headers,
                clientHost=peer.clientHost,
                clientPort=peer.clientPort,
                proto=self.proto,
                host=head.authority,
                port=peer.localPort,
            )
            if head.authority is None:
                headers.add(b"Host", peer._hostField[2])
            if closeBackend and not websocket:
                headers.add(b"Connection", b"close")
            xff = headers.get(b"x-forwarded-for")
        elif head.checked and head.authority is not None:
            # A head whose values the parser found writable as they are
            # (RequestHead.checked): its fields need no second check, the
            # proxy's own are checked and joined once per connection (and
            # shared by connections with the same ones). The head written
            # last on the connection is written again for a request with
            # the same method, target, fields and framing, and so is one
            # another connection with the same fields had written.
            bodyKind = head.bodyKind
            contentLength = head.contentLength if bodyKind is BodyKind.LENGTH else None
            connection = head.connection
            items = head.headers._items
            key = (
                head.method,
                head.target,
                head.authority,
                bodyKind,
                contentLength,
                closeBackend,
                connection,
                tuple(items),
            )
            entry = peer._lastChecked
            if entry is not None and entry[0] == key:
                return entry[1], False, peer._added[0][2]
            added = peer._addedBlock
            if added is None:
                added = peer._addedBlock = self._addedBlockFor(peer, subject)
            shared = (added, key)
            entry = self._checked.get(shared)
            if entry is None:
                dropped = self._checkedDropped if not connection else self._checkedDropSet(connection)
                lines = [
                    b"%s: %s\r\n" % (name, value)
                    for lowered, name, value in items
                    if lowered not in dropped
                ]
                lines.append(added)
                lines.append(b"X-Forwarded-Host: %s\r\n" % (head.authority,))
                if closeBackend:
                    lines.append(b"Connection: close\r\n")
                entry = (
                    key,
                    checkedRequestHeadBytes(head.method, head.target, b"".join(lines), bodyKind, contentLength),
                )
                if len(self._checked) >= _CHECKED_LIMIT:
                    self._checked.clear()
                self._checked[shared] = entry
            peer._lastChecked = entry
            return entry[1], False, peer._added[0][2]
        else:
            # The common case in one pass: hop-by-hop and forwarding fields
            # out, the proxy's forwarding fields in.
            headers = head.headers
            items = headers._items
            dropped = self._dropped
            connection = head.connection
            if connection is None:
                for item in items:
                    if item[0] == b"connection":
                        dropped = dropped | (headers.connectionTokens() - _PROTECTED)
                        break
            elif connection:
                dropped = dropped | (connection - _PROTECTED)
            kept = [item for item in items if item[0] not in dropped]
            kept += peer._added
            if subject is not None:
                kept.append(subject)
            authority = head.authority
            if authority is None:
                kept.append(peer._hostField)
            else:
                kept.append((b"x-forwarded-host", b"X-Forwarded-Host", authority))
            if closeBackend:
                kept.append(_CLOSE)
            headers = Headers._fromLowered(kept)
            websocket = False
            # The proxy's own, the only one left.
            xff = peer._added[0][2]
        target = head.target if head.targetForm == "origin" else requestURI(head)
        if target is None:
            raise ValueError("no origin-form target for the request")
        data = self.writer.requestHead(
            head.method, target, headers, head.bodyKind, head.contentLength
        )
        return data, websocket, xff

    def _checkedDropSet(self, connection: frozenset[bytes]) -> frozenset[bytes]:
        """
        The fields a checked head whose Connection options are
        C{connection} loses: hop-by-hop, forwarding, framing, and those
        the options name; kept for the few option sets that come back.
        """
        dropped = self._checkedDropSets.get(connection)
        if dropped is None:
            dropped = self._checkedDropped | (connection - _PROTECTED)
            if len(connection) <= _DROP_SET_SIZE:
                if len(self._checkedDropSets) >= _DROP_SETS:
                    self._checkedDropSets.clear()
                self._checkedDropSets[connection] = dropped
        return dropped


def stripHopByHop(headers: Headers, connection: frozenset[bytes] | None = None) -> None:
    """
    Remove the hop-by-hop fields of a message that opens no tunnel, as
    L{Headers.removeHopByHop} does, in one pass unless a Connection field
    names others.

    @param connection: the options of the Connection fields of C{headers}
        when the caller knows them (L{ResponseHead.connection}); by default
        they are looked for.
    """
    items = headers._items
    dropped = HOP_BY_HOP
    if connection is None:
        for item in items:
            if item[0] == b"connection":
                dropped = HOP_BY_HOP | (headers.connectionTokens() - _PROTECTED)
                break
    elif not connection <= HOP_BY_HOP:
        dropped = HOP_BY_HOP | (connection - _PROTECTED)
    headers._items = [item for item in items if item[0] not in dropped]


def retryable(head: RequestHead) -> bool:
    """
    Whether a request may be sent again on another connection when the
    first one failed before any of the response came: an idempotent method
    (its body, if any, must not have been started; the caller checks).
    """
    return head.method in IDEMPOTENT_METHODS
