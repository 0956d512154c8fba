"""Time an MMA++ training step against an MMA step, interleaved in one process.

An MMA++ step is MMA's plus one no-grad pass of both towers at the drawn scale, forked at the input
of the first adapted block (blocks below it run once). The two steps alternate repeat after repeat,
so a load change on a shared machine hits both alike; the medians and their ratio are printed.

    python benchmarks/mma_pp_step.py [--backbone ViT-B-16] [--batch 16] [--classes 50] [--repeats 10]
                                     [--device cuda --precision fp16]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from clipadapt.backbone import load_backbone
from clipadapt.engine import build_optimizer, resolve_precision
from clipadapt.model import build_model
from clipadapt.settings import TrainConfig


def make_step(model, images, labels, autocast, scaled):
    """One optimizer step of `model` on a fixed batch, as the trainer runs it."""
    opt = build_optimizer(model.method.trainable_parameters(), TrainConfig(lr=1e-4))
    scaler = torch.amp.GradScaler("cuda", enabled=scaled)

    def step():
        with torch.autocast(**autocast):
            loss, _ = model.method.loss(model(images).float(), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def timed(fn, device) -> float:
    """Wall time of one call in milliseconds."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start)


def main() -> None:
    """Run the interleaved benchmark and print the medians and the ratio."""
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype, scaled = resolve_precision(args.precision, device)
    backbone = load_backbone(args.backbone, "none", device=device)
    names = [f"class_{i:02d}" for i in range(args.classes)]
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    autocast = dict(
        device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None
    )
    steps = {
        m: make_step(
            build_model(m, names, backbone=backbone).train(), images, labels, autocast, scaled
        )
        for m in ("mma", "mma_pp")
    }
    for step in steps.values():  # warm-up
        step()
    times: dict[str, list[float]] = {m: [] for m in steps}
    for _ in range(args.repeats):
        for method, step in steps.items():
            times[method].append(timed(step, device))
    mma, pp = statistics.median(times["mma"]), statistics.median(times["mma_pp"])
    print(
        f"{args.backbone}, batch {args.batch}, {args.classes} classes, {args.device}, {args.precision}, "
        f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats"
    )
    print(f"mma step     {mma:10.1f} ms (median; min {min(times['mma']):.1f})")
    print(f"mma_pp step  {pp:10.1f} ms (median; min {min(times['mma_pp']):.1f})")
    print(f"ratio mma_pp / mma: {pp / mma:.2f}")


if __name__ == "__main__":
    main()
