"""R-MMA's defaults chosen on the synthetic world's validation splits (never the test split).

For each variant: train R-MMA on the 16-shot base classes of the six synthetic datasets (seed 1,
the synthetic preset plus the variant's options), then score the full validation split of the base
classes and of the novel classes. Prints base / novel / HM averaged over the datasets (HM of the
averaged base and novel, as the papers), beside zero-shot CLIP on the same splits.

    python studies/rmma_validation.py --data-root data [--variants old,gram_eot,...]
    python studies/rmma_validation.py --data-root data --loss-terms   # L_CLIP's halves at zero-shot

`--loss-terms` prints, per dataset, the two halves of R-MMA's contrastive loss for the untrained model
(which is zero-shot CLIP) over shuffled 16-image batches of the base training set, beside what a
text-to-image term would be with every image equally similar to a class (log of images per positive).
"""

from __future__ import annotations

import argparse
import time

import torch

from clipadapt.data import build_dataset
from clipadapt.data.loader import make_loader
from clipadapt.data.synthetic import BENCHMARK
from clipadapt.demo import synthetic_preset
from clipadapt.engine import Trainer, seed_everything
from clipadapt.evaluation import evaluate, model_transform
from clipadapt.model import build_model
from clipadapt.runconfig import resolve
from clipadapt.scoring import harmonic_mean

VARIANTS = {
    "zeroshot": None,
    "old": {
        "sep_norm": "frobenius",
        "attn_proj": "none",
        "text_context": "all",
    },  # the defaults before issue 9
    "gram_all": {"sep_norm": "gram", "attn_proj": "none", "text_context": "all"},
    "gram_eot": {"sep_norm": "gram", "attn_proj": "none", "text_context": "eot"},
    "nosep_eot": {"lambda_sep": 0.0, "attn_proj": "none", "text_context": "eot"},
    "gram_eot_qkv": {"sep_norm": "gram", "attn_proj": "qkv", "text_context": "eot"},
    "gram_eot_qkvo": {"sep_norm": "gram", "attn_proj": "qkvo", "text_context": "eot"},
    "gram_eot_i2t": {
        "sep_norm": "gram",
        "attn_proj": "none",
        "text_context": "eot",
        "contrastive": "image_to_text",
    },
}


def score(
    variant: str, options: dict | None, root: str, shots: int, seed: int
) -> tuple[float, float]:
    """Average base and novel validation accuracy over the synthetic datasets."""
    base_accs, novel_accs = [], []
    for name in BENCHMARK:
        base = build_dataset(name, root, shots, seed, "base")
        base_val = build_dataset(name, root, -1, seed, "base").val
        novel = build_dataset(name, root, -1, seed, "new")
        seed_everything(seed)
        if options is None:
            model = build_model(
                "zeroshot", base.classnames, "synthetic", "shipped", default_template=base.template
            )
        else:
            method_cfg, train_cfg, _ = resolve("rmma", synthetic_preset("rmma")[1], options)
            train_cfg.seed = seed
            model = build_model(
                "rmma",
                base.classnames,
                "synthetic",
                "shipped",
                default_template=base.template,
                **method_cfg.to_dict(),
            )
            Trainer(model, base.train, train_cfg, progress=False).run()
        base_accs.append(evaluate(model, base_val, progress=False).accuracy)
        model.set_classes(novel.classnames, novel.template)
        novel_accs.append(evaluate(model, novel.val, progress=False).accuracy)
        print(
            f"  {variant:14s} {name:13s} base {base_accs[-1]:6.2f} novel {novel_accs[-1]:6.2f}",
            flush=True,
        )
    return sum(base_accs) / len(base_accs), sum(novel_accs) / len(novel_accs)


def loss_terms(root: str, shots: int, seed: int) -> None:
    """Print the image-to-text and text-to-image halves of L_CLIP for zero-shot CLIP on training batches."""
    print("| dataset | i2t | t2i | t2i if every image scored alike |\n| --- | --- | --- | --- |")
    for name in BENCHMARK:
        base = build_dataset(name, root, shots, seed, "base")
        model = build_model(
            "rmma", base.classnames, "synthetic", "shipped", default_template=base.template
        ).eval()
        i2t, t2i, alike = [], [], []
        with torch.no_grad():
            for images, labels, *_ in make_loader(
                base.train, model_transform(model), 16, shuffle=True, seed=seed, drop_last=True
            ):
                _, parts = model.method.loss(model(images), labels)
                i2t.append(parts["i2t"].item())
                t2i.append(parts["t2i"].item())
                counts = labels.unique(return_counts=True)[1].float()
                alike.append(torch.log(len(labels) / counts).mean().item())
        print(
            f"| {name} | {sum(i2t) / len(i2t):.3f} | {sum(t2i) / len(t2i):.3f} | {sum(alike) / len(alike):.3f} |"
        )


def main() -> None:
    """Run the variants and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--loss-terms", action="store_true", help="print L_CLIP's halves at zero-shot and stop"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.loss_terms:
        loss_terms(args.data_root, args.shots, args.seed)
        return
    rows = []
    for variant in args.variants.split(","):
        start = time.time()
        b, n = score(variant, VARIANTS[variant], args.data_root, args.shots, args.seed)
        rows.append((variant, b, n, harmonic_mean(b, n), time.time() - start))
    print(
        "\n| variant | options | val base | val novel | val HM |\n| --- | --- | --- | --- | --- |"
    )
    for variant, b, n, hm, _ in rows:
        print(
            f"| {variant} | {VARIANTS[variant] or 'zero-shot CLIP'} | {b:.2f} | {n:.2f} | {hm:.2f} |"
        )
    print(f"\n{sum(r[4] for r in rows) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
