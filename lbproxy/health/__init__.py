"""
Health checking: the probes (L{lbproxy.health.checks}) and the per-pool
service that runs them and moves servers between UP and DOWN
(L{lbproxy.health.monitor}).
"""
