"""Wall time of `clipadapt --help` and `clipadapt COMMAND --help` in fresh processes (median of 3 runs).

python benchmarks/cli_startup.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

COMMANDS = [[], ["eval"], ["train"], ["predict"], ["info"], ["import-mma"], ["demo"]]


def seconds(args: list[str], runs: int = 3) -> float:
    """Median wall time of `python -m clipadapt ARGS --help`."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "clipadapt", *args, "--help"], check=True, capture_output=True
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_loaded() -> bool:
    """Whether building the parser imports torch."""
    code = "import sys; from clipadapt.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    return (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "True"
    )


if __name__ == "__main__":
    for args in COMMANDS:
        print(f"clipadapt {' '.join(args + ['--help']):<22} {seconds(args):.2f} s")
    print(f"torch imported to build the parser: {torch_loaded()}")
