"""Time a training epoch of CoCoOp against CoOp's, on the same images, classes and batches.

CoCoOp's prompts depend on the image, so each step runs the text tower on images x classes prompts
instead of classes; clipadapt batches them in one text pass. Variants, measured interleaved in one
process (one epoch of each per round, median over rounds):

    coop              CoOp (4 context vectors from "a photo of a"), one text pass of `classes` prompts a step
    cocoop            CoCoOp, one text pass of batch x classes prompts a step (clipadapt's path)
    cocoop looped     CoCoOp with a text pass per image, as the official trainer loops (same numbers)

An epoch here is the training steps over in-memory images (forward, loss, backward, SGD step); data
loading is left out, as it is the same for all variants.

    python benchmarks/cocoop_epoch.py [--backbone clipadapt-tiny] [--images 64] [--batch 8] [--classes 10]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from clipadapt.model import build_model

VARIANTS = ("coop", "cocoop", "cocoop looped")


def build(variant: str, backbone: str, classes: list[str]):
    """The model of a variant and its SGD optimizer (the official settings: lr 0.002, momentum 0.9)."""
    torch.manual_seed(0)
    method = "coop" if variant == "coop" else "cocoop"
    model = build_model(
        method, classes, backbone=backbone, pretrained="none", ctx_init="a photo of a"
    ).train()
    if variant == "cocoop looped":
        m = model.method

        def looped(bb, img_f, txt_f):
            if m._class_prompts is None or img_f is None:
                return type(m).after_heads(m, bb, img_f, txt_f)
            ctx = m.context(img_f)
            return img_f, torch.cat([m.class_text(bb, ctx[i : i + 1]) for i in range(ctx.shape[0])])

        m.after_heads = looped
    optimizer = torch.optim.SGD(
        model.method.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4
    )
    return model, optimizer


def epoch(model, optimizer, images: torch.Tensor, labels: torch.Tensor, batch: int) -> None:
    """One pass of training steps over the images."""
    for start in range(0, len(images), batch):
        logits = model(images[start : start + batch])
        loss, _ = model.method.loss(logits, labels[start : start + batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    """Run the benchmark and print the table."""
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="clipadapt-tiny")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classes = [f"class {i}" for i in range(args.classes)]
    models = {v: build(v, args.backbone, classes) for v in VARIANTS}
    size = models["coop"][0].backbone.image_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, size, size, generator=gen)
    labels = torch.randint(0, args.classes, (args.images,), generator=gen)
    times = {v: [] for v in VARIANTS}
    epoch(*models["coop"], images, labels, args.batch)  # warm-up
    for _ in range(args.repeats):
        for v in VARIANTS:
            start = time.perf_counter()
            epoch(*models[v], images, labels, args.batch)
            times[v].append(1000 * (time.perf_counter() - start))
    base = statistics.median(times["coop"])
    print(
        f"{args.backbone} (random weights), {args.images} images, batch {args.batch}, {args.classes} classes, "
        f"cpu fp32, {args.threads} threads, median of {args.repeats} interleaved rounds"
    )
    print(f"{'what':<16}{'epoch ms':>10}{'x coop':>8}{'min..max ms':>18}{'params':>9}")
    for v in VARIANTS:
        med = statistics.median(times[v])
        spread = f"{min(times[v]):.0f}..{max(times[v]):.0f}"
        print(
            f"{v:<16}{med:>10.1f}{med / base:>8.2f}{spread:>18}{models[v][0].method.num_trainable():>9,}"
        )


if __name__ == "__main__":
    main()
