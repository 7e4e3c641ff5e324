"""
The live objects built from a validated config: pools of servers, each
with its own selector instance.

Fronts, health checks and (later) the admin API and HA state sync all work
on one L{Balancer}.
"""

from __future__ import annotations

from lbproxy.config import Config, PoolConfig
from lbproxy.core.pool import Pool, Server
from lbproxy.selectors import findSelector
from lbproxy.tls.client import BackendTLS


def buildPool(config: PoolConfig, source: str = "") -> Pool:
    """
    The live pool of C{config}, with its TLS files loaded when it has
    C{[tls]}.

    @param source: the config file, named by errors.
    @raise ConfigError: a TLS file of the pool is unusable.
    """
    plugin = findSelector(config.selector)
    if plugin is None:
        raise KeyError(f"selector {config.selector!r} is no longer installed")
    servers = []
    for sc in config.servers:
        server = Server(
            name=sc.name,
            address=sc.address,
            weight=sc.weight,
            backup=sc.backup,
            maxconn=sc.maxconn,
            cookie=sc.cookie,
        )
        if config.health is not None:
            server.passiveFall = config.health.passiveFall
        servers.append(server)
    pool = Pool(config.name, servers, plugin.build(config.selectorOptions), config)
    if config.tls is not None:
        # One BackendTLS per pool, shared by its connectors (one per
        # front), its health checks and the mail fronts' STARTTLS.
        pool.tls = BackendTLS(config.name, config.tls, source)
        pool.tls.load(pool.servers)
    return pool


class Balancer:
    """
    All pools of one running config, by name.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pools = {
            name: buildPool(pc, config.source) for name, pc in config.pools.items()
        }
