"""
The top-level C{workers} key: how many processes serve the listeners.

C{workers = 1} (the default) is one process doing everything. With more,
a control process keeps the health checks, the HA heartbeat and the admin
listener, and C{workers} processes serve the listeners, each with its own
socket on every listener's address (C{SO_REUSEPORT}): see
L{lbproxy.workers}. C{"auto"} is one worker per CPU this process may run
on.

With more than one worker, every listener must be a C{tcp:} or C{tcp6:}
endpoint (the sockets the workers share by C{SO_REUSEPORT}), and stick
tables are per worker, so they are not replicated to an HA peer.
"""

from __future__ import annotations

import os
from dataclasses import replace

from lbproxy.config.table import Table, show
from lbproxy.errors import ConfigError
from lbproxy.sockets import tcpBind

#: The most workers a configuration may ask for.
MAX_WORKERS = 64


def availableCores() -> int:
    """
    The CPUs this process may run on (its affinity mask), at least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parseWorkers(root: Table, cores=availableCores) -> int:
    """
    The C{workers} key of the configuration's top level: an integer from 1
    to L{MAX_WORKERS}, or C{"auto"} (C{cores()}, at most L{MAX_WORKERS}).
    """
    value = root.get("workers", 1)
    if value == "auto":
        return min(cores(), MAX_WORKERS)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        root.fail("workers", f'expected an integer from 1 to {MAX_WORKERS} or "auto", got {show(value)}')
    return value


def checkWorkerListeners(source: str, workers: int, listeners: dict) -> None:
    """
    With more than one worker, refuse a listener the workers cannot share:
    anything but a C{tcp:} or C{tcp6:} endpoint (a UNIX socket, a systemd
    socket, an endpoint plugin's) cannot be opened once per worker with
    C{SO_REUSEPORT}.
    """
    if workers == 1:
        return
    for name, listener in listeners.items():
        if tcpBind(listener.bind) is None:
            raise ConfigError(
                source,
                f"listeners.{name}.bind",
                f'expected a "tcp:" or "tcp6:" endpoint with workers = {workers} (each worker opens '
                f"its own socket on the address, shared with SO_REUSEPORT), got {listener.bind!r}",
            )


def settleWorkerStick(source: str, workers: int, pools: dict) -> dict:
    """
    With more than one worker, stick tables are each worker's own: an
    explicit C{replicate = true} is an error (the control process that
    runs the HA channel holds no entries), and the default is false.
    """
    if workers == 1:
        return pools
    settled = {}
    for name, pool in pools.items():
        stick = pool.stick
        if stick is not None:
            if stick.replicate:
                raise ConfigError(
                    source,
                    f"pools.{name}.stick.replicate",
                    f"expected false with workers = {workers}: each worker keeps its own stick table, "
                    "and the process that speaks to the HA peer holds none",
                )
            pool = replace(pool, stick=replace(stick, replicate=False))
        settled[name] = pool
    return settled
