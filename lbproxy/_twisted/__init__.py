"""
The only place where lbproxy relies on Twisted's private internals.

Everything here works below Twisted's public API for speed or for errors
an operator must see: the reactor's dispatch and read path (L{reactor}),
writes batched per reactor iteration (L{writebatch}). The canary test
(C{tests/test_twisted_internals.py}) checks every attribute and method
these modules use, so a Twisted upgrade that moves one fails there, naming
it, instead of somewhere in the data path.
"""
