"""
The built-in selectors and protocol fronts, registered through the same
plugin mechanism a third party uses.
"""

import random

from lbproxy.http.mode import HTTPMode
from lbproxy.mail.mode import IMAPMode, POP3Mode
from lbproxy.selectors.base import SelectorPlugin
from lbproxy.selectors.first import FirstAvailable
from lbproxy.selectors.keyhash import METHODS, KeyHash
from lbproxy.selectors.leastconn import WeightedLeastConnections
from lbproxy.selectors.maglev import DEFAULT_TABLE_SIZE, Maglev
from lbproxy.selectors.options import keySpec, oneOf, primeBetween
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin
from lbproxy.selectors.twochoices import RandomTwoChoices
from lbproxy.tcp.mode import TCPMode

tcp = TCPMode()
http = HTTPMode()
imap = IMAPMode()
pop3 = POP3Mode()


def _randomTwoChoices() -> RandomTwoChoices:
    """
    One generator per pool, seeded from the operating system.
    """
    return RandomTwoChoices(random.Random())


roundrobin = SelectorPlugin(
    "roundrobin",
    "smooth weighted round-robin",
    SmoothWeightedRoundRobin,
)

leastconn = SelectorPlugin(
    "leastconn",
    "fewest active connections per unit of weight; ties take turns",
    WeightedLeastConnections,
)

random2 = SelectorPlugin(
    "random2",
    "two servers drawn at random by weight; the less loaded one serves",
    _randomTwoChoices,
)

first = SelectorPlugin(
    "first",
    "first server in config order that is not at its maxconn",
    FirstAvailable,
)

keyhash = SelectorPlugin(
    "hash",
    "hash of a key (default the client address) modulo the weighted servers",
    KeyHash,
    {"key": ("src", keySpec), "method": ("hash", oneOf(*METHODS))},
)

maglev = SelectorPlugin(
    "maglev",
    "Maglev consistent hashing of a key (default the client address)",
    Maglev,
    {
        "key": ("src", keySpec),
        "table_size": (DEFAULT_TABLE_SIZE, primeBetween(251, 1_000_003)),
    },
)
