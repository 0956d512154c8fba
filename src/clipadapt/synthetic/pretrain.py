"""Contrastive pretraining of the tiny CLIP on the synthetic world (`clipadapt pretrain-synthetic`).

Pools of scenes are rendered once: random scenes, groups showing one scene with every shape, and
groups of four scenes differing in one other factor; every visit of a scene draws a fresh caption
for it. The model is open_clip's own CLIP built from the `clipadapt-synthetic` config, trained with
the symmetric InfoNCE loss and a learned temperature (bf16 autocast on the CPU by default), then
exported with the token-embedding rows of the world's vocabulary only (the rest of CLIP's
49,408-token table is never trained), in fp16.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import build_dataset
from ..data.synthetic import SYNTHETIC_DATASETS
from ..evaluation import evaluate
from ..fileio import atomic_path, write_json
from ..model import build_model
from ..synthetic_weights import (
    SHIPPED_CONFIG,
    SHIPPED_RECORD,
    SHIPPED_WEIGHTS,
    create_shipped_architecture,
    export_weights,
    load_exported,  # noqa: F401  (the format lives with the loader)
    shipped_tokenizer,
)
from .render import (
    COLOURS,
    SHAPES,
    Scene,
    caption,
    contrast_group,
    random_scene,
    render,
    vocabulary,
)

log = logging.getLogger(__name__)

CONFIG = SHIPPED_CONFIG
MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


def render_images(
    scenes: list[Scene], desc: str = "rendering", progress: bool = True
) -> torch.Tensor:
    """The scenes' images as uint8 [N, 3, H, W]."""
    images = np.stack(
        [render(s) for s in tqdm(scenes, desc=desc, disable=not progress, leave=False)]
    )
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] to CLIP-normalised float."""
    return pixels.float().div_(255.0).sub_(MEAN).div_(STD)


def render_pool(n: int, seed: int, progress: bool = True) -> tuple[list[Scene], torch.Tensor]:
    """n random scenes and their images (uint8 [n, 3, H, W])."""
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    return scenes, render_images(scenes, "rendering scenes", progress)


def render_groups(
    n: int, seed: int, size: int, factor: str | None, progress: bool = True
) -> list[tuple[list[Scene], str, torch.Tensor]]:
    """n contrast groups of `size` scenes (varying `factor`, or a random factor per group), with their images."""
    rng = random.Random(seed)
    groups = [contrast_group(rng, size, factor) for _ in range(n)]
    pixels = render_images(
        [s for members, _ in groups for s in members],
        f"rendering {factor or 'contrast'} groups",
        progress,
    )
    return [
        (members, f, images)
        for (members, f), images in zip(
            groups, pixels.split([len(m) for m, _ in groups]), strict=True
        )
    ]


def vocabulary_token_ids(tokenizer) -> list[int]:
    """Token ids of every word the world uses, plus start and end of text."""
    ids = set()
    for word in vocabulary():
        row = tokenizer([word])[0]
        ids.update(int(t) for t in row[: int(row.argmax()) + 1])
    return sorted(ids)


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def pretrain(
    out_dir: str,
    steps: int = 5000,
    batch_size: int = 128,
    pool_size: int = 24000,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup: int = 100,
    seed: int = 0,
    progress: bool = True,
    eval_fn=None,
    eval_every: int = 125,
    contrast_fraction: float = 0.75,
    shape_groups: int = 6,
    precision: str = "bf16",
    save_every: int = 100,
) -> str:
    """Train the tiny CLIP; resumable from out_dir/pretrain_state.pt; returns the exported weights path."""
    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "pretrain_log.jsonl")
    state_path = os.path.join(out_dir, "pretrain_state.pt")
    torch.manual_seed(seed)
    model = (
        create_shipped_architecture()
    )  # seed-0 initial weights, the same whatever `seed` draws next
    tokenizer = shipped_tokenizer()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
    ]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    start = 0
    if os.path.exists(state_path):
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        log.info("resuming pretraining at step %d", start)
        if os.path.exists(log_path):  # drop the steps after the saved state: they are done again
            with open(log_path) as f:
                kept = [line for line in f if json.loads(line)["step"] <= start]
            with atomic_path(log_path) as tmp, open(tmp, "w") as f:
                f.writelines(kept)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, not '{precision}'")
    n_groups = (int(batch_size * contrast_fraction) - shape_groups * len(SHAPES)) // 4
    if n_groups < 0:
        raise ValueError(
            f"{shape_groups} groups of {len(SHAPES)} shapes do not fit a batch of {batch_size}"
        )
    scenes, pixels = render_pool(pool_size, seed, progress)
    # Groups of scenes that differ in one factor only: without them the other factors tell a random
    # batch's captions apart and the model never has to learn shapes. Groups showing one scene with
    # every shape make each step a shape lesson, as the tiny ViT learns shape far more slowly than
    # colour, count or position.
    shape_pool = render_groups(pool_size // len(SHAPES), seed + 1, len(SHAPES), "shape", progress)
    other_pool = render_groups(pool_size // 4, seed + 2, 4, None, progress)
    t0 = time.time()
    model.train()
    bar = tqdm(
        range(start, steps), desc="pretraining", disable=not progress, initial=start, total=steps
    )
    for step in bar:
        rng = random.Random(
            seed * 1_000_003 + step
        )  # the batch and its captions depend on the step only
        parts, texts = [], []
        for pool, n in ((shape_pool, shape_groups), (other_pool, n_groups)):
            for members, factor, images in rng.sample(pool, n):
                parts.append(images)
                texts += [caption(m, rng, must=factor) for m in members]
        idx = rng.sample(
            range(pool_size), batch_size - len(texts)
        )  # groups of two-valued factors are pairs
        parts.append(pixels[idx])
        texts += [caption(scenes[i], rng) for i in idx]
        batch_pixels = normalise(torch.cat(parts))
        texts = tokenizer(texts)
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            img_f, txt_f, scale = model(batch_pixels, texts)
        logits = scale * img_f.float() @ txt_f.float().t()
        target = torch.arange(batch_size)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")
        record = {
            "step": step + 1,
            "loss": round(loss.item(), 4),
            "lr": _lr(step, steps, lr, warmup),
            "logit_scale": round(model.logit_scale.exp().item(), 2),
            "seconds": round(time.time() - t0, 1),
        }
        if eval_fn is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            model.eval()
            record["zero_shot"] = eval_fn(model)
            model.train()
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            with atomic_path(state_path) as tmp:
                torch.save(
                    {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1},
                    tmp,
                )
    model.eval()
    weights = os.path.join(out_dir, "synthetic-clip.safetensors")
    export_weights(model, vocabulary_token_ids(tokenizer), weights)
    write_json(
        os.path.join(out_dir, "pretrain_config.json"),
        {
            "steps": steps,
            "batch_size": batch_size,
            "pool_size": pool_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "warmup": warmup,
            "seed": seed,
            "contrast_fraction": contrast_fraction,
            "shape_groups": shape_groups,
            "precision": precision,
            "config": CONFIG,
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
        },
    )
    return weights


def zero_shot_probe(n: int = 300, seed: int = 4242):
    """A function scoring a model's zero-shot accuracy on shape and on colour, on fixed random scenes."""
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    pixels = normalise(render_images(scenes, progress=False))
    tokenizer = shipped_tokenizer()
    tasks = {
        "shape": ([f"a photo of a {s}." for s in SHAPES], [SHAPES.index(s.shape) for s in scenes]),
        "colour": (
            [f"a photo of a {c} shape." for c in COLOURS],
            [list(COLOURS).index(s.colour) for s in scenes],
        ),
    }

    @torch.no_grad()
    def probe(model) -> dict:
        img = F.normalize(model.encode_image(pixels), dim=-1)
        out = {}
        for task, (prompts, labels) in tasks.items():
            txt = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
            pred = (img @ txt.t()).argmax(dim=1)
            out[task] = round(100.0 * (pred == torch.tensor(labels)).float().mean().item(), 2)
        return out

    return probe


