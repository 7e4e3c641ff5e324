"""
twistd plugin: makes "twistd lbproxy" available.

There is no __init__.py in twisted/ or twisted/plugins/: one would shadow
Twisted's own package.
"""

from twisted.application.service import ServiceMaker

lbproxy = ServiceMaker(
    "lbproxy",
    "lbproxy.tap",
    "Load-balancing proxy for TCP, HTTP, IMAP and POP3",
    "lbproxy",
)
