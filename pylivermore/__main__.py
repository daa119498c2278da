"""``python -m pylivermore``: the ``livermore`` command line."""

import sys

from .cli import main

sys.exit(main())
