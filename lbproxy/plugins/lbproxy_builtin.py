"""
The built-in selectors, registered through the same plugin mechanism a
third party uses.
"""

from lbproxy.selectors.base import SelectorPlugin
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin

roundrobin = SelectorPlugin(
    "roundrobin",
    "smooth weighted round-robin",
    SmoothWeightedRoundRobin,
)
