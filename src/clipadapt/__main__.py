"""`python -m clipadapt` (and `torchrun -m clipadapt`): the same command as the `clipadapt` script."""

import sys

from .cli import main

sys.exit(main())
