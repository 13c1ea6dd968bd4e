"""``python -m vaekit`` (and ``torchrun -m vaekit``) runs the ``vaekit`` command."""

import sys

from .cli import main

sys.exit(main())
