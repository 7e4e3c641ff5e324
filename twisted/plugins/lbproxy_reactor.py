"""
twistd reactor plugin: "--reactor=lbproxy" selects lbproxy's epoll reactor
(the default of "twistd lbproxy" on Linux).
"""

from twisted.application.reactors import Reactor

lbproxy = Reactor(
    "lbproxy",
    "lbproxy._twisted.reactor",
    "epoll reactor without the legacy per-event log context (Linux)",
)
