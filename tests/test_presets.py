"""Presets are package data, keyed by method, protocol and backbone family; a missing one is an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipadapt.errors import ClipadaptError
from clipadapt.methods import METHODS
from clipadapt.runconfig import choose_preset, find_preset, load_preset

REPO = Path(__file__).resolve().parents[1]


def test_lookup_by_method_protocol_and_family():
    assert find_preset("mma", "base2novel", "ViT-B-16") == "mma_base2novel.yaml"
    assert find_preset("mma", "dg", "ViT-B-16") == "mma_cross_dataset.yaml"  # DG trains the cross-dataset source
    assert find_preset("mma", "domain_generalization", "ViT-B-16") == "mma_cross_dataset.yaml"
    assert find_preset("mma", "base2novel", "synthetic") == "synthetic/mma.yaml"
    assert find_preset("mma", "fewshot", None) == "synthetic/mma_fewshot.yaml"  # the default backbone is the shipped one
    assert find_preset("rmadapter", "fewshot", None) == "synthetic/rmadapter.yaml"  # no few-shot one: every protocol
    with pytest.raises(ClipadaptError, match="mma_fewshot.yaml"):
        find_preset("mma", "fewshot", "ViT-B-16")  # never a silent fallback to another protocol's settings


def test_every_method_has_a_synthetic_preset():
    for method in METHODS:
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
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO)], check=True, capture_output=True, timeout=600)
    code = ("import json, clipadapt; from clipadapt.demo import DEMO_METHODS, synthetic_preset; "
            "from clipadapt.runconfig import choose_preset; "
            "print(json.dumps({'file': clipadapt.__file__, "
            "'demo': {m: synthetic_preset(m) for m in DEMO_METHODS}, "
            "'folder': choose_preset(None, 'mma', 'fewshot', 'synthetic')}))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    installed = json.loads(out.stdout)
    assert installed["file"].startswith(str(target))  # not the checkout
    from clipadapt.demo import DEMO_METHODS, synthetic_preset

    here = json.loads(json.dumps({m: synthetic_preset(m) for m in DEMO_METHODS}))
    assert installed["demo"] == here
    assert installed["folder"] == json.loads(json.dumps(choose_preset(None, "mma", "fewshot", "synthetic")))
    # The README's sweeps by name, from the installed package (its files were outside it before).
    listed = subprocess.run([sys.executable, "-m", "clipadapt", "sweep", "--list"], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert listed.returncode == 0 and "studies/rmma_ablation" in listed.stdout, listed.stderr
    dry = subprocess.run([sys.executable, "-m", "clipadapt", "sweep", "base2novel", "--out", "runs", "--dry-run"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert dry.returncode == 0 and dry.stdout.count("clipadapt train") >= 3 * 11, dry.stderr
    assert str(target) in dry.stdout  # its presets are the installed package's
