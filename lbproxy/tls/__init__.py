"""
TLS: termination on listeners (L{lbproxy.tls.server}, with the
certificates of L{lbproxy.tls.certificates}) and TLS to the servers of a
pool.
"""
