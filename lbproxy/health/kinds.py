"""
The kinds of active health check, by the name C{[pools.NAME.health] type}
gives them, and the one place a check is built from its configuration.
"""

from __future__ import annotations

from lbproxy.config import HealthConfig
from lbproxy.health.checks import BannerCheck, HTTPCheck, TCPCheck
from lbproxy.health.grpc import GRPCCheck
from lbproxy.interfaces import IHealthCheck

CHECKS: dict[str, type] = {
    "tcp": TCPCheck,
    "http": HTTPCheck,
    "banner": BannerCheck,
    "grpc": GRPCCheck,
}


def buildCheck(reactor, config: HealthConfig, tls=None) -> IHealthCheck:
    """
    The check named by C{config.type}.

    @param tls: the L{lbproxy.tls.client.BackendTLS} to check over, instead
        of that of each server's pool (with C{config.tls}).
    """
    return CHECKS[config.type](reactor, config, tls)
