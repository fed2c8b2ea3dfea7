"""``python -m xpcnn ...`` is the ``xpcnn`` command."""

import sys

from .cli import main

sys.exit(main())
