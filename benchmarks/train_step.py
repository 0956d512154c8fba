"""Time one training step of each method against a forward pass of the frozen backbone, with the
frozen-prefix caches (clipadapt.frozen_cache) on and off.

ViT-B-16 with random weights, batch 16, 50 classes (prompts "a photo of a class_NN.", the text cut
after the longest prompt as clipadapt runs it), fp32 on the CPU unless --device/--precision say
otherwise. Variants, all measured interleaved in one process (one call of each per round, median
over rounds):

    frozen forward    the frozen towers on the images and the class prompts, no gradient (both towers
                      every call: the text features are not kept between calls)
    cache off         prefix_cache_mb=0: every block from the stems, every step (the old path)
    augment on        augmentation on: the images from the stem every step, the class prompts'
                      frozen prefix cached (once per prompt set)
    cache on          augmentation off, an epoch after the first: the images' frozen tokens at the
                      first active block are already cached, so are the prompts'

    python benchmarks/train_step.py [--methods mma rmadapter rmma] [--repeats 5] [--device cuda --precision fp16]
    python benchmarks/train_step.py --profile "mma cache on"     # where one step's time goes (torch.profiler)
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

VARIANTS = ("cache off", "augment on", "cache on")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    """Wall time of one call of fn() in milliseconds."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return 1000 * (time.perf_counter() - start)


def profile(step, frozen_forward, name: str) -> None:
    """Self CPU time by operator for one step and one frozen forward, forward and backward apart."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    for label, fn in ((name, step), ("frozen forward", frozen_forward)):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            with record_function(label):
                fn()
        print(f"== {label}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def main() -> None:
    """Run the benchmark and print the table."""
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--methods", nargs="+", default=["mma", "rmadapter", "rmma"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--profile", metavar="VARIANT", help="profile one variant (e.g. 'mma cache on') and stop"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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

    frozen = build_model(
        "zeroshot", names, backbone=backbone, default_template="a photo of a {}."
    ).eval()

    def frozen_forward():
        frozen._drop_prompt_caches()  # both towers every call: the text would otherwise be computed once
        with torch.no_grad(), torch.autocast(**autocast):
            frozen.encode(images, with_text=True)

    steps = {"frozen forward": frozen_forward}
    params = {}
    for method in args.methods:
        for variant in args.variants:
            model = build_model(method, names, backbone=backbone).train()
            model.prefix_budget_mb = 0 if variant == "cache off" else 4096
            inputs = images
            if (
                variant == "cache on"
            ):  # what the trainer caches once per run, in the run's precision
                block = model.method.first_active_blocks(backbone)[0]
                with torch.autocast(**autocast):
                    inputs = model.frozen_images(
                        images, block, with_final=model.method.compares_with_frozen
                    )
                if not inputs.at_output:
                    inputs.tokens = inputs.tokens.to(dtype or backbone.dtype)
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
            scaler = torch.amp.GradScaler("cuda", enabled=scaled)

            def step(model=model, opt=opt, scaler=scaler, inputs=inputs):
                with torch.autocast(**autocast):
                    loss, _ = model.method.loss(model(inputs).float(), labels)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

            steps[f"{method} {variant}"] = step
            params[f"{method} {variant}"] = model.method.num_trainable()

    for fn in steps.values():  # warm-up: allocations, the prompt prefixes
        fn()
    if args.profile:
        profile(steps[args.profile], steps["frozen forward"], args.profile)
        return
    times = {name: [] for name in steps}
    for _ in range(args.repeats):  # interleaved: one call of each variant per round
        for name, fn in steps.items():
            times[name].append(timed(fn, device))
    ms = {name: statistics.median(t) for name, t in times.items()}
    base = ms["frozen forward"]
    print(
        f"{args.backbone} (random weights), batch {args.batch}, {args.classes} classes, {args.device}, "
        f"{args.precision}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds"
    )
    print(
        f"{'what':<26}{'ms':>9}{'x frozen fwd':>14}{'x mma same':>12}{'min..max ms':>18}{'params':>11}"
    )
    for name, value in ms.items():
        method, _, variant = name.partition(" ")
        ref = ms.get(f"mma {variant}")
        rel = f"{value / ref:.2f}" if ref and method != "mma" and name != "frozen forward" else ""
        spread = f"{min(times[name]):.0f}..{max(times[name]):.0f}"
        print(
            f"{name:<26}{value:>9.1f}{value / base:>14.2f}{rel:>12}{spread:>18}{params.get(name, 0):>11,}"
        )


if __name__ == "__main__":
    main()
