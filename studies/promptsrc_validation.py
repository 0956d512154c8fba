"""PromptSRC's synthetic preset checked on the synthetic world's validation splits (never the test split).

PromptSRC first ran in `make demo` with MaPLe's synthetic learning rate (0.02) and fell below zero-shot
CLIP. For each variant this trains PromptSRC base-to-novel (16 shots, the synthetic preset plus the
variant's settings) on three datasets and seeds 1-3, scores the validation split of the base and of the
novel classes, and prints base / novel / HM per dataset (HM of the seed-averaged base and novel).

    python studies/promptsrc_validation.py --data-root demo-output/data [--variants lr_0.02,lr_0.005]

`one_template_teacher` is not an option of the method: for it this study swaps the 60-template list
the consistency terms compare with for the one template 'a photo of a {}.'.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import contextmanager

from clipadapt import train
from clipadapt.methods import promptsrc
from clipadapt.scoring import harmonic_mean

DATASETS = ["syn_layouts", "syn_shapes", "syn_patterns"]
NO_CONSISTENCY = {"text_loss_weight": 0, "image_loss_weight": 0, "logit_loss_weight": 0}
VARIANTS = {
    "zeroshot": {},
    "lr_0.02": {"lr": 0.02},  # the preset before this study (MaPLe's synthetic lr)
    "lr_0.005": {"lr": 0.005},  # the preset now
    "one_template_teacher": {"lr": 0.02},
    "no_consistency": {"lr": 0.02, **NO_CONSISTENCY},
}


@contextmanager
def teacher_templates(variant: str):
    """The one-template teacher for that variant, the official 60 templates otherwise."""
    official = promptsrc.promptsrc_templates
    if variant == "one_template_teacher":
        promptsrc.promptsrc_templates = lambda: ["a photo of a {}."]
    try:
        yield
    finally:
        promptsrc.promptsrc_templates = official


def main() -> None:
    """Train every variant on every dataset and seed, and print the validation table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-root", required=True, help="where the synthetic datasets are (made if missing)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="promptsrc-validation-")
    print(f"{'variant':<22}" + "".join(f"{d:>24}" for d in DATASETS))
    for variant in args.variants.split(","):
        cells = []
        for dataset in DATASETS:
            scores = []
            for seed in (1, 2, 3):
                method = "zeroshot" if variant == "zeroshot" else "promptsrc"
                with teacher_templates(variant):
                    m = train(
                        method,
                        dataset,
                        args.data_root,
                        os.path.join(out, variant, dataset, str(seed)),
                        protocol="base2novel",
                        seed=seed,
                        backbone="synthetic",
                        pretrained="shipped",
                        eval_split="val",
                        progress=False,
                        overwrite=True,
                        logger="none",
                        **VARIANTS[variant],
                    )
                scores.append((m["base"], m["novel"]))
            base = sum(b for b, _ in scores) / 3
            novel = sum(n for _, n in scores) / 3
            cells.append(f"{base:6.2f} {novel:6.2f} {harmonic_mean(base, novel):6.2f}")
        print(f"{variant:<22}" + "".join(f"{c:>24}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
