"""``python -m inspector``: the command line (:mod:`inspector.cli`)."""

import sys

from .cli import main

sys.exit(main())
