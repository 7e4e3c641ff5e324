"""
Sending a stream's body within HTTP/2 flow control, the same way toward
clients (L{lbproxy.http2.stream}) and toward servers
(L{lbproxy.http2.upstream}): what the stream's and the connection's send
windows allow now, in frames no larger than the peer takes, the rest held
until a WINDOW_UPDATE; then the stream's end, with trailers or without.
"""

from __future__ import annotations

from collections import deque

from h2.exceptions import ProtocolError


def sendWithinWindows(conn, streamId: int, pending: deque, end: list | None) -> tuple[int, bool | None]:
    """
    Send from C{pending} (bytes, oldest first) what the windows of stream
    C{streamId} on the h2 connection C{conn} allow; once all of it is sent
    and C{end} is known, end the stream: the trailers C{end}, or an empty
    DATA frame with END_STREAM when C{end} is empty.

    @return: the body bytes sent, and whether the stream was ended: True,
        False (some is held back, or its end is not known yet), or None when
        the stream was closed under it (the peer reset or closed it: its
        event follows, and nothing more can be sent).
    """
    sent = 0
    try:
        while pending:
            window = min(conn.local_flow_control_window(streamId), conn.max_outbound_frame_size)
            if window <= 0:
                return sent, False
            chunk = pending[0]
            if len(chunk) <= window:
                pending.popleft()
            else:
                pending[0] = chunk[window:]
                chunk = chunk[:window]
            conn.send_data(streamId, chunk)
            sent += len(chunk)
        if end is None:
            return sent, False
        if end:
            conn.send_headers(streamId, end, end_stream=True)
        else:
            conn.end_stream(streamId)
    except ProtocolError:
        return sent, None
    return sent, True
