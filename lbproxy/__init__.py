"""
lbproxy: a load-balancing proxy for TCP, HTTP, IMAP and POP3 on Twisted.
"""

__version__ = "0.1.0"
