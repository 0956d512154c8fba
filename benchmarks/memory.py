"""Peak memory of one training step as the number of classes grows, and what it means for a 24 GB GPU.

Each point (method, classes, batch) runs in a fresh subprocess: ViT-B-16 with random weights is built,
the peak resident set size is reset (Linux: `echo 5 > /proc/self/clear_refs`), one training step runs
(images from the stem, as with augmentation on; the class prompts' frozen prefix cached), and the
step's memory is the peak (VmHWM) minus the resident size before it (VmRSS). So the number counts
the step's activations, gradients and optimizer state, not the weights. CPU, fp32.

    python benchmarks/memory.py [--methods mma rmadapter rmma] [--classes 50 200 500 1000] [--batch 16]

From the points it fits, per method, step memory = per_image * batch + per_class * classes + rest
(per_class from the class sweep at --batch, per_image from one more point at 2 x --batch) and
extrapolates ImageNet base-to-novel training (500 classes, batch 128).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys

MB = 2**20


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_point(method: str, classes: int, batch: int, threads: int) -> dict:
    """One training step's peak memory above the resident size before it (bytes)."""
    import torch

    from clipadapt.backbone import load_backbone
    from clipadapt.engine import build_optimizer
    from clipadapt.model import build_model
    from clipadapt.settings import TrainConfig

    logging.disable(logging.WARNING)
    torch.set_num_threads(threads)
    backbone = load_backbone("ViT-B-16", "none")
    names = [f"class_{i:04d}" for i in range(classes)]
    model = build_model(method, names, backbone=backbone).train()
    opt = build_optimizer(
        model.method.trainable_parameters(),
        TrainConfig(
            **{
                k: v
                for k, v in model.method.training_defaults.items()
                if k in TrainConfig.field_names()
            }
        ),
    )
    torch.manual_seed(0)
    images = torch.randn(batch, 3, 224, 224)
    labels = torch.randint(0, classes, (batch,))
    model.prompt_prefix()  # computed once per prompt set, before the steps
    model.frozen_prompt_features()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current resident size
    before = _status("VmRSS")
    loss, _ = model.method.loss(model(images).float(), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {
        "method": method,
        "classes": classes,
        "batch": batch,
        "step_bytes": _status("VmHWM") - before,
        "rss_before": before,
    }


def main() -> None:
    """Run every point in its own process, print the table and the extrapolation."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=["mma", "rmadapter", "rmma"])
    parser.add_argument("--classes", nargs="+", type=int, default=[50, 200, 500, 1000])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--point", nargs=3, metavar=("METHOD", "CLASSES", "BATCH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.point:
        method, classes, batch = args.point
        print(json.dumps(measure_point(method, int(classes), int(batch), args.threads)))
        return
    rows = []
    for method in args.methods:
        points = [(c, args.batch) for c in args.classes] + [(args.classes[0], 2 * args.batch)]
        for classes, batch in points:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--threads",
                    str(args.threads),
                    "--point",
                    method,
                    str(classes),
                    str(batch),
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ},
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"{method:<10} classes {classes:>5}  batch {batch:>3}  step peak {r['step_bytes'] / MB:>8.0f} MB"
                f"  (resident before {r['rss_before'] / MB:.0f} MB)",
                flush=True,
            )
    print()
    print(
        "fit: step = per_image * batch + per_class * classes + rest (MB); ImageNet b2n = 500 classes, batch 128"
    )
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        sweep = [r for r in mine if r["batch"] == args.batch]
        xs = [r["classes"] for r in sweep]
        ys = [r["step_bytes"] / MB for r in sweep]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        per_class = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )
        double = next(r for r in mine if r["batch"] == 2 * args.batch)["step_bytes"] / MB
        first = next(r for r in sweep if r["classes"] == args.classes[0])["step_bytes"] / MB
        per_image = (double - first) / args.batch
        rest = first - per_image * args.batch - per_class * args.classes[0]
        imagenet = per_image * 128 + per_class * 500 + rest
        print(
            f"{method:<10} per image {per_image:6.1f} MB  per class {per_class:6.2f} MB  rest {rest:7.0f} MB  "
            f"-> 500 classes x batch 128: {imagenet / 1024:5.1f} GB of activations (fp32)"
        )


if __name__ == "__main__":
    main()
