"""
The strict HTTP/1.1 message layer of the L7 proxy.

L{parser} turns bytes into message events (with L{parsing}, L{llhttp}
and L{bodies}), L{heads} decides what a header block means, once, and
L{headcache} keeps what it decided of heads that come back; L{message}
holds heads and header lists, L{serialize} writes heads and chunked
framing back out, and L{forwarded} adds the X-Forwarded-* and Forwarded
headers.
"""
