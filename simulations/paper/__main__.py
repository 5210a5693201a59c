"""``python -m simulations.paper <figure> ...``: see ``simulations.paper.commands``."""

import sys

from simulations.paper.commands import main

sys.exit(main())
