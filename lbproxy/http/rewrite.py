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
  - C{Host} from the local address when an HTTP/1.0 client sent none
    (HTTP/1.1 requires it);
  - C{Connection: close} when the pool keeps no idle connections, so the
    backend does not hold the connection open for nothing;
  - framing (Content-Length or chunked) derived from the body about to be
    sent.
"""

from __future__ import annotations

from lbproxy.http.context import requestURI
from lbproxy.http.forwarded import ForwardingHeaders, TrustedNetworks
from lbproxy.http.message import RequestHead
from lbproxy.http.serialize import requestHeadBytes

#: Methods whose requests may be sent again (RFC 9110 §9.2.2).
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_WEBSOCKET = (b"websocket",)


class RequestRewriter:
    """
    Writes the backend's version of request heads for one listener.

    @ivar forwarding: the listener's L{ForwardingHeaders}.
    @ivar proto: C{"http"} or C{"https"}, as clients connect to the
        listener (X-Forwarded-Proto).
    """

    def __init__(self, listener, proto: str = "http") -> None:
        """
        @param listener: a L{lbproxy.config.ListenerConfig}; its
            C{trustedProxies} and C{forwarded} are used.
        """
        self.forwarding = ForwardingHeaders(
            TrustedNetworks(str(network) for network in listener.trustedProxies),
            forwarded=listener.forwarded,
        )
        self.proto = proto

    def rewrite(
        self,
        head: RequestHead,
        clientHost: str,
        clientPort: int | None,
        localHost: str,
        localPort: int | None,
        closeBackend: bool = False,
    ) -> tuple[bytes, bool, bytes | None]:
        """
        The head to send to the backend for C{head} (which is left as it
        is).

        @param clientHost: the client's address (forwarding headers).
        @param localHost: the address the client connected to, for a
            missing Host.
        @param localPort: the port the client connected to
            (X-Forwarded-Port).
        @param closeBackend: ask the backend to close the connection after
            the response.
        @return: the head bytes, whether a websocket upgrade is passed on,
            and the X-Forwarded-For value sent (L{None} if none).
        @raise ValueError: the head cannot be written safely.
        """
        headers = head.headers.copy()
        websocket = headers.removeHopByHop(keepWebSocket=head.upgrade == _WEBSOCKET)
        self.forwarding.apply(
            headers,
            clientHost=clientHost,
            clientPort=clientPort,
            proto=self.proto,
            host=head.authority,
            port=localPort,
        )
        if head.authority is None:
            if ":" in localHost:
                localHost = f"[{localHost}]"
            authority = localHost if localPort is None else f"{localHost}:{localPort}"
            headers.add(b"Host", authority.encode("ascii", "replace"))
        if closeBackend and not websocket:
            headers.add(b"Connection", b"close")
        target = head.target if head.targetForm == "origin" else requestURI(head)
        if target is None:
            raise ValueError("no origin-form target for the request")
        data = requestHeadBytes(
            head.method, target, headers, head.bodyKind, head.contentLength
        )
        return data, websocket, headers.get(b"x-forwarded-for")


def retryable(head: RequestHead) -> bool:
    """
    Whether a request may be sent again on another connection when the
    first one failed before any of the response came: an idempotent method
    (its body, if any, must not have been started; the caller checks).
    """
    return head.method in IDEMPOTENT_METHODS
