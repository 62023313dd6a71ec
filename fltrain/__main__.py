"""``python -m fltrain ...`` runs the ``fltrain`` command line."""

import sys

from .cli import main

sys.exit(main())
