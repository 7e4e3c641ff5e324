"""
The only place where lbproxy relies on Twisted's private internals.

Everything here works below Twisted's public API for speed or for errors
an operator must see:

  - L{reactor}: the reactor's dispatch and read path, and listening
    sockets that pause when lbproxy runs out of descriptors;
  - L{writebatch}: writes to TCP connections batched per reactor
    iteration, and L{tlsbatch}: the records of TLS transports over them
    sent with the batch;
  - L{directwrite}: the relay's writes sent at once when nothing is
    queued;
  - L{handover}: a connection handed from one protocol to the next (the
    PROXY header reader stepping out of the way);
  - L{listen}: listening errors raised at startup instead of logged;
  - L{transports}: TCP connections with their attributes in slots;
  - L{directconnect}: connections to servers' IP addresses made without
    Twisted's connector, endpoint and Deferreds.

The rest of lbproxy uses Twisted's public API and these modules. The
canary test (C{tests/test_twisted_internals.py}) checks every internal
attribute, method and behaviour these modules use, so a Twisted upgrade
that moves one fails there, naming it and the module that relies on it,
instead of somewhere in the data path.
"""

from twisted.internet import tcp

from lbproxy._twisted.directconnect import DirectClient
from lbproxy._twisted.transports import LeanClient, LeanServer

#: The exact classes of plain TCP connections, whose buffers, socket and
#: reads these modules work with: Twisted's and lbproxy's lean ones (the
#: same with their attributes in slots); other subclasses may send and
#: receive differently (UNIX ones pass descriptors along).
PLAIN_TCP = frozenset({tcp.Server, tcp.Client, LeanServer, LeanClient, DirectClient})