def zero_shot_record(
    weights: str, data_root: str, datasets: list[str], progress: bool = True
) -> dict:
    """Zero-shot accuracy (all, base and novel classes) of exported weights on synthetic test splits."""

    record = {}
    for name in datasets:
        row = {}
        for subsample in ("all", "base", "new"):
            data = build_dataset(name, data_root, subsample=subsample)
            model = build_model(
                "zeroshot", data.classnames, "synthetic", weights, default_template=data.template
            )
            row[subsample] = round(
                evaluate(model, data.test, progress=progress, desc=f"{name}/{subsample}").accuracy,
                2,
            )
            row[f"chance_{subsample}"] = round(100.0 / data.num_classes, 2)
        record[name] = row
    return record


def summarise_pretrain_log(path: str) -> list[dict]:
    """The log at each zero-shot probe, with the mean loss over the steps since the previous probe."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    summary, window = [], []
    for record in records:
        window.append(record["loss"])
        if "zero_shot" in record:
            summary.append(
                {
                    "step": record["step"],
                    "mean_loss": round(sum(window) / len(window), 4),
                    "lr": record["lr"],
                    "logit_scale": record["logit_scale"],
                    "seconds": record["seconds"],
                    "zero_shot": record["zero_shot"],
                }
            )
            window = []
    return summary


def pretrain_and_record(
    out_dir: str,
    steps: int = 5000,
    batch_size: int = 128,
    pool_size: int = 24000,
    lr: float = 1e-3,
    install: bool = False,
) -> dict:
    """`clipadapt pretrain-synthetic`: pretrain, record the zero-shot accuracy in OUT/synthetic-clip.json,
    and with `install` copy the result into the package; returns the record."""

    start = time.time()
    weights = pretrain(
        out_dir,
        steps=steps,
        batch_size=batch_size,
        pool_size=pool_size,
        lr=lr,
        eval_fn=zero_shot_probe(),
    )
    record = {
        "weights": os.path.basename(weights),
        "pretrain_minutes": round((time.time() - start) / 60, 1),
        "zero_shot": zero_shot_record(
            weights, os.path.join(out_dir, "data"), list(SYNTHETIC_DATASETS)
        ),
    }
    with open(os.path.join(out_dir, "pretrain_config.json")) as f:
        record["pretrain"] = json.load(f)
    # The package keeps this summary only; the whole log stays in OUT (docs/ holds the shipped one, gzipped).
    record["log_summary"] = summarise_pretrain_log(os.path.join(out_dir, "pretrain_log.jsonl"))
    write_json(os.path.join(out_dir, "synthetic-clip.json"), record)
    if install:
        shutil.copyfile(weights, SHIPPED_WEIGHTS)
        shutil.copyfile(os.path.join(out_dir, "synthetic-clip.json"), SHIPPED_RECORD)
        log.info("installed into %s", SHIPPED_WEIGHTS.parent)
    return record
