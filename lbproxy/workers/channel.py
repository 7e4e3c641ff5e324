"""
The channel between the control process and a worker: messages as JSON
objects, each framed by its length (a 32-bit prefix), over a pair of
pipes (the worker's file descriptors L{CONTROL_IN} and L{CONTROL_OUT}).

Every message has an C{"op"}. From the control process to a worker::

    state   pool server state reason   a server's state changed
    weight  pool server weight reason  its weight changed
    health  pool server healthy        its last check passed (true) or failed
    add     pool server{...} reason    the admin API added a server
    remove  pool server reason         the admin API removed one
    sync    pools{...}                 every pool's servers as the control
                                       process has them (at start, after a reload)
    reload  id who                     reload the configuration
    reopen                             reopen the access logs
    counters id                        send your counters
    stop                               stop gracefully

From a worker to the control process::

    ready    pid listeners{name: state}   serving
    failed   error                        could not start (one line)
    listeners listeners{name: state}      its listeners' states changed
    down     pool server reason           its passive checks took a server down
    counters id data                      its counters (L{lbproxy.workers.counters})
    reloaded id ok line                   how its reload went
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver

#: The worker's file descriptor the control process writes to.
CONTROL_IN = 3
#: The worker's file descriptor it writes to the control process on.
CONTROL_OUT = 4
#: The largest message (a big balancer's counters).
MAX_MESSAGE = 64 * 1024 * 1024


class ChannelProtocol(Int32StringReceiver):
    """
    One end of the channel: C{send(message)} writes a message, and each
    message received is given to C{received(message)}. A message that is
    not a JSON object with an C{op} closes the channel.

    @ivar lost: called with the reason once the channel is closed.
    """

    MAX_LENGTH = MAX_MESSAGE
    log = Logger()

    def __init__(self, received, lost=None) -> None:
        self.received = received
        self.lost = lost

    def send(self, message: dict) -> None:
        if self.transport is not None:
            self.sendString(json.dumps(message, separators=(",", ":")).encode("utf-8"))

    def stringReceived(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError as error:
            self._refuse(f"not JSON ({error})")
            return
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            self._refuse("not an object with an op")
            return
        try:
            self.received(message)
        except Exception:
            self.log.failure("cannot handle the control channel's {op} message", op=message["op"])

    def lengthLimitExceeded(self, length: int) -> None:
        self._refuse(f"a message of {length} bytes")

    def _refuse(self, why: str) -> None:
        self.log.error("control channel: closing on a bad message: {why}", why=why)
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        if self.lost is not None:
            self.lost(reason)
