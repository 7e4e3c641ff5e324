"""
Operating a running lbproxy: the admin listener (C{[admin]}) with its
stats page, JSON and Prometheus metrics (L{lbproxy.admin.stats},
L{lbproxy.admin.metrics}), the runtime API (L{lbproxy.admin.api}), the
C{lbproxy-ctl} command speaking to it (L{lbproxy.admin.ctl}), and the
systemd notifications (L{lbproxy.admin.notify}).

Everything here reads and changes the live model
(L{lbproxy.core.model.Balancer}); nothing keeps a copy of its own.
"""
