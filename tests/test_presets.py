"""Presets are package data, keyed by method, protocol and backbone family; a missing one is an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipadapt.errors import ClipadaptError
from clipadapt.registry import builtin_method_names
from clipadapt.runconfig import choose_preset, find_preset, load_preset

REPO = Path(__file__).resolve().parents[1]


def test_lookup_by_method_protocol_and_family():
    assert find_preset("mma", "base2novel", "ViT-B-16") == "mma_base2novel.yaml"
    assert (
        find_preset("mma", "dg", "ViT-B-16") == "mma_cross_dataset.yaml"
    )  # DG trains the cross-dataset source
    assert find_preset("mma", "domain_generalization", "ViT-B-16") == "mma_cross_dataset.yaml"
    assert find_preset("mma", "base2novel", "synthetic") == "synthetic/mma.yaml"
    assert (
        find_preset("mma", "fewshot", None) == "synthetic/mma_fewshot.yaml"
    )  # the default backbone is the shipped one
    assert (
        find_preset("rmadapter", "fewshot", None) == "synthetic/rmadapter.yaml"
    )  # no few-shot one: every protocol
    with pytest.raises(ClipadaptError, match="mma_attn_cross_dataset.yaml"):
        find_preset(
            "mma_attn", "cross_dataset", "ViT-B-16"
        )  # never a silent fallback to another protocol's settings


def test_every_method_has_a_synthetic_preset():
    for method in builtin_method_names():  # an installed plugin's presets are its own
        name = find_preset(method, "base2novel", "synthetic")
        assert load_preset(name).get("method", method) == method


def test_config_none_a_file_or_a_preset_name(tmp_path):
    assert choose_preset("none", "mma", "base2novel", "synthetic") == ("none", {})
    name, settings = choose_preset("synthetic/mma.yaml", "mma", "fewshot", "ViT-B-16")
    assert name == "preset:synthetic/mma.yaml" and settings["scale"] == 0.1
    (tmp_path / "mine.yaml").write_text("epochs: 3\n")
    assert choose_preset(str(tmp_path / "mine.yaml"), "mma", "fewshot", None)[1] == {"epochs": 3}


@pytest.mark.slow
def test_presets_resolve_in_a_non_editable_install(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    code = (
        "import json, clipadapt; from clipadapt.demo import DEMO_METHODS, synthetic_preset; "
        "from clipadapt.runconfig import choose_preset; "
        "print(json.dumps({'file': clipadapt.__file__, "
        "'demo': {m: synthetic_preset(m) for m in DEMO_METHODS}, "
        "'folder': choose_preset(None, 'mma', 'fewshot', 'synthetic')}))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    installed = json.loads(out.stdout)
    assert installed["file"].startswith(str(target))  # not the checkout
    from clipadapt.demo import DEMO_METHODS, synthetic_preset

    here = json.loads(json.dumps({m: synthetic_preset(m) for m in DEMO_METHODS}))
    assert installed["demo"] == here
    assert installed["folder"] == json.loads(
        json.dumps(choose_preset(None, "mma", "fewshot", "synthetic"))
    )
    # The README's sweeps by name, from the installed package (its files were outside it before).
    listed = subprocess.run(
        [sys.executable, "-m", "clipadapt", "sweep", "--list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert listed.returncode == 0 and "studies/rmma_ablation" in listed.stdout, listed.stderr
    dry = subprocess.run(
        [sys.executable, "-m", "clipadapt", "sweep", "base2novel", "--out", "runs", "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert dry.returncode == 0 and dry.stdout.count("clipadapt train") >= 3 * 11, dry.stderr
    assert str(target) in dry.stdout  # its presets are the installed package's


# zero-shot CLIP has nothing to train; an installed plugin's presets are its own
TRAINABLE = [m for m in builtin_method_names() if m != "zeroshot"]


@pytest.mark.parametrize("method", TRAINABLE)
def test_every_trainable_method_has_a_vit_fewshot_preset(method):
    from clipadapt.runconfig import train_settings

    assert find_preset(method, "fewshot", "ViT-B-16") == f"{method}_fewshot.yaml"
    assert (
        find_preset(method, "fewshot", "ViT-L-14") == f"{method}_fewshot.yaml"
    )  # the whole open_clip family
    settings = train_settings(
        method, "fewshot", "ViT-B-16"
    )  # every key a valid option or training setting
    assert settings.preset == f"preset:{method}_fewshot.yaml"
    assert load_preset(f"{method}_fewshot.yaml")["method"] == method
    text = (REPO / "src" / "clipadapt" / "presets" / f"{method}_fewshot.yaml").read_text()
    assert (
        text.startswith("# ") and "all classes" in text.split("method:")[0]
    )  # the file says where it comes from


def test_official_fewshot_numbers():
    """The files hold their sources' numbers (CoOp vit_b16.yaml + main.sh; MMA vit_b16_ep5.yaml; MMA++ b2n_hc)."""
    coop = load_preset("coop_fewshot.yaml")
    assert (coop["n_ctx"], coop["ctx_init"], coop["lr"], coop["epochs"], coop["batch_size"]) == (
        16,
        "",
        0.002,
        200,
        32,
    )
    assert (coop["warmup_epochs"], coop["warmup_lr"], coop.get("augment", True)) == (1, 1e-5, True)
    mma = load_preset("mma_fewshot.yaml")
    assert (mma["adapter_start"], mma["adapter_end"], mma["adapter_dim"], mma["scale"]) == (
        5,
        12,
        32,
        0.001,
    )
    assert (mma["optimizer"], mma["lr"], mma["epochs"], mma["batch_size"]) == ("sgd", 0.0015, 5, 16)
    assert {k: v for k, v in load_preset("mma_pp_fewshot.yaml").items()} == load_preset(
        "mma_pp_base2novel_templates.yaml"
    )
    for method in ("rmadapter", "rmma", "mma_attn", "clip_adapter"):
        assert load_preset(f"{method}_fewshot.yaml") == load_preset(f"{method}_base2novel.yaml"), (
            method
        )


def _readme_vit_folder_command() -> list[str]:
    import shlex

    text = (REPO / "README.md").read_text()
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("clipadapt train ")
        and "--dataset folder" in line
        and "--backbone ViT-B-16" in line
    )
    return shlex.split(line)[1:]


def _photos(root: Path) -> Path:
    from PIL import Image

    for c, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (32, 32), (colour[0], colour[1] + 10 * i, colour[2])).save(
                root / c / f"{i}.png"
            )
    return root


@pytest.mark.parametrize("method", TRAINABLE)
def test_the_readme_vit_folder_command_resolves_a_preset(method, tmp_path, monkeypatch):
    """The README's ViT-B-16 folder command, for every method, up to training (no weights are downloaded)."""
    import yaml

    from clipadapt import protocols
    from clipadapt.cli import main

    seen = {}

    def no_training(run, execution):
        seen.update(
            protocol=run.protocol, backbone=run.spec.backbone, options=run.method_config.to_dict()
        )
        return {"protocol": run.protocol, "accuracy": 0.0}

    monkeypatch.setattr(protocols, "run_protocol", no_training)
    args = _readme_vit_folder_command()
    args[args.index("--method") + 1] = method
    args[args.index("--data-root") + 1] = str(_photos(tmp_path / "photos"))
    args[args.index("--out") + 1] = str(tmp_path / "run")
    assert main(args) == 0
    assert seen["protocol"] == "fewshot" and seen["backbone"] == "ViT-B-16"
    record = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert record["preset"] == f"preset:{method}_fewshot.yaml" and record["protocol"] == "fewshot"
