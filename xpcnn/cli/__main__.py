"""``python -m xpcnn.cli ...`` is the ``xpcnn`` command."""

import sys

from . import main

sys.exit(main())
