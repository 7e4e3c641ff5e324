"""
The L4 TCP front (C{mode = "tcp"}): relays each connection to a server of
its pool, optionally routing TLS by the ClientHello's server name without
terminating it.
"""
