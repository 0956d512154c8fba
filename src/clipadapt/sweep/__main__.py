"""A sweep's child process: `python -m clipadapt.sweep CALL` runs one run-API call given as JSON."""

import sys

from .execution import worker_main

sys.exit(worker_main(sys.argv[1:]))
