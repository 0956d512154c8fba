"""`make demo`: the whole job on generated data, with nothing to download."""

from __future__ import annotations

import json
import os

from .cli import main as cli_main
from .data.fake import make_coop_tree


def run_demo(out: str, quick: bool = False, overwrite: bool = False) -> int:
    """Evaluate zero-shot CLIP on a generated CoOp-layout dataset (interim demo, random tiny weights)."""
    print("NOTE: this interim demo evaluates a tiny CLIP with RANDOM weights on a generated dataset in "
          "CoOp's caltech101 layout; accuracy is near chance by construction. It shows the pipeline working "
          "end to end, not adaptation results.")
    data_root = os.path.join(out, "data")
    if not os.path.isdir(os.path.join(data_root, "caltech-101")):
        make_coop_tree(data_root, "caltech101", num_classes=6 if quick else 10)
    for subsample in ("base", "new"):
        args = ["eval", "--dataset", "caltech101", "--data-root", data_root, "--subsample", subsample,
                "--backbone", "clipadapt-tiny", "--pretrained", "none", "--out", os.path.join(out, subsample)]
        code = cli_main(args + (["--overwrite"] if overwrite else []))
        if code:
            return code
    for subsample in ("base", "new"):
        with open(os.path.join(out, subsample, "metrics.json")) as f:
            print(subsample, json.load(f)["accuracy"])
    print(f"results in {out}/base and {out}/new")
    return 0
