"""
Idle HTTP/2 connections over TLS for bench/run_h2.py (stdlib only).

L{IdleH2Clients} opens connections C{concurrency} at a time, each taken
through a TLS handshake that must pick ALPN h2, the client connection
preface with an empty SETTINGS frame, and the server's first SETTINGS
frame (acknowledged); then it is kept open without a byte more. The
frames are few and fixed, so they are written here by hand rather than
with an HTTP/2 library.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import struct
import time

#: The client connection preface (RFC 9113, section 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = 0x4
GOAWAY = 0x7
ACK = 0x1
FRAME_HEADER = 9


def frame(kind: int, flags: int = 0, stream: int = 0, payload: bytes = b"") -> bytes:
    """
    One HTTP/2 frame: its 9-byte header, then C{payload}.
    """
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


#: What each client sends once TLS is up: the preface and empty SETTINGS.
OPENING = PREFACE + frame(SETTINGS)
SETTINGS_ACK = frame(SETTINGS, ACK)


class H2Error(Exception):
    """
    A connection did not get as far as an idle HTTP/2 connection.
    """


def serverSettingsSeen(data: bytes) -> bool | None:
    """
    Whether C{data}, the bytes the server sent so far, hold its SETTINGS
    frame (not an acknowledgement); None when more bytes are needed.

    @raise H2Error: on a GOAWAY, or when the first frame is not SETTINGS
        (the server must send SETTINGS first).
    """
    offset = 0
    while len(data) - offset >= FRAME_HEADER:
        length = int.from_bytes(data[offset : offset + 3], "big")
        kind, flags = data[offset + 3], data[offset + 4]
        if len(data) - offset - FRAME_HEADER < length:
            return None
        if kind == GOAWAY:
            raise H2Error("the server sent GOAWAY")
        if offset == 0 and kind != SETTINGS:
            raise H2Error(f"the server's first frame is of type {kind}, not SETTINGS")
        if kind == SETTINGS and not flags & ACK:
            return True
        offset += FRAME_HEADER + length
    return None


def frameKinds(data: bytes) -> list[int]:
    """
    The types of the whole frames at the start of C{data}, in order.
    """
    kinds, offset = [], 0
    while len(data) - offset >= FRAME_HEADER:
        length = int.from_bytes(data[offset : offset + 3], "big")
        if len(data) - offset - FRAME_HEADER < length:
            break
        kinds.append(data[offset + 3])
        offset += FRAME_HEADER + length
    return kinds


def clientContext() -> ssl.SSLContext:
    """
    TLS 1.3 offering only ALPN h2, without verifying the certificate (the
    benchmark's own self-signed one).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])
    return context


class _Opening:
    """
    One connection on its way to idle: handshake, then the preface, then
    the server's SETTINGS.
    """

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.handshaken = False
        self.wantWrite = True
        self.outgoing = b""
        self.received = b""


def _interest(opening: _Opening) -> int:
    if opening.outgoing or (not opening.handshaken and opening.wantWrite):
        return selectors.EVENT_WRITE
    return selectors.EVENT_READ


def _closedOrGone(sock: ssl.SSLSocket) -> bool:
    """
    Whether readable C{sock} was closed, or carries a GOAWAY frame.
    """
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
    except ssl.SSLWantReadError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)
    return not data or GOAWAY in frameKinds(data)


class IdleH2Clients:
    """
    Idle HTTP/2 connections to one TLS port, and their count.
    """

    def __init__(self) -> None:
        self.sockets: list[ssl.SSLSocket] = []
        #: The sockets the server has closed or sent GOAWAY on.
        self.gone: set[ssl.SSLSocket] = set()
        self.context = clientContext()

    def open(
        self, host: str, port: int, count: int, concurrency: int = 50, timeout: float = 120.0
    ) -> float:
        """
        Open C{count} idle HTTP/2 connections to C{host}:C{port}, at most
        C{concurrency} at once; the seconds it took.

        @raise H2Error: when one fails, or when they are not all idle
            within C{timeout} seconds.
        """
        started = time.monotonic()
        deadline = started + timeout
        selector = selectors.DefaultSelector()
        pending = 0
        begun = 0
        try:
            while len(self.sockets) < count:
                while pending < concurrency and begun < count:
                    opening = self._connect(host, port)
                    selector.register(opening.sock, selectors.EVENT_WRITE, opening)
                    pending += 1
                    begun += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise H2Error(
                        f"{len(self.sockets)} of {count} connections idle after {timeout:g}s"
                    )
                for key, _ in selector.select(timeout=min(1.0, remaining)):
                    if self._advance(key.data):
                        selector.unregister(key.fileobj)
                        self.sockets.append(key.data.sock)
                        pending -= 1
                    else:
                        selector.modify(key.fileobj, _interest(key.data), key.data)
        except BaseException:
            for key in list(selector.get_map().values()):
                key.fileobj.close()
            raise
        finally:
            selector.close()
        return time.monotonic() - started

    def _connect(self, host: str, port: int) -> _Opening:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setblocking(False)
        raw.connect_ex((host, port))
        sock = self.context.wrap_socket(raw, do_handshake_on_connect=False)
        return _Opening(sock)

    def _advance(self, opening: _Opening) -> bool:
        """
        Move C{opening} on as far as its socket allows; True once idle.
        """
        sock = opening.sock
        try:
            if not opening.handshaken:
                try:
                    sock.do_handshake()
                except ssl.SSLWantReadError:
                    opening.wantWrite = False
                    return False
                except ssl.SSLWantWriteError:
                    opening.wantWrite = True
                    return False
                opening.handshaken = True
                if sock.selected_alpn_protocol() != "h2":
                    raise H2Error(f"ALPN picked {sock.selected_alpn_protocol()!r}, not h2")
                opening.outgoing = OPENING
            if opening.outgoing:
                sent = sock.send(opening.outgoing)
                opening.outgoing = opening.outgoing[sent:]
                if opening.outgoing:
                    return False
            while True:
                try:
                    data = sock.recv(65536)
                except ssl.SSLWantReadError:
                    return False
                if not data:
                    raise H2Error("the server closed the connection before its SETTINGS")
                opening.received += data
                if serverSettingsSeen(opening.received):
                    if GOAWAY in frameKinds(opening.received):
                        self.gone.add(sock)
                    sock.setblocking(True)
                    sock.sendall(SETTINGS_ACK)
                    return True
        except (OSError, H2Error) as e:
            sock.close()
            if isinstance(e, H2Error):
                raise
            raise H2Error(f"connection failed: {e}") from e

    def dropped(self) -> int:
        """
        How many of the idle connections the server has closed, or sent
        GOAWAY on, since they were opened (what else it sent, such as the
        acknowledgement of the client's SETTINGS, is read and ignored).
        """
        selector = selectors.DefaultSelector()
        for sock in self.sockets:
            if sock not in self.gone:
                selector.register(sock, selectors.EVENT_READ)
        try:
            ready = [key.fileobj for key, _ in selector.select(timeout=0)] if selector.get_map() else []
        finally:
            selector.close()
        self.gone.update(sock for sock in ready if _closedOrGone(sock))
        return len(self.gone)

    def close(self) -> None:
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass
        self.sockets = []
        self.gone = set()
