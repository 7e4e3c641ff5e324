import os
import sys

# Tests import helpers as "from support import ..." and run against the
# checkout (or the installed package, when the checkout is not first).
sys.path.insert(0, os.path.dirname(__file__))

# The reactor the tests run on, installed before any test module imports
# twisted.internet.reactor (which would install Twisted's default).
from support import installReactorUnderTest  # noqa: E402

installReactorUnderTest()
