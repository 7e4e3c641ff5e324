"""
The live objects built from a validated config: pools of servers, each
with its own selector instance.

Fronts, health checks and (later) the admin API and HA state sync all work
on one L{Balancer}.
"""

from __future__ import annotations

from lbproxy.config import Config, PoolConfig
from lbproxy.pool import Pool, Server
from lbproxy.selectors import findSelector


def buildPool(config: PoolConfig) -> Pool:
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
    return Pool(config.name, servers, plugin.build(config.selectorOptions), config)


class Balancer:
    """
    All pools of one running config, by name.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pools = {name: buildPool(pc) for name, pc in config.pools.items()}
