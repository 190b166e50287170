"""``python -m spikelfp`` (and ``torchrun ... -m spikelfp train ...``): the console script."""

import sys

from .cli import main

sys.exit(main())
