"""
The core every protocol front shares: the live model of the running
balancer (L{model}), pools and servers (L{pool}), placing a flow on a
server (L{connect}), relaying its bytes (L{relay}), what selectors know of
it (L{context}), the PROXY protocol (L{proxyprotocol}, L{acceptproxy}) and
lbproxy's own resource limits (L{limits}).
"""
