"""The shipped paper sweeps list every method that has a preset for their protocol (a method added later
with a preset and left out of its sweep fails here), and apply the official per-dataset tables."""

import math
from pathlib import Path

import pytest
import yaml

import clipadapt
from clipadapt.errors import ClipadaptError
from clipadapt.methods.mmrl import official_overrides
from clipadapt.registry import METHOD_NAMES
from clipadapt.runconfig import find_preset
from clipadapt.sweep import read_sweep

PACKAGE = Path(clipadapt.__file__).parent
SWEEPS, PRESETS = PACKAGE / "sweeps", PACKAGE / "presets"
PAPER_SWEEPS = {
    "base2novel": "base2novel",
    "cross_dataset": "cross_dataset",
    "domain_generalization": "domain_generalization",
    "fewshot": "fewshot",
}
# Classes of CoOp's 11 datasets (their split files); base-to-novel trains on the first ceil(C / 2).
CLASSES = {
    "imagenet": 1000,
    "caltech101": 100,
    "oxford_pets": 37,
    "stanford_cars": 196,
    "oxford_flowers": 102,
    "food101": 101,
    "fgvc_aircraft": 100,
    "sun397": 397,
    "dtd": 47,
    "eurosat": 10,
    "ucf101": 101,
}


def _listed(name):
    return yaml.safe_load((SWEEPS / f"{name}.yaml").read_text())


def _with_preset(protocol):
    """The methods `train` finds a shipped ViT-B/16 preset for under this protocol (its stand-ins included)."""
    found = set()
    for method in METHOD_NAMES:
        try:
            find_preset(method, protocol, "ViT-B-16")
            found.add(method)
        except ClipadaptError:
            pass
    return found


@pytest.mark.parametrize("name,protocol", PAPER_SWEEPS.items())
def test_each_paper_sweep_lists_every_method_with_a_preset_for_its_protocol(name, protocol):
    data = _listed(name)
    assert data["protocol"] == protocol
    with_preset = _with_preset(protocol)
    assert {"zeroshot", "maple", "mmrl"} <= with_preset  # the lookup itself works
    missing = with_preset - set(data["methods"])
    assert not missing, f"{name}.yaml leaves out {sorted(missing)}, which have {protocol} presets"


def test_the_known_gaps_are_closed():
    assert {"mma_pp", "mmrl", "maple", "clip_lora"} <= set(_listed("base2novel")["methods"])
    assert {"mmrl", "maple", "clip_lora"} <= set(_listed("fewshot")["methods"])
    assert {"mma_pp", "mmrl", "maple"} <= set(_listed("cross_dataset")["methods"])


def test_domain_generalization_reuses_only_adapters_the_cross_dataset_sweep_trains():
    assert set(_listed("domain_generalization")["methods"]) == set(
        _listed("cross_dataset")["methods"]
    )


def test_the_demo_sweep_lists_every_method_with_a_synthetic_preset():
    synthetic = {p.stem for p in (PRESETS / "synthetic").glob("*.yaml")} & set(METHOD_NAMES)
    demo = _listed("synthetic_base2novel")
    assert synthetic - {"zeroshot"} <= set(demo["methods"])
    assert (
        len(read_sweep(str(SWEEPS / "synthetic_base2novel.yaml")).runs) == len(demo["methods"]) * 6
    )


@pytest.mark.parametrize("name", ["base2novel", "fewshot"])
def test_per_dataset_tables_are_the_official_ones(name):
    sweep = read_sweep(str(SWEEPS / f"{name}.yaml"))
    protocol = PAPER_SWEEPS[name]
    shots = 1 if name == "base2novel" else 5
    assert len(sweep.runs) == len(_listed(name)["methods"]) * 11 * 3 * shots
    for run in sweep.runs:
        settings = dict(run.overrides)
        if run.method == "mmrl":
            assert {
                k: settings[k] for k in official_overrides(run.dataset, protocol)
            } == official_overrides(run.dataset, protocol)
        if run.method == "clip_lora":
            c = CLASSES[run.dataset]
            trained = c - c // 2 if name == "base2novel" else c
            assert settings["epochs"] == math.ceil(16000 / trained), run.dataset
        if (
            run.method == "promptsrc" and name == "fewshot"
        ):  # the official config's two GPA settings
            late = run.dataset in (
                "stanford_cars",
                "oxford_flowers",
                "fgvc_aircraft",
                "dtd",
                "eurosat",
            )
            assert (settings.get("gpa_mean"), settings.get("gpa_std")) == (
                (45, 5) if late else (None, None)
            )
        if run.method not in ("mmrl", "clip_lora"):
            assert "reg_weight" not in settings and "epochs" not in settings


def test_the_command_line_wins_over_a_per_dataset_table():
    sweep = read_sweep(str(SWEEPS / "base2novel.yaml"), {"epochs": 1})
    lora = [dict(r.overrides) for r in sweep.runs if r.method == "clip_lora"]
    assert lora and all(s["epochs"] == 1 for s in lora)


def test_the_command_line_wins_over_method_overrides_and_study_variants(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "protocol: base2novel\nmethods: [mma]\ndatasets: [syn_shapes]\nseeds: [1]\n"
        "method_overrides: {mma: {epochs: 7}}\n"
    )
    assert [dict(r.overrides)["epochs"] for r in read_sweep(str(path), {"epochs": 1}).runs] == [1]
    study = next(
        (SWEEPS / "studies").glob("*.yaml")
    )  # a shipped study: its variants' settings yield too
    assert {
        dict(r.overrides).get("epochs") for r in read_sweep(str(study), {"epochs": 1}).runs
    } == {1}
