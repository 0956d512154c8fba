"""Time one training step of each in-encoder method against a forward pass of the frozen backbone.

ViT-B-16 with random weights, batch 16, 50 classes (prompts "a photo of a class_NN."), fp32 on the
CPU unless --device/--precision say otherwise. Prints a table and the ratio step / frozen forward.

    python benchmarks/train_step.py [--methods mma rmadapter] [--repeats 5] [--device cuda --precision fp16]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from clipadapt.backbone import load_backbone
from clipadapt.engine import TrainConfig, build_optimizer, resolve_precision
from clipadapt.model import build_model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, repeats: int, device) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    """Run the benchmark and print the table."""
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--methods", nargs="+", default=["mma", "rmadapter"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
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
    autocast = dict(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    frozen = build_model("zeroshot", names, backbone=backbone, default_template="a photo of a {}.").eval()

    def frozen_forward():
        with torch.no_grad(), torch.autocast(**autocast):
            frozen.encode(images, with_text=True)

    base_ms = time_it(frozen_forward, args.repeats, device)
    print(f"{args.backbone}, batch {args.batch}, {args.classes} classes, {args.device}, {args.precision}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'what':<28}{'ms':>10}{'x frozen fwd':>14}{'params':>12}")
    print(f"{'frozen forward (no grad)':<28}{base_ms:>10.1f}{1.0:>14.2f}{0:>12,}")
    for method in args.methods:
        model = build_model(method, names, backbone=backbone).train()
        opt = build_optimizer(model.method.trainable_parameters(), TrainConfig(**{
            k: v for k, v in model.method.training_defaults.items() if k in TrainConfig.field_names()}))
        scaler = torch.amp.GradScaler("cuda", enabled=scaled)

        def step():
            with torch.autocast(**autocast):
                loss, _ = model.method.loss(model(images).float(), labels)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        ms = time_it(step, args.repeats, device)
        print(f"{method + ' train step':<28}{ms:>10.1f}{ms / base_ms:>14.2f}{model.method.num_trainable():>12,}")


if __name__ == "__main__":
    main()
