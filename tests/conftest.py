import os
import sys

# Tests import helpers as "from support import ..." and run against the
# checkout (or the installed package, when the checkout is not first).
sys.path.insert(0, os.path.dirname(__file__))
